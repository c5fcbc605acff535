"""pg_dts_info without `source` measures each task's lag against the task's own source, never against the server
libpq reaches by default (the PG* environment of the controller pointing at another server)."""

from __future__ import annotations

import os

from ansible_collections.pgdts.migration.plugins.module_utils.lsn import lsn_to_int as lsn_int

MIGRATE = 'pgdts.migration.pg_dts_migrate'
INFO = 'pgdts.migration.pg_dts_info'


def current_lsn(cluster):
    return lsn_int(cluster.value('SELECT pg_current_wal_flush_lsn()::text'))


def test_info_without_source_uses_the_tasks_own_source(pg_factory, ansible, tmp_path):
    src, dst = pg_factory('isrc'), pg_factory('idst')
    other = pg_factory('iother', settings={'log_connections': 'on', 'log_min_messages': 'info'})
    # the other server is far ahead in WAL: a lag measured against it would be hundreds of MB
    for _round in range(8):
        other.execute('CREATE TABLE IF NOT EXISTS w (i int); INSERT INTO w VALUES (1); SELECT pg_switch_wal()')
    assert current_lsn(other) - current_lsn(src) > 100 * 1024 * 1024
    src.create_database('lagdb')
    src.execute('CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)', dbname='lagdb')
    worker_dir = str(tmp_path / 'workers')
    args = {'name': 'lag', 'source': src.spec(), 'destination': dst.spec(), 'worker_dir': worker_dir}
    status, result = ansible.module(MIGRATE, dict(args, databases=['lagdb'], wait='synced', wait_timeout=300))
    assert status == 'changed', result.get('msg', result)
    before = current_lsn(src)
    # the controller's libpq defaults point at the other server, with a password it accepts
    env = {'PGHOST': other.host, 'PGPORT': str(other.port), 'PGUSER': 'postgres', 'PGPASSWORD': other.password}
    status, result = ansible.module(INFO, {'name': 'lag', 'destination': dst.spec(), 'worker_dir': worker_dir},
                                    env=env)
    after = current_lsn(src)
    assert status == 'ok', result
    sync = result['task']['databases'][0]
    assert before <= lsn_int(sync['source_lsn']) <= after, (sync, before, after)
    assert sync['lag_bytes'] < 1024 * 1024, sync
    with open(other.logfile, encoding='utf-8', errors='replace') as handle:
        assert 'application_name=pgdts' not in handle.read()
    # without the task's login (another worker_dir): the position the worker recorded, still no other server
    status, result = ansible.module(INFO, {'name': 'lag', 'destination': dst.spec(),
                                           'worker_dir': str(tmp_path / 'elsewhere')}, env=env)
    assert status == 'ok', result
    sync = result['task']['databases'][0]
    assert lsn_int(sync['source_lsn']) <= current_lsn(src) and sync['lag_bytes'] < 1024 * 1024, sync
    with open(other.logfile, encoding='utf-8', errors='replace') as handle:
        assert 'application_name=pgdts' not in handle.read()
    assert os.path.isdir(worker_dir)
