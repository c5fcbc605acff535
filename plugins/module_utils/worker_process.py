# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller-side control of a task's worker process: its directory, start, stop and pid, and the task's objects
on the servers that a cancel or a finished cutover releases.

The detached process itself (TaskRunner, SyncLoop) is `worker.py`; this file only starts, watches and stops it.
"""

from __future__ import annotations

import ast
import collections
import errno
import fcntl
import importlib
import json
import os
import subprocess
import sys
import time

from ansible_collections.pgdts.migration.plugins.module_utils import schema, task_state
from ansible_collections.pgdts.migration.plugins.module_utils.connection import (
    WRITER_OPTIONS, ConnectionFailure, connect, sql,
)
from ansible_collections.pgdts.migration.plugins.module_utils.files import write_atomic

PACKAGE = 'ansible_collections.pgdts.migration.plugins.module_utils'
WORKER_MODULE = 'worker'


def _imported_engine_modules(name):
    """The engine modules that module `name` imports (at any depth of its code), by reading its source."""
    module = importlib.import_module('%s.%s' % (PACKAGE, name))
    tree = ast.parse(module.__loader__.get_source(module.__name__))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == PACKAGE:
                found.update(alias.name for alias in node.names)
            elif node.module.startswith(PACKAGE + '.'):
                found.add(node.module[len(PACKAGE) + 1:].split('.')[0])
    return found


def engine_modules(root=WORKER_MODULE):
    """The files the detached worker needs: `worker` and every engine module it imports, directly or not. Derived
    from the code, so a new import can never be missing from the worker's copy of the engine."""
    wanted, todo = set(), [root]
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(_imported_engine_modules(name) - wanted)
    return tuple(sorted(wanted))


# ---------------------------------------------------------------------------------------------------------------
# The worker directory

class TaskPaths:
    def __init__(self, worker_dir, task):
        self.worker_dir = os.path.abspath(os.path.expanduser(worker_dir))
        self.task_dir = os.path.join(self.worker_dir, task)
        self.lock = os.path.join(self.task_dir, 'lock')
        self.pid = os.path.join(self.task_dir, 'worker.pid')
        self.log = os.path.join(self.task_dir, 'worker.log')
        self.spec = os.path.join(self.task_dir, 'task.json')
        self.credentials = os.path.join(self.task_dir, 'credentials.json')
        self.lib = os.path.join(self.task_dir, 'lib')
        self.work = os.path.join(self.task_dir, 'work')


def prepare_task_dir(paths, spec, source, destination):
    """Create the task directory (0700), the engine code, the public spec and the 0600 credential file."""
    os.makedirs(paths.worker_dir, mode=0o700, exist_ok=True)
    os.makedirs(paths.task_dir, mode=0o700, exist_ok=True)
    os.chmod(paths.task_dir, 0o700)
    os.makedirs(paths.work, mode=0o700, exist_ok=True)
    target = os.path.join(paths.lib, *PACKAGE.split('.'))
    os.makedirs(target, exist_ok=True)
    # imported here (not at the top: worker imports this file) so that Ansible packs worker.py and everything it
    # imports with the module; engine_modules() then finds them all
    from ansible_collections.pgdts.migration.plugins.module_utils import worker  # noqa: F401 pylint: disable=unused-import
    for name in engine_modules():
        module = importlib.import_module('%s.%s' % (PACKAGE, name))
        # atomically: a worker of a parallel run may be importing these files right now
        write_atomic(os.path.join(target, name + '.py'), module.__loader__.get_source(module.__name__), mode=0o644)
    write_atomic(paths.spec, json.dumps(spec, indent=2, sort_keys=True, default=str))
    write_atomic(paths.credentials, json.dumps({'source': source.to_dict(), 'destination': destination.to_dict()}))


def remove_credentials(paths):
    try:
        os.unlink(paths.credentials)
    except OSError:
        pass


def remove_task_dir(paths):
    import shutil
    shutil.rmtree(paths.task_dir, ignore_errors=True)


def worker_pid(paths):
    """The pid of the live worker of this task, or None. Decided by the lock, not by the pid file."""
    if not os.path.exists(paths.lock):
        return None
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                try:
                    with open(paths.pid) as handle:
                        return int(handle.read().strip() or 0) or -1
                except (OSError, ValueError):
                    return -1
            raise
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def spawn_worker(paths, python=None, wait_seconds=15):
    """Start the detached worker; returns its pid once it holds the lock. Raises RuntimeError if it dies first."""
    env = dict(os.environ)
    env['PYTHONPATH'] = paths.lib
    for key in list(env):
        if key.startswith('PG') or key.startswith('ANSIBLE_'):
            env.pop(key)
    with open(paths.log, 'a') as log, open(os.devnull, 'rb') as devnull:
        proc = subprocess.Popen([python or sys.executable, '-m', '%s.%s' % (PACKAGE, WORKER_MODULE), paths.task_dir],
                                stdin=devnull, stdout=log, stderr=log, cwd=paths.task_dir, env=env,
                                close_fds=True, start_new_session=True)
    deadline = time.time() + wait_seconds
    while time.time() < deadline:
        pid = worker_pid(paths)
        if pid:
            return pid
        if proc.poll() is not None:
            if proc.returncode == 0:
                return None   # the worker found nothing to do
            raise RuntimeError('the worker exited at start (code %s); see %s: %s'
                               % (proc.returncode, paths.log, tail(paths.log)))
        time.sleep(0.05)
    raise RuntimeError('the worker did not take its lock within %d s; see %s' % (wait_seconds, paths.log))


def tail(path, lines=5):
    try:
        with open(path) as handle:
            return ' | '.join(handle.read().strip().splitlines()[-lines:])
    except OSError:
        return ''


def stop_worker(paths, timeout=60, grace=None):
    """Wait for a worker that was asked to stop (through its request) to let go of its lock.

    With `grace`, a worker still running after that many seconds is sent SIGTERM (used once its work is known to be
    done, e.g. after a verified cutover: nothing it could still do matters). SIGKILL when `timeout` passes."""
    import signal
    started = time.time()
    termed = False
    while time.time() - started < timeout:
        pid = worker_pid(paths)
        if not pid:
            return True
        if grace is not None and not termed and time.time() - started >= grace and pid > 0:
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
            termed = True
        time.sleep(0.05)
    pid = worker_pid(paths)
    if pid and pid > 0:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        time.sleep(0.5)
    return worker_pid(paths) is None


# ---------------------------------------------------------------------------------------------------------------
# Objects of a task on the servers

def database_settings(conn, databases):
    """{dbname: the database's own default_transaction_read_only (pg_db_role_setting, all roles) or None}."""
    rows = conn.execute("SELECT d.datname, s.setconfig FROM pg_catalog.pg_database d LEFT JOIN "
                        "pg_catalog.pg_db_role_setting s ON s.setdatabase = d.oid AND s.setrole = 0 "
                        "WHERE d.datname = ANY(%s)", (list(databases),)).fetchall()
    found = {}
    for dbname, config in rows:
        found[dbname] = None
        for item in config or ():
            key, _sep, value = item.partition('=')
            if key == 'default_transaction_read_only':
                found[dbname] = value
    return found


def read_only_sql(dbname, previous):
    """ALTER DATABASE giving `dbname` back its own default_transaction_read_only (None: it had none)."""
    if previous is None:
        return sql.SQL('ALTER DATABASE {} RESET default_transaction_read_only').format(sql.Identifier(dbname))
    return sql.SQL('ALTER DATABASE {} SET default_transaction_read_only = {}').format(sql.Identifier(dbname),
                                                                                      sql.Literal(previous))


def release_task_objects(source, destination, task, databases, drop_destination=False, created_databases=(),
                         tables=None, log=None, existing_objects=None, destination_settings=None):
    """Drop the task's slots and publications on the source and origins on the destination (and, when asked,
    what the task created on the destination: the databases it created; in the others, what was not there before,
    as `existing_objects` {dbname: addresses} recorded). Missing objects are fine: this can run twice.
    The destination databases get back their own default_transaction_read_only from before the worker protected them
    (`destination_settings` {dbname: value or None}, as the task state recorded it; RESET when not recorded)."""
    from ansible_collections.pgdts.migration.plugins.module_utils import apply, decoding
    log = log or (lambda msg: None)
    done = []
    for dbname in databases:
        name = task_state.object_name(task, dbname)
        try:
            with connect(source, dbname, application_name='pgdts-cleanup', options=WRITER_OPTIONS) as conn:
                decoding.drop_slot(conn, name, missing_ok=True)
                decoding.drop_publication(conn, name, missing_ok=True)
                done.append('source %s: slot and publication %s dropped' % (dbname, name))
        except ConnectionFailure as exc:
            if exc.kind != 'database_missing':
                raise
        try:
            with connect(destination, dbname, application_name='pgdts-cleanup', options=WRITER_OPTIONS) as conn:
                apply.drop_origin(conn, name, missing_ok=True)
                conn.execute(read_only_sql(dbname, (destination_settings or {}).get(dbname)))
                if drop_destination and dbname not in created_databases:
                    dropped = schema.drop_objects(conn, _task_objects(conn, dbname, tables, existing_objects))
                    kinds = collections.Counter(kind for kind, _identity in dropped)
                    done.append('destination %s: dropped what the task created: %s' % (
                        dbname, ', '.join('%d %s' % (n, kind) for kind, n in sorted(kinds.items())) or 'nothing'))
        except ConnectionFailure as exc:
            if exc.kind != 'database_missing':
                raise
    if drop_destination:
        with connect(destination, application_name='pgdts-cleanup') as admin:
            for dbname in created_databases:
                schema.drop_database(admin, dbname)
                done.append('destination database %s dropped' % dbname)
    for line in done:
        log(line)
    return done


def _task_objects(conn, dbname, tables, existing_objects):
    """Addresses (schema.own_objects() form) of what the task created in a destination database that existed before
    it: everything not recorded before its schema restore; for a task that started before that was recorded, its
    tables."""
    existing = (existing_objects or {}).get(dbname)
    if existing is not None:
        return schema.created_objects(conn, existing)
    wanted = {tuple(t) for t in (tables or {}).get(dbname, [])}
    return [a for a in schema.own_objects(conn) if a[0] == 'table' and tuple(a[1]) in wanted]


def destination_objects_to_drop(destination, databases, created_databases=(), tables=None, existing_objects=None):
    """What release_task_objects(drop_destination=True) would drop on the destination, read only:
    [{'database', 'type', 'name'}] (type 'database' for a database the task created)."""
    found = []
    for dbname in databases:
        if dbname in created_databases:
            found.append({'database': dbname, 'type': 'database', 'name': dbname})
            continue
        try:
            with connect(destination, dbname, application_name='pgdts-cleanup') as conn:
                found += [{'database': dbname, 'type': kind, 'name': '.'.join(names)}
                          for kind, names, _args in _task_objects(conn, dbname, tables, existing_objects)]
        except ConnectionFailure as exc:
            if exc.kind != 'database_missing':
                raise
    return found
