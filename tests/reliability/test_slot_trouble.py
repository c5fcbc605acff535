"""Slot trouble that cannot be fixed automatically: the task fails with a message that says what happened and what to
do, refuses to be resumed, and never reports success (finish refuses too)."""

from __future__ import annotations

import time

import pytest

from tests.harness.faults import MIGRATE, create_load_database, judged_scenario, task_args, task_slots
from tests.harness.fault_scenarios import assert_never_succeeds, slot_invalidated_scenario, wait_failed


@pytest.fixture(scope='module')
def servers(module_pg_factory):
    return module_pg_factory('ssrc'), module_pg_factory('sdst')


@pytest.mark.slow
def test_slot_invalidated_by_max_slot_wal_keep_size(servers, ansible, tmp_path):
    slot_invalidated_scenario(servers, ansible, tmp_path)


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
