"""pg_dts_finish: cutover under write load, and a mismatch that keeps the task syncing."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.harness.data import assert_same_contents, sequence_values


@pytest.fixture(scope='module')
def servers(module_pg_factory):
    return module_pg_factory('fsrc'), module_pg_factory('fdst')


def common(servers, tmp_path, name):
    src, dst = servers
    return {'name': name, 'source': src.spec(), 'destination': dst.spec(), 'worker_dir': str(tmp_path / 'workers')}


def start_args(args):
    """pg_dts_migrate arguments: pgbench_history has no key (REPLICA IDENTITY FULL costs an insert-only table nothing)."""
    return dict(args, replica_identity='full')


def start_task(ansible, args, databases):
    status, result = ansible.module('pgdts.migration.pg_dts_migrate',
                                    dict(start_args(args), databases=databases, jobs=2, wait='synced',
                                         wait_timeout=300))
    assert status == 'changed', result
    assert result['task']['stage'] == 'sync'
    return result


def test_finish_under_write_load(servers, ansible, tmp_path):
    src, dst = servers
    src.create_database('bench')
    src.run_client('pgbench', ['-i', '-s', '2', '-q', 'bench'], dbname='bench', capture_output=True)
    args = common(servers, tmp_path, 'cutover')
    start_task(ansible, args, ['bench'])
    load = subprocess.Popen([os.path.join(src.bindir, 'pgbench'), '-c', '2', '-j', '1', '-T', '60', 'bench'],
                            env=src.libpq_env('bench'), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(3)
        assert load.poll() is None, 'pgbench should still be writing'
        status, result = ansible.module('pgdts.migration.pg_dts_finish', args)
        assert status == 'changed', result
        # the fence ended pgbench's sessions; new writes are refused
        output = load.communicate(timeout=60)[0]
    finally:
        if load.poll() is None:
            load.kill()
    assert 'read-only' in output or 'terminating connection' in output or 'server closed' in output, output[-2000:]
    with pytest.raises(Exception, match='read-only'):
        src.execute('UPDATE pgbench_branches SET bbalance = 0', dbname='bench')
    assert result['task']['stage'] == 'finished'
    assert result['comparison_summary']['mismatch'] == 0
    assert result['comparison_summary']['tables'] == 4
    assert result['downtime_seconds'] is not None and result['downtime_seconds'] >= 0
    # the test's own comparison, independent of the module's
    assert_same_contents(src, dst, 'bench')
    assert sequence_values(src, 'bench') == sequence_values(dst, 'bench')
    assert src.value("SELECT count(*) FROM pg_replication_slots") == 0
    assert src.value("SELECT count(*) FROM pg_publication", dbname='bench') == 0
    assert dst.value("SELECT count(*) FROM pg_replication_origin") == 0
    assert not os.path.exists(str(tmp_path / 'workers' / 'cutover'))
    # the destination is writable for the application now
    dst.execute('UPDATE pgbench_branches SET bbalance = bbalance', dbname='bench')
    # finishing again reports the summary without changing anything
    status, again = ansible.module('pgdts.migration.pg_dts_finish', args)
    assert status == 'ok', again
    assert again['task']['stage'] == 'finished'
    # the source is given back its writers for the next test
    src.execute('ALTER DATABASE bench RESET default_transaction_read_only')


def test_mismatch_keeps_the_task_syncing(servers, ansible, tmp_path):
    src, dst = servers
    src.create_database('drift')
    src.execute('CREATE TABLE items (id int PRIMARY KEY, v text)', dbname='drift')
    src.execute("INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 5000) g", dbname='drift')
    args = common(servers, tmp_path, 'drifted')
    start_task(ansible, args, ['drift'])
    # a finish that is already running (here: a session holding the task's finish lock) makes a second one fail
    # before it does anything
    from ansible_collections.pgdts.migration.plugins.module_utils import task_state
    from ansible_collections.pgdts.migration.plugins.module_utils.connection import ServerSpec
    with task_state.TaskStore(ServerSpec.from_dict(dst.spec()), 'test-finish-lock') as store:
        store.open(create=False)
        assert store.try_finish_lock('drifted')
        status, refused = ansible.module('pgdts.migration.pg_dts_finish', args)
        assert status == 'failed', refused
        assert 'another pg_dts_finish is running' in refused['msg']
        assert refused['task']['stage'] == 'sync'
        assert src.value("SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
                         "WHERE d.datname = 'drift'") == 0     # not fenced
    # a write behind the task's back (bypassing the destination protection on purpose)
    with dst.connect('drift') as conn:
        conn.execute('SET default_transaction_read_only = off')
        conn.execute("UPDATE items SET v = 'tampered' WHERE id = 4321")
    status, result = ansible.module('pgdts.migration.pg_dts_finish', args)
    assert status == 'failed', result
    assert 'mismatch' in result['msg'] and 'public.items' in result['msg']
    [table] = [c for c in result['comparison'] if c['table'] == 'items']
    assert table['result'] == 'mismatch'
    assert {'id': '4321'} in table['sample_keys'] or any(s.get('id') in ('4321', 4321) for s in table['sample_keys'])
    assert result['task']['stage'] == 'sync'
    # nothing was dropped, the fence was lifted, the sync goes on
    assert src.value("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'pgdts_drifted_%%'") == 1
    src.execute("INSERT INTO items VALUES (9999, 'after')", dbname='drift')
    status, synced = ansible.module('pgdts.migration.pg_dts_migrate', dict(args, databases=['drift'], wait='synced'))
    assert status == 'ok', synced
    assert dst.value('SELECT v FROM items WHERE id = 9999', dbname='drift') == 'after'
    status, cancelled = ansible.module('pgdts.migration.pg_dts_migrate',
                                       dict(args, databases=['drift'], state='absent', drop_destination=True))
    assert status == 'changed', cancelled
