"""Slot trouble that cannot be fixed automatically: the task fails with a message that says what happened and what to
do, refuses to be resumed, and never reports success (finish refuses too)."""

from __future__ import annotations

import contextlib
import time

import pytest
from psycopg import sql

from tests.reliability.support import (
    FINISH, INFO, MIGRATE, TaskPoller, create_load_database, finish_args, judged_scenario, task_args, task_slots,
    worker_pid,
)


@pytest.fixture(scope='module')
def servers(module_pg_factory):
    return module_pg_factory('ssrc'), module_pg_factory('sdst')


@contextlib.contextmanager
def max_slot_wal_keep_size(cluster, value):
    """A source that invalidates slots holding back more WAL than `value` (a reload is enough for this setting)."""
    cluster.execute(sql.SQL('ALTER SYSTEM SET max_slot_wal_keep_size = {}').format(sql.Literal(value)))
    cluster.reload()
    try:
        yield
    finally:
        cluster.execute('ALTER SYSTEM RESET max_slot_wal_keep_size')
        cluster.reload()


def wait_failed(dst, name, timeout=120):
    poller = TaskPoller(dst, name)
    try:
        poller.wait_stage('failed', timeout=timeout, interval=0.2)
        return poller.row()
    finally:
        poller.close()


def assert_never_succeeds(ansible, args, name, expected):
    """Re-running the play and finishing both fail with the same explanation; info shows the failure."""
    status, result = ansible.module(MIGRATE, dict(args, wait='synced', wait_timeout=60))
    assert status == 'failed', result
    assert 'cannot be resumed' in result['msg'] and expected in result['msg'], result['msg']
    assert worker_pid(args['worker_dir'], name) is None
    status, result = ansible.module(FINISH, finish_args(args))
    assert status == 'failed', result
    assert 'stage failed' in result['msg'] and expected in result['msg'], result['msg']
    status, result = ansible.module(INFO, finish_args(args))
    assert status == 'ok' and result['task']['stage'] == 'failed', result
    assert result['task']['finished_at'] is None


@pytest.mark.slow
def test_slot_invalidated_by_max_slot_wal_keep_size(servers, ansible, tmp_path):
    slot_invalidated_scenario(servers, ansible, tmp_path)


def slot_invalidated_scenario(servers, ansible, tmp_path):
    src, dst = servers
    name = dbname = 'invalidated'
    create_load_database(src, dbname, scale=1)
    args = task_args(servers, tmp_path, name, dbname)
    with max_slot_wal_keep_size(src, '32MB'):
        _slot_invalidated(servers, ansible, args, name, dbname)


def _slot_invalidated(servers, ansible, args, name, dbname):
    src, dst = servers
    with judged_scenario(servers, args['worker_dir'], name, [dbname]):
        status, result = ansible.module(MIGRATE, dict(args, wait='synced', wait_timeout=300))
        assert status == 'changed', result
        warned = [c for c in result['checks'] if c['id'] == 'source.max_slot_wal_keep_size']
        assert warned and warned[0]['status'] == 'warning', warned
        # the destination goes away, so the slot cannot advance, while the source writes and recycles WAL
        dst.stop()
        [slot] = task_slots(src, name)
        for _switch in range(20):
            src.execute("INSERT INTO ledger (k, v) VALUES (1, 1)", dbname=dbname)
            src.execute('UPDATE counters SET n = n + 1, total = total + 1 WHERE k = 1', dbname=dbname)
            src.execute('SELECT pg_switch_wal()')
            src.execute('CHECKPOINT')
            status_row = src.execute('SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s', (slot,))
            if status_row and status_row[0][0] == 'lost':
                break
        assert src.value('SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s', (slot,)) == 'lost'
        dst.start()
        row = wait_failed(dst, name)
        message = row['error']['message']
        print('the task failed with: %s' % message)
        assert row['error']['stage'] == 'sync'
        assert row['error']['type'] == 'SlotInvalidated'
        for words in ('invalidated', 'max_slot_wal_keep_size (32MB)', 'cancel', 'drop_destination', 'start it again'):
            assert words in message, (words, message)
        assert_never_succeeds(ansible, args, name, 'invalidated')
        # the way out the message names works: cancel and start again
        status, result = ansible.module(MIGRATE, dict(args, state='absent', drop_destination=True))
        assert status == 'changed', result
        assert task_slots(src, name) == []


@pytest.mark.slow
def test_slot_dropped_behind_the_tasks_back(servers, ansible, tmp_path):
    src, dst = servers
    name = dbname = 'slot_dropped'
    create_load_database(src, dbname, scale=1)
    args = task_args(servers, tmp_path, name, dbname)
    with judged_scenario(servers, args['worker_dir'], name, [dbname]):
        status, result = ansible.module(MIGRATE, dict(args, wait='synced', wait_timeout=300))
        assert status == 'changed', result
        [slot] = task_slots(src, name)
        deadline = time.time() + 30
        while True:     # what an administrator does: end the walsender streaming the slot, then drop the slot
            try:
                src.execute('SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots '
                            'WHERE slot_name = %s AND active_pid IS NOT NULL', (slot,))
                src.execute('SELECT pg_drop_replication_slot(%s)', (slot,))
                break
            except Exception:  # pylint: disable=broad-except
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        src.execute("INSERT INTO ledger (k, v) VALUES (2, 2)", dbname=dbname)
        row = wait_failed(dst, name)
        message = row['error']['message']
        print('the task failed with: %s' % message)
        assert 'no longer exists' in message and 'cancel' in message, message
        assert_never_succeeds(ansible, args, name, 'no longer exists')
