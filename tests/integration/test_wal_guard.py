"""The WAL-retention guard: a task's slot never fills the source's disk (max_retained_wal), and pg_dts_info shows
what each slot holds back."""

from __future__ import annotations

import time

import pytest

from tests.harness.fault_scenarios import assert_never_succeeds, wait_failed
from tests.harness.faults import INFO, MIGRATE, finish_args, judged_scenario, task_args, task_slots

# one row of 1 MB that pglz cannot shrink (the column is stored EXTERNAL: out of line, uncompressed)
MEGABYTE_ROW = "INSERT INTO blob (payload) SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 32768)"


@pytest.fixture(scope='module')
def servers(module_pg_factory):
    return module_pg_factory('wsrc'), module_pg_factory('wdst')


def create_database(src, dbname):
    src.create_database(dbname)
    src.execute('CREATE TABLE blob (id bigserial PRIMARY KEY, payload text)', dbname=dbname)
    src.execute('ALTER TABLE blob ALTER COLUMN payload SET STORAGE EXTERNAL', dbname=dbname)
    src.execute(MEGABYTE_ROW, dbname=dbname)


def write_wal(src, dbname, megabytes):
    for _row in range(megabytes):
        src.execute(MEGABYTE_ROW, dbname=dbname)
    src.execute('SELECT pg_switch_wal()')


def wait_until(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError('timed out after %d s waiting until %s' % (timeout, what))


def test_bad_size_is_refused(servers, ansible, tmp_path):
    src, dst = servers
    args = task_args(servers, tmp_path, 'walbad', 'postgres', max_retained_wal='10 apples')
    status, result = ansible.module(MIGRATE, args)
    assert status == 'failed', result
    assert 'max_retained_wal' in result['msg'] and 'not a memory size' in result['msg'], result['msg']
    assert task_slots(src, 'walbad') == []
    assert dst.value("SELECT count(*) FROM pg_database WHERE datname = 'pgdts'") == 0


def test_guard_drops_the_slot_when_the_destination_is_down(servers, ansible, tmp_path):
    src, dst = servers
    name = dbname = 'walguard'
    create_database(src, dbname)
    args = task_args(servers, tmp_path, name, dbname, max_retained_wal='16MB')
    with judged_scenario(servers, args['worker_dir'], name, [dbname]):
        status, result = ansible.module(MIGRATE, dict(args, wait='synced', wait_timeout=300))
        assert status == 'changed', result
        # the task sets a limit: verify does not warn about an unlimited max_slot_wal_keep_size
        assert [c['status'] for c in result['checks'] if c['id'] == 'source.wal_retention'] == ['pass'], \
            result['checks']
        [slot] = task_slots(src, name)

        # pg_dts_info shows what the running task's slot holds back
        status, info = ansible.module(INFO, finish_args(args))
        assert status == 'ok', info
        [database] = info['task']['databases']
        assert database['slot'] == slot
        assert isinstance(database['retained_wal_bytes'], int) and 0 <= database['retained_wal_bytes'] < 16 << 20, \
            database
        expected_status = 'reserved' if src.value('SHOW server_version_num') >= '130000' else None
        assert database['wal_status'] == expected_status, database
        # max_slot_wal_keep_size is -1 here: no limit, so no safe size
        assert database['safe_wal_size'] is None, database

        # the destination goes away: the slot cannot advance while the source writes 40 MB of WAL
        dst.stop()
        write_wal(src, dbname, 40)
        wait_until(lambda: task_slots(src, name) == [], 60, 'the guard dropped the slot')
        # the source keeps taking writes, and the WAL the slot held is released at the next checkpoint
        write_wal(src, dbname, 2)
        src.execute('CHECKPOINT')
        assert src.value('SELECT count(*) FROM blob', dbname=dbname) == 1 + 40 + 2
        assert src.value('SELECT count(*) FROM pg_replication_slots') == 0

        # back up, the destination learns why the task failed
        dst.start()
        row = wait_failed(dst, name, timeout=120)
        message = row['error']['message']
        print('the task failed with: %s' % message)
        assert row['error']['type'] == 'WalRetentionExceeded', row['error']
        assert row['error']['stage'] == 'sync', row['error']
        for words in ('held back', 'max_retained_wal (16MB)', slot, 'dropped', 'new copy', 'drop_destination=true',
                      'start it again'):
            assert words in message, (words, message)
        # a resume would lose the changes since the last sync: refused, with the same reason
        assert_never_succeeds(ansible, args, name, 'max_retained_wal')
        # the way out the message names works: cancel with drop_destination and start again
        status, result = ansible.module(MIGRATE, dict(args, state='absent', drop_destination=True))
        assert status == 'changed', result
        status, result = ansible.module(MIGRATE, dict(args, wait='synced', wait_timeout=300))
        assert status == 'changed', result
        assert result['task']['stage'] == 'sync'
        assert src.value('SELECT count(*) FROM blob', dbname=dbname) == \
            dst.value('SELECT count(*) FROM blob', dbname=dbname)
        status, result = ansible.module(MIGRATE, dict(args, state='absent', drop_destination=True))
        assert status == 'changed', result
