"""The controller disappears mid-play (the playbook process group is killed): the worker carries on and the next run
reports it. A second worker for the same task (by hand, or parallel plays) is refused and nothing is applied twice."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.reliability.support import (
    FINISH, MIGRATE, BackgroundPlay, TaskPoller, create_load_database, finish_and_compare, finish_args,
    judged_scenario, kill_worker, play, task_args, task_dir, wait_worker, worker_pid, writing,
)


@pytest.fixture(scope='module')
def servers(module_pg_factory):
    return module_pg_factory('csrc'), module_pg_factory('cdst')


def workers_of(worker_dir, task):
    """Every live process that runs the worker of this task (whatever its pid file says)."""
    wanted = task_dir(worker_dir, task)
    found = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % entry, 'rb') as handle:
                argv = handle.read().decode('utf-8', 'replace').split('\0')
            with open('/proc/%s/stat' % entry) as handle:
                if handle.read().rsplit(')', 1)[1].split()[0] == 'Z':
                    continue
        except OSError:
            continue
        if any(a.endswith('.worker') for a in argv) and wanted in argv:
            found.append(int(entry))
    return found


@pytest.mark.slow
def test_controller_killed_mid_play_the_worker_carries_on(servers, ansible, tmp_path):
    controller_killed_mid_play_the_worker_carries_on(servers, ansible, tmp_path)


def controller_killed_mid_play_the_worker_carries_on(servers, ansible, tmp_path):
    src, dst = servers
    name = dbname = 'ctl_gone'
    create_load_database(src, dbname, scale=2)
    args = task_args(servers, tmp_path, name, dbname)
    poller = TaskPoller(dst, name)
    with judged_scenario(servers, args['worker_dir'], name, [dbname], poller):
        with writing(src, dbname, seed=21) as writer:
            # the play waits for the sync; the controller is killed while the copy runs
            background = BackgroundPlay(ansible, play([{'name': 'migrate', MIGRATE: dict(
                args, wait='synced', wait_timeout=600)}]))
            poller.wait_stage(('copy', 'index'), timeout=120, interval=0.005)
            pid = wait_worker(args['worker_dir'], name)
            assert background.module_processes(), 'the module should still be waiting'
            background.kill()
            assert background.module_processes() == []
            time.sleep(2)
            assert worker_pid(args['worker_dir'], name) == pid, 'the worker must outlive the controller'
            poller.wait_stage('sync', timeout=120)
            # the next run reports the running task and changes nothing
            status, result = ansible.module(MIGRATE, args)
            assert status == 'ok', result
            assert result['action'] == 'reported' and 'running (worker pid %d)' % pid in result['msg'], result['msg']
            assert result['task']['stage'] == 'sync'
            status, result = ansible.module(MIGRATE, dict(args, wait='synced'))
            assert status == 'ok', result
            writer.stop()
            print('writer: %d commits, %d errors' % (writer.commits, writer.errors))
        finish_and_compare(ansible, servers, args, dbname, finished_before=True)


@pytest.mark.slow
def test_controller_killed_mid_finish(servers, ansible, tmp_path):
    controller_killed_mid_finish(servers, ansible, tmp_path)


def controller_killed_mid_finish(servers, ansible, tmp_path):
    """The fence is up and the task is 'finishing' when the controller dies: the next finish completes the cutover."""
    src, dst = servers
    name = dbname = 'ctl_finish'
    create_load_database(src, dbname, scale=1)
    args = task_args(servers, tmp_path, name, dbname)
    poller = TaskPoller(dst, name)
    with judged_scenario(servers, args['worker_dir'], name, [dbname], poller):
        with writing(src, dbname, seed=22) as writer:
            status, result = ansible.module(MIGRATE, dict(args, wait='synced', wait_timeout=300))
            assert status == 'changed', result
            background = BackgroundPlay(ansible, play([{'name': 'finish', FINISH: finish_args(args)}]))
            poller.wait_stage('finishing', timeout=120, interval=0.005)
            background.kill()
            writer.stop()
        assert poller.stage() == 'finishing'
        status, result = ansible.module(FINISH, finish_args(args))
        assert status == 'changed', result
        finish_and_compare(ansible, servers, args, dbname, finished_before=True)


@pytest.mark.slow
def test_second_worker_by_hand_is_refused(servers, ansible, tmp_path):
    second_worker_by_hand_is_refused(servers, ansible, tmp_path)


def second_worker_by_hand_is_refused(servers, ansible, tmp_path):
    src, dst = servers
    name = dbname = 'two_by_hand'
    create_load_database(src, dbname, scale=1)
    args = task_args(servers, tmp_path, name, dbname)
    with judged_scenario(servers, args['worker_dir'], name, [dbname]):
        with writing(src, dbname, seed=23) as writer:
            status, result = ansible.module(MIGRATE, dict(args, wait='synced', wait_timeout=300))
            assert status == 'changed', result
            pid = worker_pid(args['worker_dir'], name)
            directory = task_dir(args['worker_dir'], name)
            env = dict(os.environ, PYTHONPATH=os.path.join(directory, 'lib'))
            second = subprocess.run([sys.executable, '-m', 'ansible_collections.pgdts.migration.plugins.module_utils.worker',
                                     directory], env=env, capture_output=True, text=True, timeout=60, check=False)
            assert second.returncode == 0, second.stderr
            assert 'another worker holds the lock of task %s' % name in second.stderr
            assert workers_of(args['worker_dir'], name) == [pid]
            with open(os.path.join(directory, 'worker.pid')) as handle:
                assert int(handle.read()) == pid
            time.sleep(2)
            writer.stop()
            print('writer: %d commits, %d errors' % (writer.commits, writer.errors))
        status, result = ansible.module(MIGRATE, dict(args, wait='synced'))
        assert status == 'ok' and result['action'] == 'reported', result
        finish_and_compare(ansible, servers, args, dbname, finished_before=True)


@pytest.mark.slow
def test_parallel_plays_start_one_worker(pg_factory, ansible, tmp_path):
    """Two plays start the same new task at once on a fresh destination, then two plays resume it at once."""
    src, dst = pg_factory('psrc'), pg_factory('pdst')
    servers = (src, dst)
    name = dbname = 'parallel'
    create_load_database(src, dbname, scale=1)
    args = task_args(servers, tmp_path, name, dbname)
    with judged_scenario(servers, args['worker_dir'], name, [dbname]):
        with writing(src, dbname, seed=24) as writer:
            plays = [BackgroundPlay(ansible, play([{'name': 'start', MIGRATE: args}])) for _play in range(2)]
            codes = [p.wait(300) for p in plays]
            outcomes = [p.results()[-1]['result'] for p in plays]
            assert codes == [0, 0], [(r.get('msg'), r.get('exception')) for r in outcomes]
            actions = sorted(r['action'] for r in outcomes)
            print('parallel starts: %s' % actions)
            assert actions in (['reported', 'started'], ['resumed', 'started']), actions
            pid = wait_worker(args['worker_dir'], name)
            assert workers_of(args['worker_dir'], name) == [pid]
            TaskPoller(dst, name).wait_stage('sync', timeout=120)
            # the worker dies; two plays resume the task at the same moment
            kill_worker(args['worker_dir'], name)
            plays = [BackgroundPlay(ansible, play([{'name': 'resume', MIGRATE: args}])) for _play in range(2)]
            codes = [p.wait(300) for p in plays]
            outcomes = [p.results()[-1]['result'] for p in plays]
            assert codes == [0, 0], [(r.get('msg'), r.get('exception')) for r in outcomes]
            actions = sorted(r['action'] for r in outcomes)
            print('parallel resumes: %s' % actions)
            assert 'resumed' in actions and set(actions) <= {'resumed', 'reported'}, actions
            time.sleep(1)
            assert len(workers_of(args['worker_dir'], name)) == 1
            time.sleep(2)
            writer.stop()
            print('writer: %d commits, %d errors' % (writer.commits, writer.errors))
        status, result = ansible.module(MIGRATE, dict(args, wait='synced'))
        assert status == 'ok', result
        finish_and_compare(ansible, servers, args, dbname, finished_before=True)
