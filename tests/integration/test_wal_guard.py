"""The WAL-retention guard: a task's slot never fills the source's disk (max_retained_wal), and pg_dts_info shows
what each slot holds back."""

from __future__ import annotations

import os
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


def gated_bindir(src, directory, gate):
    """Client programs of the source's major, whose pg_dump waits until the file `gate` exists (--version answers at
    once): the task stays in its schema stage, with its slot created, as long as the test wants."""
    directory.mkdir()
    for program in ('pg_restore', 'psql'):
        (directory / program).symlink_to(os.path.join(src.bindir, program))
    dump = directory / 'pg_dump'
    dump.write_text('#!/bin/sh\ncase "$*" in *--version*) exec %s "$@";; esac\n'
                    'while [ ! -e %s ]; do sleep 0.2; done\nexec %s "$@"\n'
                    % (os.path.join(src.bindir, 'pg_dump'), gate, os.path.join(src.bindir, 'pg_dump')))
    dump.chmod(0o755)
    return str(directory)


def test_guard_protects_the_source_during_the_initial_load(servers, ansible, tmp_path):
    """The guard runs from the slot's creation on, not only during the sync: here pg_dump is held back (the slot holds
    all the WAL since it was created) while the source writes 40 MB; the guard ends the walsender that exports the
    snapshot, drops the slot, and the task fails with the reason."""
    src, dst = servers
    name = dbname = 'walcopy'
    create_database(src, dbname)
    gate = tmp_path / 'gate'
    args = task_args(servers, tmp_path, name, dbname, max_retained_wal='16MB',
                     pg_bindir=gated_bindir(src, tmp_path / 'bin', gate))
    with judged_scenario(servers, args['worker_dir'], name, [dbname]):
        try:
            status, result = ansible.module(MIGRATE, dict(args, wait='none'))
            assert status == 'changed', result
            wait_until(lambda: task_slots(src, name) != [], 60, 'the task created its slot')
            write_wal(src, dbname, 40)
            wait_until(lambda: task_slots(src, name) == [], 60, 'the guard dropped the slot')
        finally:
            gate.write_text('')
        row = wait_failed(dst, name, timeout=120)
        print('the task failed with: %s' % row['error']['message'])
        assert row['error']['type'] == 'WalRetentionExceeded', row['error']
        assert row['error']['stage'] in ('schema', 'copy'), row['error']     # pg_dump may finish first
        assert 'max_retained_wal (16MB)' in row['error']['message'], row['error']
        assert task_slots(src, name) == []
        src.execute(MEGABYTE_ROW, dbname=dbname)
