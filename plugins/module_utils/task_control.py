# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the modules do with a task: start, report, resume, wait for, cancel. Plain Python; modules stay thin."""

from __future__ import annotations

import datetime
import json
import os
import time

from ansible_collections.pgdts.migration.plugins.module_utils import catalog, schema, task_state
from ansible_collections.pgdts.migration.plugins.module_utils import worker_process as worker
from ansible_collections.pgdts.migration.plugins.module_utils.connection import (
    ConnectionFailure, ServerSpec, connect, error_text, query_value,
)
from ansible_collections.pgdts.migration.plugins.module_utils.lsn import lsn_to_int
from ansible_collections.pgdts.migration.plugins.module_utils.task_state import TaskStore

# Options that define what a task migrates: a re-run with other values names a different task.
IDENTITY_KEYS = ('tables', 'exclude_tables', 'plugin', 'incremental')
SPEC_KEYS = ('databases', 'tables', 'exclude_tables', 'plugin', 'incremental', 'jobs', 'start_at',
             'protect_destination', 'migrate_roles', 'retry_timeout', 'maintenance_work_mem', 'replica_identity',
             'pg_bindir', 'max_retained_wal')


class TaskControlError(Exception):
    def __init__(self, message, **result):
        super().__init__(message)
        self.message = message
        self.result = result


def _role_failure(role, exc):
    return TaskControlError('%s: %s' % (role, exc.message), failure=exc.kind)


def first_stage(start_at):
    """The stage a new task is created in."""
    return 'scheduled' if start_at else 'schema'


def ensure_action(task, worker_running):
    """What state=present does with the task as it is (its row, or None): 'start' (no task, or a cancelled one),
    'none' (finished), 'reported' (its worker runs), 'refused' (failed because its slot is lost: a resume would lose
    the changes since the last sync) or 'resume' (stopped or failed: a new worker carries on)."""
    if not task or task['stage'] == 'cancelled':
        return 'start'
    if task['stage'] == 'finished':
        return 'none'
    if worker_running:
        return 'reported'
    if task['stage'] == 'failed' and (task['error'] or {}).get('type') in ('SlotInvalidated', 'WalRetentionExceeded'):
        return 'refused'
    return 'resume'


def open_store(destination, create):
    """The task store on the destination (None when there is no state database and not `create`); a login that may
    not use it fails with a TaskControlError that says so."""
    import psycopg
    store = TaskStore(destination, 'pgdts-module')
    try:
        if not store.open(create=create):
            return None
        if store.has_tables():
            store.check_access()
    except ConnectionFailure as exc:
        store.close()
        raise _role_failure('destination', exc)
    except psycopg.Error as exc:
        store.close()
        detail = error_text(exc)
        raise TaskControlError('destination: user "%s" cannot use the task state (database %s, schema %s): %s; '
                               'connect as the role that runs the migrations, or a superuser' % (
                                   destination.user, task_state.STATE_DATABASE, task_state.STATE_SCHEMA,
                                   detail), failure='state_access')
    return store


def source_lsn(source):
    """The source's current flush LSN (int), None when the source cannot be reached."""
    try:
        with connect(source, application_name='pgdts-module') as conn:
            return lsn_to_int(query_value(conn, 'SELECT pg_catalog.pg_current_wal_flush_lsn()::text'))
    except ConnectionFailure:
        return None


def source_slots(source, slot_names):
    """decoding.slot_states() of the task's slots on the source ({} when the source cannot be reached)."""
    from ansible_collections.pgdts.migration.plugins.module_utils import decoding
    try:
        with connect(source, application_name='pgdts-module') as conn:
            return decoding.slot_states(conn, slot_names)
    except ConnectionFailure:
        return {}
    except Exception:  # pylint: disable=broad-except  # e.g. no right to read them: the report goes without them
        return {}


def slots_by_database(store, name, source):
    """{dbname: slot state} of the task's databases, read on `source` (None: not read)."""
    if source is None:
        return None
    slots = {d['object_name']: d['dbname'] for d in store.databases(name)}
    if not slots:
        return None
    return {slots[slot]: state for slot, state in source_slots(source, list(slots)).items()}


class TaskControl:
    def __init__(self, params, source, destination, check_mode=False):
        # An invalid name is reported by the first action (ensure, cancel, finish), which modules call inside their
        # error handling, so that it becomes a clean failure and not an exception.
        self.name_error = None
        try:
            self.name = task_state.validate_task_name(params['name'])
        except task_state.TaskNameError as exc:
            self.name_error = str(exc)
            self.name = 'invalid'
        self.params = params
        self.source = source
        self.destination = destination
        self.check_mode = check_mode
        self.paths = worker.TaskPaths(params.get('worker_dir') or '~/.pgdts', self.name)

    def check_name(self):
        if self.name_error:
            raise TaskControlError(self.name_error)

    # -- helpers -------------------------------------------------------------------------------------------------
    def open_store(self, create):
        return open_store(self.destination, create)

    def source_lsn(self):
        return source_lsn(self.source)

    def report(self, store, include_tables=True):
        lsn = self.source_lsn()
        databases = [d['dbname'] for d in store.databases(self.name)]
        return task_state.task_report(store, self.name, {d: lsn for d in databases} if lsn else None, include_tables,
                                      slots=slots_by_database(store, self.name, self.source) if lsn else None)

    def result(self, store, changed, action, msg, **extra):
        task = self.report(store) if store is not None else None
        out = {'changed': changed, 'action': action, 'msg': msg, 'task': task}
        if task is not None:
            out['diff'] = {'before': {'stage': extra.pop('before_stage', task['stage'])},
                           'after': {'stage': extra.pop('after_stage', task['stage'])}}
        out['worker_log'] = self.paths.log
        out.update(extra)
        return out

    def spec(self, databases, start_at):
        spec = {k: self.params.get(k) for k in SPEC_KEYS}
        spec.update(name=self.name, databases=databases, start_at=start_at,
                    source=self.source.public_dict(), destination=self.destination.public_dict())
        return spec

    def check_identity(self, task):
        spec = task['spec'] or {}
        clashes = [k for k in IDENTITY_KEYS if self.params.get(k) is not None and spec.get(k) != self.params.get(k)]
        if self.params.get('databases') and sorted(self.params['databases']) != sorted(spec.get('databases') or []):
            clashes.append('databases')
        src = spec.get('source') or {}
        if (src.get('host'), src.get('port')) != (self.source.host, self.source.port):
            clashes.append('source')
        if clashes:
            raise TaskControlError('task name "%s" is already used by another task (different %s); choose another name '
                                   'or cancel that task first' % (self.name, ', '.join(clashes)))

    def start_at(self):
        value = self.params.get('start_at')
        if not value:
            return None
        try:
            return task_state.parse_time(value).isoformat()
        except ValueError:
            raise TaskControlError('start_at %r is not an ISO 8601 time such as 2026-12-01T02:00:00+01:00' % value)

    def resolve_databases(self):
        if self.params.get('databases'):
            return list(self.params['databases'])
        try:
            with connect(self.source, application_name='pgdts-module') as conn:
                return [d for d in catalog.list_databases(conn) if d != task_state.STATE_DATABASE]
        except ConnectionFailure as exc:
            raise _role_failure('source', exc)

    def spawn(self, store):
        worker.prepare_task_dir(self.paths, store.get_task(self.name)['spec'], self.source, self.destination)
        try:
            return worker.spawn_worker(self.paths, self.params.get('worker_python'))
        except RuntimeError as exc:
            raise TaskControlError('could not start the worker: %s' % exc, task=self.report(store))

    # -- present -------------------------------------------------------------------------------------------------
    def ensure(self):
        self.check_name()
        start_at = self.start_at()
        if self.params.get('jobs') is not None and self.params['jobs'] < 1:
            raise TaskControlError('jobs must be at least 1')
        try:
            self.params['maintenance_work_mem'] = schema.memory_setting(self.params.get('maintenance_work_mem'))
        except ValueError as exc:
            raise TaskControlError('maintenance_work_mem: %s' % exc) from None
        try:
            self.params['max_retained_wal'] = schema.size_kilobytes(self.params.get('max_retained_wal'))[1]
        except ValueError as exc:
            raise TaskControlError('max_retained_wal: %s' % exc) from None
        if self.params.get('pg_bindir') and not os.path.isfile(os.path.join(self.params['pg_bindir'], 'pg_dump')):
            raise TaskControlError('pg_bindir: no pg_dump in %s (give the bin directory of the PostgreSQL client '
                                   'programs, e.g. /usr/lib/postgresql/18/bin)' % self.params['pg_bindir'])
        store = self.open_store(create=False)
        task = store.get_task(self.name) if store else None
        if task and task['stage'] != 'cancelled':
            self.check_identity(task)
            pid = worker.worker_pid(self.paths) if task['stage'] != 'finished' else None
            action = ensure_action(task, bool(pid))
            if action == 'none':
                return self.result(store, False, 'none', 'task %s is finished' % self.name)
            if action == 'reported':
                return self.result(store, False, 'reported', 'task %s is running (worker pid %s)' % (self.name, pid))
            before = task['stage']
            if action == 'refused':
                # the changes since the last sync are gone from the source: a resume would silently lose them
                raise TaskControlError('task %s cannot be resumed: %s' % (self.name, task['error'].get('message')),
                                       task=self.report(store))
            if self.check_mode:
                return self.result(store, True, 'resumed', 'task %s would be resumed' % self.name)
            if store.get_task(self.name)['stage'] == 'failed':
                store.add_log(self.name, 'resume requested after failure')
            self.spawn(store)
            return self.result(store, True, 'resumed', 'task %s resumed from stage %s' % (self.name, before),
                               before_stage=before)
        databases = self.resolve_databases()
        from ansible_collections.pgdts.migration.plugins.module_utils import checks as checks_mod
        items = checks_mod.run_checks(self.source, self.destination, self.name, databases=databases,
                                      tables=self.params.get('tables'), exclude_tables=self.params.get('exclude_tables'),
                                      plugin=self.params.get('plugin', 'pgoutput'),
                                      incremental=self.params.get('incremental', True), resuming=False,
                                      migrate_roles=self.params.get('migrate_roles', False),
                                      replica_identity=self.params.get('replica_identity') or 'fail',
                                      pg_bindir=self.params.get('pg_bindir'),
                                      max_retained_wal=self.params.get('max_retained_wal'))
        failed = [c for c in items if c['status'] == 'failed']
        if failed:
            raise TaskControlError('task %s not started: %d check(s) failed: %s' % (
                self.name, len(failed), '; '.join('%s: %s' % (c['id'], c['message']) for c in failed)),
                checks=items, summary=checks_mod.summarize(items))
        stage = first_stage(start_at)
        if self.check_mode:
            return {'changed': True, 'action': 'started', 'msg': 'task %s would be started' % self.name,
                    'checks': items, 'task': None, 'diff': {'before': {'stage': None}, 'after': {'stage': stage}}}
        store = store or self.open_store(create=True)
        if not store.is_open() or not store.has_tables():
            store.close()
            store = self.open_store(create=True)
        if task and task['stage'] == 'cancelled':
            store.delete_task(self.name)
        import psycopg
        try:
            store.create_task(self.name, self.spec(databases, start_at), stage)
        except psycopg.errors.UniqueViolation:
            return self.result(store, False, 'reported', 'task %s was started by another run' % self.name)
        self.spawn(store)
        return self.result(store, True, 'started', 'task %s started' % self.name, checks=items,
                           before_stage=None)

    # -- wait ----------------------------------------------------------------------------------------------------
    def wait(self, result, target, timeout, sleep):
        store = self.open_store(create=False)
        deadline = time.time() + timeout
        goal_lsn = None
        while True:
            report = self.report(store)
            stage = report['stage']
            if stage == 'failed':
                raise TaskControlError('task %s failed at stage %s: %s' % (
                    self.name, (report['error'] or {}).get('stage'), (report['error'] or {}).get('message')),
                    task=report, changed=result.get('changed', False))
            if stage in ('cancelled',):
                raise TaskControlError('task %s was cancelled' % self.name, task=report)
            if target == 'copied' and stage in ('sync', 'finishing', 'finished'):
                break
            if target == 'synced':
                if stage == 'finished':
                    break
                if stage == 'sync':
                    if goal_lsn is None:
                        goal_lsn = self.source_lsn()
                    synced = [lsn_to_int(d['synced_lsn']) for d in report['databases']]
                    if goal_lsn is not None and synced and all(s is not None and s >= goal_lsn for s in synced):
                        break
            if time.time() >= deadline:
                raise TaskControlError('timed out after %d s waiting for task %s to be %s (stage %s); the task keeps '
                                       'running' % (timeout, self.name, target, stage), task=report,
                                       changed=result.get('changed', False))
            time.sleep(max(0.2, sleep))
        result = dict(result)
        result['task'] = report
        return result

    # -- absent --------------------------------------------------------------------------------------------------
    def cancel(self):
        self.check_name()
        store = self.open_store(create=False)
        task = store.get_task(self.name) if store else None
        if task is None:
            return {'changed': False, 'action': 'none', 'msg': 'task %s does not exist' % self.name, 'task': None}
        if task['stage'] in ('cancelled', 'finished'):
            return self.result(store, False, 'none', 'task %s is already %s' % (self.name, task['stage']))
        databases = store.databases(self.name)
        tables = {}
        for row in store.tables(self.name):
            tables.setdefault(row['database'], []).append((row['schema'], row['table']))
        names = [d['dbname'] for d in databases] or list((task['spec'] or {}).get('databases') or [])
        if self.check_mode:
            extra = {}
            if self.params.get('drop_destination', False):
                # what the cancel would remove from the destination, in the result and the diff
                try:
                    extra['would_drop'] = worker.destination_objects_to_drop(
                        self.destination, names, [d['dbname'] for d in databases if d['created_database']], tables,
                        {d['dbname']: store.existing_objects(self.name, d['dbname']) for d in databases
                         if not d['created_database']})
                except ConnectionFailure as exc:
                    raise TaskControlError('cannot read the destination to show what the cancel would drop: %s'
                                           % exc.message)
            result = self.result(store, True, 'cancelled', 'task %s would be cancelled' % self.name,
                                 after_stage='cancelled', **extra)
            if 'would_drop' in extra and 'diff' in result:
                result['diff']['before']['destination_objects'] = sorted(
                    '%(database)s: %(type)s %(name)s' % o for o in extra['would_drop'])
                result['diff']['after']['destination_objects'] = []
            return result
        before = task['stage']
        store.set_request(self.name, 'cancel')
        worker.stop_worker(self.paths, timeout=60)
        lifted = []
        try:
            # a fence that an interrupted pg_dts_finish left on the source: each database gets its own setting back
            from ansible_collections.pgdts.migration.plugins.module_utils.cutover import restore_source_fence
            lifted = restore_source_fence(self.source, store, self.name, 'pgdts-cancel')
            done = worker.release_task_objects(
                self.source, self.destination, self.name, names,
                drop_destination=self.params.get('drop_destination', False),
                created_databases=[d['dbname'] for d in databases if d['created_database']], tables=tables,
                existing_objects={d['dbname']: store.existing_objects(self.name, d['dbname']) for d in databases
                                  if not d['created_database']},
                destination_settings=store.destination_settings(self.name))
        except ConnectionFailure as exc:
            raise TaskControlError('cancel of %s stopped the worker but could not clean up: %s' % (self.name, exc.message))
        done += ['source %s: write fence of an interrupted finish lifted' % d for d in lifted]
        store.finish_task(self.name, 'cancelled', {'cancelled_at': datetime.datetime.now(datetime.timezone.utc),
                                                   'cleanup': done, 'stage_before': before})
        worker.remove_task_dir(self.paths)
        return self.result(store, True, 'cancelled', 'task %s cancelled at stage %s' % (self.name, before),
                           before_stage=before)


def task_source(task, paths):
    """The task's own source server with its login, from the worker directory's credential file, when that file is
    there and belongs to this source (the task row holds no password); else None."""
    public = (task.get('spec') or {}).get('source') or {}
    try:
        with open(paths.credentials) as handle:
            stored = json.load(handle).get('source') or {}
    except (OSError, ValueError):
        return None
    if not public or any(stored.get(k) != public.get(k) for k in ('host', 'port', 'user', 'dbname')):
        return None
    return ServerSpec.from_dict(stored)


def task_infos(source, destination, name, worker_dir, include_tables):
    """Reports of one task (name) or of all tasks on the destination; never changes anything.

    `source` None: each task's lag is measured against its own source (task_source()), or, without its login,
    against the source position the worker last recorded; never against whatever server libpq reaches by default."""
    store = open_store(destination, create=False)
    if store is None or not store.has_tables():
        return []
    try:
        if name:
            names = [name] if store.get_task(name) else []
        else:
            names = store.task_names()
        lsn = source_lsn(source) if source is not None else None
        out = []
        for task_name in names:
            own = source
            if source is None:
                own = task_source(store.get_task(task_name), worker.TaskPaths(worker_dir, task_name))
                lsn = source_lsn(own) if own is not None else None
            databases = [d['dbname'] for d in store.databases(task_name)]
            report = task_state.task_report(store, task_name, {d: lsn for d in databases} if lsn else None,
                                            include_tables,
                                            slots=slots_by_database(store, task_name, own) if lsn else None)
            report['worker_alive'] = bool(worker.worker_pid(worker.TaskPaths(worker_dir, task_name)))
            out.append(report)
        return out
    finally:
        store.close()
