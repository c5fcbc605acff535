"""Fault scenarios shared by the reliability suite (tests/reliability, `make reliability`) and its quick subset
(tests/integration/test_faults_quick.py, `make test`): each one drives real servers and real plays through one fault
and judges the result by the test's own comparison."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import time

from psycopg import sql

from tests.harness.faults import (
    FINISH, INFO, MIGRATE, BackgroundPlay, TaskPoller, assert_exactly_once, create_load_database, finish_and_compare,
    finish_args, judged_scenario, kill_worker, play, task_args, task_dir, task_origins, task_slots, wait_worker,
    worker_log, worker_pid, writing,
)

STAGES = ('schema', 'copy', 'index', 'sync', 'finish')
# Upper bound of the delay after entering a stage, kept inside the stage's usual length on this data set
# (measured on 2 shared cores: schema ~0.9 s from the worker's start with 300 extra views, copy ~0.6 s at scale 4,
# index 0.15-0.3 s since each table's indexes are built during the copy; sync lasts as long as we want). The test
# asserts that the kill landed in the stage it targets.
MAX_DELAY = {'schema': 0.5, 'copy': 0.35, 'index': 0.1, 'sync': 4.0, 'finish': 1.5}


def kill_in_stage(poller, worker_dir, task, stage, delay):
    """Wait for `stage` with a live worker, wait `delay` seconds (less if the stage ends), SIGKILL the worker."""
    poller.wait_stage(stage, timeout=120, interval=0.005)
    pid = wait_worker(worker_dir, task)
    started = time.time()
    while time.time() - started < delay and poller.stage() == stage:
        time.sleep(0.005)
    killed = kill_worker(worker_dir, task, pid)
    return killed, round(time.time() - started, 3)


def kill_scenario(servers, ansible, tmp_path, seed):
    """Start a task under write load, SIGKILL its worker in STAGES[seed % 5], re-run the play, finish, compare."""
    src, dst = servers
    rng = random.Random(seed)
    target = STAGES[seed % len(STAGES)]
    delay = round(rng.uniform(0.0, MAX_DELAY[target]), 3)
    print('replay with: seed=%d target=%s delay=%.3f s' % (seed, target, delay))
    name = 'kill_%d' % seed
    dbname = 'kill_db_%d' % seed
    worker_dir = str(tmp_path / 'workers')
    # more rows for a copy target, more schema objects for a schema target: the stage lasts long enough to be hit
    create_load_database(src, dbname, scale=4 if target == 'copy' else 3, extra_indexes=True,
                         views=300 if target == 'schema' else 0)
    args = {'name': name, 'source': src.spec(), 'destination': dst.spec(), 'worker_dir': worker_dir, 'jobs': 2,
            'databases': [dbname], 'replica_identity': 'full'}     # ledger, pgbench_history: no key
    finish_args = {k: args[k] for k in ('name', 'source', 'destination', 'worker_dir')}
    poller = TaskPoller(dst, name)
    with judged_scenario(servers, worker_dir, name, [dbname], poller):
        with writing(src, dbname, seed=seed) as writer:
            if target != 'finish':
                background = BackgroundPlay(ansible, play([{'name': 'start', MIGRATE: dict(args, wait='none')}]))
                killed, after = kill_in_stage(poller, worker_dir, name, target, delay)
                assert background.wait(300) == 0, background.output()[-3000:]
                landed = poller.stage()
                print('killed worker %s after %.3f s in stage %s' % (killed, after, landed))
                assert killed, 'there was no worker to kill'
                assert landed == target, 'the kill landed in stage %s, not %s' % (landed, target)
                assert worker_pid(worker_dir, name) is None
                # re-run the play: it resumes the task and waits until the destination caught up
                status, result = ansible.module(MIGRATE, dict(args, wait='synced', wait_timeout=600))
                assert status == 'changed' and result['action'] == 'resumed', result
                assert result['task']['stage'] == 'sync', result['task']
                time.sleep(rng.uniform(0.5, 2.0))          # more changes to carry through the sync
                writer.stop()
                status, result = ansible.module(FINISH, finish_args)
                assert status == 'changed', result
            else:
                status, result = ansible.module(MIGRATE, dict(args, wait='synced', wait_timeout=600))
                assert status == 'changed', result
                background = BackgroundPlay(ansible, play([{'name': 'finish', FINISH: finish_args}]))
                killed, after = kill_in_stage(poller, worker_dir, name, 'finishing', delay)
                print('killed worker %s after %.3f s in stage finishing' % (killed, after))
                assert killed, 'there was no worker to kill'
                code = background.wait(600)
                print('finish play after the kill: rc=%s' % code)
                writer.stop()
                # re-run the play: finishes what is left, or reports the finished task
                status, result = ansible.module(FINISH, finish_args)
                assert status in ('changed', 'ok'), result
                respawned = [e['message'] for e in result['task']['log'] if 'worker is gone' in e['message']]
                print('finish restarted the killed worker: %s' % bool(respawned))
            print('writer: %d commits, %d errors (%s)' % (writer.commits, writer.errors, writer.last_error))
            assert writer.commits > 50
        assert result['task']['stage'] == 'finished', result['task']
        assert result['comparison_summary']['mismatch'] == 0
        rows = assert_exactly_once(src, dst, dbname)
        print('destination equals source: %d rows' % rows)
        assert task_slots(src, name) == [] and task_origins(dst, name) == []


def restart_during_sync(servers, ansible, tmp_path, which, down=0):
    """Two restarts (or one slow restart: down `down` seconds) of a server while the task syncs under load."""
    src, dst = servers
    target = src if which == 'source' else dst
    name = dbname = 'rsync_%s_%d' % (which[:3], down)
    create_load_database(src, dbname, scale=1)
    args = task_args(servers, tmp_path, name, dbname)
    with judged_scenario(servers, args['worker_dir'], name, [dbname]):
        with writing(src, dbname, seed=12) as writer:
            status, result = ansible.module(MIGRATE, dict(args, wait='synced', wait_timeout=600))
            assert status == 'changed', result
            pid = worker_pid(args['worker_dir'], name)
            time.sleep(1)
            if down:
                target.stop()
                time.sleep(down)
                target.start()
            else:
                target.restart()
                time.sleep(2)
                target.restart()       # twice: the second one hits a session that just reconnected
            time.sleep(2)
            assert worker_pid(args['worker_dir'], name) == pid, 'the worker did not survive the restart'
            status, result = ansible.module(MIGRATE, dict(args, wait='synced', wait_timeout=300))
            assert status == 'ok' and result['action'] == 'reported', result
            writer.stop()
            print('writer: %d commits, %d errors (%s)' % (writer.commits, writer.errors, writer.last_error))
            assert 'connection problem' in worker_log(args['worker_dir'], name)
        finish_and_compare(ansible, servers, args, dbname)


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
