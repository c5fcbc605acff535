"""The task state machine as pure decisions: which steps a worker takes from each stage, where a failed task resumes,
what state=present does with a task as it is, and how the worker rides out an outage (retry_outages,
connection_lost). What these steps do to real servers is tested in tests/integration (test_migrate, test_finish,
test_faults_quick)."""

from __future__ import annotations

import psycopg
import pytest

from ansible_collections.pgdts.migration.plugins.module_utils import task_state
from ansible_collections.pgdts.migration.plugins.module_utils.connection import (
    ConnectionFailure, OutageTimeout, connection_lost, error_text, retry_outages,
)
from ansible_collections.pgdts.migration.plugins.module_utils.task_control import ensure_action, first_stage
from ansible_collections.pgdts.migration.plugins.module_utils.worker import TaskRunner, resume_stage, worker_steps

ORDER = {stage: n for n, stage in enumerate(task_state.ACTIVE_STAGES)}


def recorded(steps):
    return [what for kind, what in steps if kind == 'stage']


def run_steps(steps):
    return [what for kind, what in steps if kind == 'step']


def test_a_new_incremental_task_goes_through_every_stage_in_order():
    steps = worker_steps('schema', incremental=True)
    assert run_steps(steps) == ['set_started', 'initial_load', 'build_indexes', 'sync']
    assert recorded(steps) == ['index', 'sync']
    # each stage is recorded before the step of that stage runs
    assert steps.index(('stage', 'index')) < steps.index(('step', 'build_indexes'))
    assert steps.index(('stage', 'sync')) < steps.index(('step', 'sync'))


def test_a_scheduled_task_waits_then_records_schema_before_anything_else():
    steps = worker_steps('scheduled', incremental=True)
    assert steps[:3] == [('step', 'wait_for_start'), ('stage', 'schema'), ('step', 'set_started')]
    assert recorded(steps) == ['schema', 'index', 'sync']


def test_a_copy_only_task_ends_after_its_indexes_and_never_records_sync():
    steps = worker_steps('schema', incremental=False)
    assert run_steps(steps) == ['set_started', 'initial_load', 'build_indexes', 'end_without_sync']
    assert 'sync' not in recorded(steps)
    assert worker_steps('index', incremental=False)[-1] == ('step', 'end_without_sync')


@pytest.mark.parametrize('stage, first_work', [
    ('schema', 'initial_load'), ('copy', 'initial_load'), ('index', 'build_indexes'), ('sync', 'sync'),
    ('finishing', 'sync'),
])
def test_a_restarted_worker_carries_on_with_the_work_of_its_stage(stage, first_work):
    steps = worker_steps(stage)
    assert run_steps(steps)[:2] == ['set_started', first_work]
    # stages only move forward from where the task was
    assert all(ORDER[s] > ORDER[stage] for s in recorded(steps))


@pytest.mark.parametrize('stage', ['sync', 'finishing'])
def test_sync_and_finishing_record_no_stage(stage):
    assert recorded(worker_steps(stage)) == []


def test_every_step_is_a_method_of_the_runner():
    for stage in task_state.ACTIVE_STAGES:
        for incremental in (True, False):
            for name in run_steps(worker_steps(stage, incremental)):
                assert name == 'set_started' or callable(getattr(TaskRunner, name, None)), name


@pytest.mark.parametrize('error, expected', [
    ({'stage': 'copy', 'message': 'x'}, 'copy'),
    ({'stage': 'sync', 'message': 'x'}, 'sync'),
    ({'message': 'no stage recorded'}, 'schema'),
    (None, 'schema'),
])
def test_a_failed_task_resumes_in_the_stage_it_failed_in(error, expected):
    assert resume_stage({'stage': 'failed', 'error': error}) == expected


def test_a_new_task_starts_scheduled_only_with_start_at():
    assert first_stage('2099-01-01T00:00:00+00:00') == 'scheduled'
    assert first_stage(None) == 'schema'


@pytest.mark.parametrize('task, running, expected', [
    (None, False, 'start'),
    ({'stage': 'cancelled', 'error': None}, False, 'start'),
    ({'stage': 'finished', 'error': None}, False, 'none'),
    ({'stage': 'sync', 'error': None}, True, 'reported'),
    ({'stage': 'copy', 'error': None}, False, 'resume'),
    ({'stage': 'failed', 'error': {'type': 'ApplyError', 'stage': 'sync'}}, False, 'resume'),
    ({'stage': 'failed', 'error': {'type': 'SlotInvalidated', 'stage': 'sync'}}, False, 'refused'),
    ({'stage': 'failed', 'error': {'type': 'SlotInvalidated', 'stage': 'sync'}}, True, 'reported'),
    ({'stage': 'failed', 'error': {'type': 'WalRetentionExceeded', 'stage': 'copy'}}, False, 'refused'),
])
def test_what_state_present_does_with_a_task(task, running, expected):
    assert ensure_action(task, running) == expected


# -- outages --------------------------------------------------------------------------------------------------------

def test_lost_connections_and_errors_that_are_not():
    assert connection_lost(ConnectionFailure('unreachable', 'cannot reach x'))
    assert connection_lost(psycopg.errors.AdminShutdown('terminating connection due to administrator command'))
    assert connection_lost(psycopg.OperationalError('server closed the connection unexpectedly'))
    assert not connection_lost(ConnectionFailure('auth_failed', 'authentication failed'))
    assert not connection_lost(psycopg.errors.UniqueViolation('duplicate key value'))
    assert not connection_lost(OutageTimeout('gave up after 9 s: server closed the connection'))
    # wrapped by another layer (raise ... from None keeps __context__)
    try:
        try:
            raise psycopg.errors.AdminShutdown('terminating connection')
        except psycopg.Error:
            raise RuntimeError('cannot apply the batch') from None
    except RuntimeError as wrapped:
        assert connection_lost(wrapped)


def test_error_text_is_the_first_line():
    assert error_text(RuntimeError('first\nsecond')) == 'first'
    assert error_text(RuntimeError('')) == 'RuntimeError'


def test_retry_outages_waits_with_backoff_and_returns_the_result():
    failures = [ConnectionFailure('unreachable', 'cannot reach a'), ConnectionFailure('starting_up', 'starting')]
    logged, waited, before = [], [], []

    def step():
        if failures:
            raise failures.pop(0)
        return 'done'

    assert retry_outages(step, 600, logged.append, waited.append, 'db: ', before=lambda: before.append(1)) == 'done'
    assert logged == ['db: connection problem (cannot reach a); retrying', 'db: connection problem (starting); retrying']
    assert len(before) == 3 and all(0.5 <= w <= 10.0 for w in waited) and waited == sorted(waited)


def test_retry_outages_gives_up_after_the_limit():
    def step():
        raise ConnectionFailure('unreachable', 'cannot reach a')

    with pytest.raises(OutageTimeout, match=r'^db: gave up after \d+ s of connection failures \(retry_timeout -1 s\): '
                                            r'cannot reach a$'):
        retry_outages(step, -1, lambda m: None, lambda s: None, 'db: ')


def test_retry_outages_raises_other_errors_at_once_after_on_error():
    seen = []

    def step():
        raise ValueError('bad data')

    with pytest.raises(ValueError):
        retry_outages(step, 600, lambda m: None, lambda s: None, '', on_error=seen.append)
    assert [str(e) for e in seen] == ['bad data']


def test_retry_outages_lets_passthrough_errors_through_even_when_caused_by_an_outage():
    class Stopped(Exception):
        pass

    def step():
        try:
            raise ConnectionFailure('unreachable', 'cannot reach a')
        except ConnectionFailure:
            raise Stopped()

    with pytest.raises(Stopped):
        retry_outages(step, 600, lambda m: None, lambda s: None, '', passthrough=(Stopped,))
