"""The quick subset of the reliability suite (tests/reliability), run by `make test`: one of each kind of fault,
each ending with the destination equal to the source by the test's own comparison (or, for the invalidated slot,
with a failure that says what to do and is never reported as success). `make reliability` runs all of them."""

from __future__ import annotations

import pytest

from tests.harness.fault_scenarios import (
    STAGES, controller_killed_mid_play_the_worker_carries_on, kill_scenario, restart_during_sync,
    second_worker_by_hand_is_refused, slot_invalidated_scenario,
)


@pytest.fixture(scope='module')
def servers(module_pg_factory):
    return module_pg_factory('qksrc'), module_pg_factory('qkdst')


@pytest.mark.parametrize('seed', [6, 7, 3], ids=lambda s: 'seed=%d-%s' % (s, STAGES[s % len(STAGES)]))
def test_kill_worker_then_rerun(servers, ansible, tmp_path, seed):
    kill_scenario(servers, ansible, tmp_path, seed)


def test_destination_restart_during_sync(servers, ansible, tmp_path):
    restart_during_sync(servers, ansible, tmp_path, 'destination')


def test_controller_killed_mid_play(servers, ansible, tmp_path):
    controller_killed_mid_play_the_worker_carries_on(servers, ansible, tmp_path)


def test_second_worker_by_hand(servers, ansible, tmp_path):
    second_worker_by_hand_is_refused(servers, ansible, tmp_path)


def test_invalidated_slot(servers, ansible, tmp_path):
    slot_invalidated_scenario(servers, ansible, tmp_path)
