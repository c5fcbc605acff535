"""The controller disappears mid-play (the playbook process group is killed): the worker carries on and the next run
reports it. A second worker for the same task (by hand, or parallel plays) is refused and nothing is applied twice."""

from __future__ import annotations

import time

import pytest

from tests.harness.faults import (
    FINISH, MIGRATE, BackgroundPlay, TaskPoller, create_load_database, finish_and_compare, finish_args,
    judged_scenario, kill_worker, play, task_args, wait_worker, writing,
)
from tests.harness.fault_scenarios import (
    controller_killed_mid_play_the_worker_carries_on, second_worker_by_hand_is_refused, workers_of,
)


@pytest.fixture(scope='module')
def servers(module_pg_factory):
    return module_pg_factory('csrc'), module_pg_factory('cdst')


@pytest.mark.slow
def test_controller_killed_mid_play_the_worker_carries_on(servers, ansible, tmp_path):
    controller_killed_mid_play_the_worker_carries_on(servers, ansible, tmp_path)


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
