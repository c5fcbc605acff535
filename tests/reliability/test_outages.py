"""Server outages under write load: restarts of the source and of the destination during the copy and during the
sync, the destination stopped or paused for a while (lag builds up, then drains), and the source down longer than
a restart. The worker rides them out (retry_timeout); the test's own comparison judges the result."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.harness.faults import (
    MIGRATE, BackgroundPlay, TaskPoller, create_load_database, finish_and_compare, judged_scenario, play, slot_lag,
    task_args, wait_worker, worker_log, worker_pid, writing,
)
from tests.harness.fault_scenarios import restart_during_sync


@pytest.fixture(scope='module')
def servers(module_pg_factory):
    return module_pg_factory('osrc'), module_pg_factory('odst')


def all_pids(cluster):
    """The postmaster and every child of it."""
    master = cluster.postmaster_pid()
    pids = [master]
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open('/proc/%s/stat' % entry) as handle:
                    if int(handle.read().rsplit(')', 1)[1].split()[1]) == master:
                        pids.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return pids


@pytest.mark.slow
@pytest.mark.parametrize('which', ['source', 'destination'])
def test_restart_during_copy(servers, ansible, tmp_path, which):
    restart_during_copy(servers, ansible, tmp_path, which)


def restart_during_copy(servers, ansible, tmp_path, which):
    src, dst = servers
    target = src if which == 'source' else dst
    name, dbname = 'rcopy_%s' % which[:3], 'rcopy_%s' % which[:3]
    create_load_database(src, dbname, scale=3)
    args = task_args(servers, tmp_path, name, dbname)
    poller = TaskPoller(dst, name)
    with judged_scenario(servers, args['worker_dir'], name, [dbname], poller):
        with writing(src, dbname, seed=11) as writer:
            background = BackgroundPlay(ansible, play([{'name': 'start', MIGRATE: dict(args, wait='none')}]))
            poller.wait_stage('copy', timeout=120, interval=0.005)
            pid = wait_worker(args['worker_dir'], name)
            target.restart()
            print('%s restarted during the copy' % which)
            background.wait(300)
            # the worker rode the restart out: the next run only reports it
            status, result = ansible.module(MIGRATE, dict(args, wait='synced', wait_timeout=600))
            print('after the restart: %s %s %s' % (status, result.get('action'), result.get('msg')))
            assert status == 'ok' and result['action'] == 'reported', result['msg']
            assert result['task']['stage'] == 'sync', result['task']
            assert worker_pid(args['worker_dir'], name) == pid
            retries = [line for line in worker_log(args['worker_dir'], name).splitlines() if 'connection problem' in line]
            print('\n'.join(retries[:3]))
            assert retries, 'the worker should have retried'
            time.sleep(1)
            writer.stop()
            print('writer: %d commits, %d errors (%s)' % (writer.commits, writer.errors, writer.last_error))
        finish_and_compare(ansible, servers, args, dbname)


@pytest.mark.slow
@pytest.mark.parametrize('which, down', [('source', 0), ('destination', 0), ('source', 15), ('destination', 15)],
                         ids=['source', 'destination', 'source-down-15s', 'destination-down-15s'])
def test_restart_during_sync(servers, ansible, tmp_path, which, down):
    restart_during_sync(servers, ansible, tmp_path, which, down)


@pytest.mark.slow
@pytest.mark.parametrize('how', ['stopped', 'paused'])
def test_destination_unavailable_for_a_while(servers, ansible, tmp_path, how):
    destination_unavailable_for_a_while(servers, ansible, tmp_path, how)


def destination_unavailable_for_a_while(servers, ansible, tmp_path, how):
    """Lag builds up on the source's slot while the destination is away, and drains when it is back."""
    src, dst = servers
    name, dbname = 'away_%s' % how, 'away_%s' % how
    create_load_database(src, dbname, scale=1)
    args = task_args(servers, tmp_path, name, dbname)
    with judged_scenario(servers, args['worker_dir'], name, [dbname]):
        with writing(src, dbname, seed=13) as writer:
            status, result = ansible.module(MIGRATE, dict(args, wait='synced', wait_timeout=600))
            assert status == 'changed', result
            pid = worker_pid(args['worker_dir'], name)
            time.sleep(1)
            before = slot_lag(src, name)
            if how == 'stopped':
                dst.stop()
            else:
                paused = all_pids(dst)
                for p in paused:
                    os.kill(p, signal.SIGSTOP)
            try:
                time.sleep(20)
                during = slot_lag(src, name)
            finally:
                if how == 'stopped':
                    dst.start()
                else:
                    for p in paused:
                        os.kill(p, signal.SIGCONT)
            print('slot lag: %s bytes before, %s bytes after 20 s away' % (before, during))
            assert during > max(before or 0, 0) + 100000, 'no lag built up while the destination was away'
            assert worker_pid(args['worker_dir'], name) == pid, 'the worker did not survive'
            status, result = ansible.module(MIGRATE, dict(args, wait='synced', wait_timeout=300))
            assert status == 'ok', result
            writer.stop()
            print('writer: %d commits, %d errors' % (writer.commits, writer.errors))
            status, result = ansible.module(MIGRATE, dict(args, wait='synced', wait_timeout=300))
            print('lag after the catch-up: %s bytes, %s s' % (result['task']['lag_bytes'], result['task']['lag_seconds']))
            assert result['task']['lag_bytes'] < 100000
        finish_and_compare(ansible, servers, args, dbname)


@pytest.mark.slow
def test_source_down_longer_than_retry_timeout(servers, ansible, tmp_path):
    """Past retry_timeout the task fails and says why; once the source is back, the next run resumes it."""
    src, dst = servers
    name = dbname = 'too_long'
    create_load_database(src, dbname, scale=1)
    args = task_args(servers, tmp_path, name, dbname, retry_timeout=5)
    poller = TaskPoller(dst, name)
    with judged_scenario(servers, args['worker_dir'], name, [dbname], poller):
        with writing(src, dbname, seed=14) as writer:
            status, result = ansible.module(MIGRATE, dict(args, wait='synced', wait_timeout=300))
            assert status == 'changed', result
            src.stop()
            try:
                poller.wait_stage('failed', timeout=60, interval=0.2)
                error = poller.row()['error']
            finally:
                src.start()
            print('the task failed with: %s' % error['message'])
            assert error['stage'] == 'sync' and error['type'] == 'OutageTimeout'
            assert 'gave up after' in error['message'] and 'retry_timeout 5 s' in error['message']
            assert 'cannot reach' in error['message']
            status, result = ansible.module(MIGRATE, dict(args, wait='synced', wait_timeout=300))
            assert status == 'changed' and result['action'] == 'resumed', result['msg']
            writer.stop()
        finish_and_compare(ansible, servers, args, dbname)
