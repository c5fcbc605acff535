# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The worker: the detached process that drives one task through its stages (started by worker_process).

One worker per task, guaranteed by an exclusive flock on `<worker_dir>/<task>/lock` held for the worker's life.
The worker runs the engine code copied next to it (so it outlives the module's temporary files), reads its
passwords from the 0600 `credentials.json`, and keeps its durable state on the destination (task_state).
"""

from __future__ import annotations

import collections
import concurrent.futures
import datetime
import fcntl
import json
import os
import re
import socket
import sys
import threading
import time
import traceback

from ansible_collections.pgdts.migration.plugins.module_utils import catalog, schema, sync_scope as scope, task_state
from ansible_collections.pgdts.migration.plugins.module_utils.connection import (
    LOST_KINDS, WRITER_OPTIONS, ConnectionFailure, ServerSpec, connect, error_text, query_value, retry_outages, sql,
)
from ansible_collections.pgdts.migration.plugins.module_utils.copy import ParallelCopy, plan_items, table_pages
from ansible_collections.pgdts.migration.plugins.module_utils.lsn import int_to_lsn, lsn_to_int
from ansible_collections.pgdts.migration.plugins.module_utils.task_state import TaskStore
from ansible_collections.pgdts.migration.plugins.module_utils.worker_process import (
    TaskPaths, database_settings, release_task_objects, remove_credentials,
)
HEARTBEAT_SECONDS = 5
# Reading through the SQL functions: advance the slot at most this often (an advance decodes from restart_lsn again).
SQL_ADVANCE_SECONDS = 2.0
WATCH_SECONDS = 0.25
# how often the WAL-retention guard reads the task's slots on the source (one short query)
WAL_GUARD_SECONDS = 5.0
# applied transactions remembered for the fence's proof (a finish may ask about them a moment after they were applied)
FENCE_RECENT = 1000
FENCE_REPORTED = 200


# ---------------------------------------------------------------------------------------------------------------
# Outages: a server that went away for a moment (restart, failover, network) is waited for, within retry_timeout

# The source refuses the sync a replication connection (role, pg_hba.conf, max_wal_senders): read through SQL instead.
_REPLICATION_REFUSED = re.compile(r'must be superuser or replication role|permission denied to start WAL sender|'
                                  r'REPLICATION attribute|exceeds max_wal_senders|'
                                  r'(no pg_hba\.conf entry for|pg_hba\.conf rejects) replication connection',
                                  re.I)


class SlotInvalidated(RuntimeError):
    """The task's replication slot is gone or was invalidated: the changes since the last sync cannot be read again,
    so the task cannot continue (resuming would lose data). The message says what to do."""


class WalRetentionExceeded(RuntimeError):
    """The task's slot held back more WAL than max_retained_wal: the worker dropped the task's slots to protect the
    source, so the task cannot continue (like SlotInvalidated, a resume is refused). The message says what to do."""


SLOT_LOST_TODO = ('The task cannot continue: cancel it (pg_dts_migrate state=absent with drop_destination=true) and '
                  'start it again')


def invalidated_message(slot, dbname, state, keep):
    """What a user reads when the source invalidated the task's slot (state: a decoding.slot_states() entry)."""
    if state['invalidation'] == 'lost' or (state['invalidation'] or '').startswith('wal_removed'):
        return ('replication slot "%s" of database "%s" was invalidated by the source: it held back more WAL than '
                'max_slot_wal_keep_size (%s) allows, and the source removed the WAL the destination still needed '
                '(slot confirmed up to %s). The changes since then are lost for this task. %s; raise '
                'max_slot_wal_keep_size on the source (-1 keeps all the WAL a slot needs; then set max_retained_wal '
                'on the task so that a stopped destination cannot fill the source\'s disk) or keep the destination '
                'reachable so that the slot is not invalidated again.'
                % (slot, dbname, keep, state['confirmed_flush_lsn'], SLOT_LOST_TODO))
    return ('replication slot "%s" of database "%s" was invalidated by the source (reason: %s), so the changes since '
            'the last sync (slot confirmed up to %s) cannot be read. %s.'
            % (slot, dbname, state['invalidation'], state['confirmed_flush_lsn'], SLOT_LOST_TODO))


# ---------------------------------------------------------------------------------------------------------------
# The worker process

class Cancelled(Exception):
    pass


class Stopped(Exception):
    pass


def resume_stage(task):
    """The stage a failed task is resumed at: the stage it failed in."""
    return (task['error'] or {}).get('stage') or 'schema'


def worker_steps(stage, incremental=True):
    """What a worker does, in order, for a task in `stage`: ('stage', name) records the task's stage, ('step', name)
    runs that TaskRunner step (each resumes where an interrupted run stopped)."""
    steps = []
    if stage == 'scheduled':
        steps += [('step', 'wait_for_start'), ('stage', 'schema')]
        stage = 'schema'
    steps.append(('step', 'set_started'))
    if stage in ('schema', 'copy'):
        steps += [('step', 'initial_load'), ('stage', 'index')]
        stage = 'index'
    if stage == 'index':
        steps.append(('step', 'build_indexes'))
        if not incremental:
            return steps + [('step', 'end_without_sync')]
        steps.append(('stage', 'sync'))
        stage = 'sync'
    if stage in ('sync', 'finishing'):
        steps.append(('step', 'sync'))
    return steps


class TaskRunner:
    def __init__(self, paths, spec, source, destination):
        self.paths = paths
        self.spec = spec
        self.name = spec['name']
        self.source = source
        self.destination = destination
        self.store = TaskStore(destination, 'pgdts-worker')
        self.stop_event = threading.Event()
        self.request = None
        self.request_lsn = None
        self.log_handle = open(paths.log, 'a', buffering=1)
        self._watch = None
        self.analyzed_during_copy = {}     # dbname -> tables analyzed right after their copy (this worker's run)
        self.guard_error = None            # set by the WAL-retention guard: the task fails with it
        self.live_slots = set()            # databases whose slot the task reads from (an invalidation ends the task)
        self._guard = None

    # -- logging -------------------------------------------------------------------------------------------------
    def log(self, message):
        stamp = datetime.datetime.now().isoformat(sep=' ', timespec='milliseconds')
        self.log_handle.write('%s [%d] %s\n' % (stamp, os.getpid(), message))

    def event(self, message):
        """A line for the log file and the task's durable log (shown by status)."""
        self.log(message)
        try:
            self.store.add_log(self.name, message)
        except Exception:  # pylint: disable=broad-except
            pass

    # -- request watcher -----------------------------------------------------------------------------------------
    def _watcher(self):
        beat = 0.0
        store = TaskStore(self.destination, 'pgdts-worker-watch')
        while not self.stop_event.is_set():
            try:
                if not store.is_open():
                    store.open(create=False)
                task = store.get_task(self.name)
                if task is None:
                    self.request = 'cancel'
                else:
                    self.request = task['request']
                    self.request_lsn = lsn_to_int(task['request_lsn'])
                if self.request in ('cancel', 'stop') and not self.stop_event.is_set():
                    self.log('%s requested' % self.request)
                    self.stop_event.set()
                now = time.time()
                if now - beat >= HEARTBEAT_SECONDS:
                    store.heartbeat(self.name, socket.gethostname(), os.getpid())
                    beat = now
            except Exception as exc:  # pylint: disable=broad-except
                self.log('state database unavailable: %s' % error_text(exc))
                store.close()
            self.stop_event.wait(WATCH_SECONDS)
        store.close()

    # -- WAL-retention guard -------------------------------------------------------------------------------------
    def _wal_guard(self):
        """Every WAL_GUARD_SECONDS during copy and sync: fail the task at once when the source invalidated one of its
        slots, and, with max_retained_wal, drop the task's slots when one holds back more WAL than that (the source's
        health comes first)."""
        limit = self.spec.get('max_retained_wal')
        limit_bytes = schema.size_kilobytes(limit)[0] * 1024 if limit else None
        while not self.stop_event.wait(WAL_GUARD_SECONDS):
            try:
                problem = self.check_wal(limit, limit_bytes)
            except Exception as exc:  # pylint: disable=broad-except
                self.log('WAL guard: could not read the slots on the source: %s' % error_text(exc))
                continue
            if problem is not None:
                self.guard_error = problem
                self.event('failed: %s' % problem)
                self.stop_event.set()
                return

    def check_wal(self, limit, limit_bytes):
        """One look at the task's slots on the source: the error the task fails with, or None."""
        from ansible_collections.pgdts.migration.plugins.module_utils import decoding
        slots = {task_state.object_name(self.name, d): d for d in self.spec['databases']}
        with connect(self.source, application_name='pgdts-worker-guard') as conn:
            states = decoding.slot_states(conn, slots)
            for slot, state in sorted(states.items()):
                if state['invalidation'] and slots[slot] in self.live_slots:
                    keep = query_value(conn, "SELECT pg_catalog.current_setting('max_slot_wal_keep_size', true)")
                    return SlotInvalidated(invalidated_message(slot, slots[slot], state, keep))
            over = sorted((state['retained_bytes'], slot) for slot, state in states.items()
                          if limit_bytes and (state['retained_bytes'] or 0) > limit_bytes)
            if not over:
                return None
            retained, slot = over[-1]
            retained_text = conn.execute('SELECT pg_catalog.pg_size_pretty(%s::bigint)', (retained,)).fetchone()[0]
            dropped = [name for name in sorted(states) if decoding.drop_slot(conn, name, missing_ok=True)]
        return WalRetentionExceeded(
            'replication slot "%s" of database "%s" held back %s of WAL on the source, more than max_retained_wal '
            '(%s) allows. To protect the source the worker dropped the task\'s replication slot(s) %s; the source '
            'frees that WAL at its next checkpoint. The changes since the last sync can no longer be read, so the task '
            'needs a new copy: cancel it (pg_dts_migrate state=absent with drop_destination=true) and start it again, '
            'with the destination and the worker running (or a larger max_retained_wal).'
            % (slot, slots[slot], retained_text, limit, ', '.join(dropped) or '(none left)'))

    def check_stop(self):
        if self.guard_error is not None:
            raise self.guard_error
        if self.stop_event.is_set():
            if self.request == 'cancel':
                raise Cancelled()
            raise Stopped()

    # -- main ----------------------------------------------------------------------------------------------------
    def run(self):
        self.store.open(create=True)
        task = self.store.get_task(self.name)
        if task is None:
            self.log('task %s has no state on the destination; nothing to do' % self.name)
            return 0
        stage = task['stage']
        if stage in task_state.END_STAGES:
            self.log('task %s is %s; nothing to do' % (self.name, stage))
            return 0
        if stage == 'failed':
            stage = resume_stage(task)
            self.store.set_stage(self.name, stage, clear_error=True)
            self.event('resuming after failure at stage %s' % stage)
        self._watch = threading.Thread(target=self._watcher, name='watch', daemon=True)
        self._watch.start()
        self.live_slots.update(d['dbname'] for d in self.store.databases(self.name) if d['schema_done'])
        self._guard = threading.Thread(target=self._wal_guard, name='wal-guard', daemon=True)
        self._guard.start()
        try:
            for kind, what in worker_steps(stage, self.spec.get('incremental', True)):
                if kind == 'stage':
                    stage = what
                    self.retrying(self.store.set_stage, self.name, stage)
                elif what == 'wait_for_start':
                    self.wait_for_start()
                elif what == 'set_started':
                    self.retrying(self.store.set_started, self.name)
                else:
                    self.retrying(getattr(self, what))
        except Cancelled:
            self.event('cancel requested: worker stopped')
        except Stopped:
            self.event('stop requested: worker stopped')
        except Exception as exc:  # pylint: disable=broad-except
            self.log('FAILED: %s\n%s' % (error_text(exc), traceback.format_exc()))
            if self.guard_error is not None:
                # the guard dropped the slots (or found one invalidated): whatever failed after that, this is why
                exc = self.guard_error
            # the guard's reason must reach the task's state: wait for the destination (it may be the one that is down)
            deadline = time.time() + (float(self.spec.get('retry_timeout') or 600) if self.guard_error else 0)
            attempt = 0
            while True:
                try:
                    self.reopen_store(force=attempt > 0)   # its connection may have died with the destination
                    current = self.store.get_task(self.name) or {}
                    error = error_record(exc, current.get('stage') or stage)
                    self.store.set_stage(self.name, 'failed', error=error)
                    self.store.add_log(self.name, 'failed: %s' % error['message'])
                    break
                except Exception as record_exc:  # pylint: disable=broad-except
                    self.log('could not record the failure in the state database: %s' % error_text(record_exc))
                    attempt += 1
                    if attempt >= 3 and time.time() > deadline:
                        break
                    time.sleep(1.0 if attempt < 3 else 5.0)
            return 1
        finally:
            self.stop_event.set()
            self.store.close()
        return 0

    def reopen_store(self, force=False):
        """Connect the state store again when its connection was lost (the destination restarted)."""
        if force or not self.store.is_open():
            self.store.close()
            self.store.open(create=False)

    def retrying(self, step, *args):
        """Run one step; when a server went away (restart, failover, network) wait and run it again, for up to
        retry_timeout seconds of consecutive failures. Every step resumes where an interrupted attempt stopped (copied
        tables are kept, schema and index steps restart cleanly), exactly as after a worker restart."""
        def attempt():
            self.reopen_store()
            return step(*args)

        what = getattr(step, '__name__', 'step')
        return retry_outages(attempt, float(self.spec.get('retry_timeout') or 600),
                             lambda message: self.log('%s: %s' % (what, message)), self.stop_event.wait, '',
                             before=self.check_stop, passthrough=(Cancelled, Stopped))

    def wait_for_start(self):
        start_at = task_state.parse_time(self.spec.get('start_at'))
        if start_at is None:
            return
        self.event('scheduled: waiting until %s' % start_at.isoformat())
        while True:
            self.check_stop()
            if datetime.datetime.now(datetime.timezone.utc) >= start_at:
                return
            self.stop_event.wait(1.0)

    # -- schema and copy -----------------------------------------------------------------------------------------
    def selected_tables(self, conn, dbname):
        tables = catalog.load_tables(conn, dbname)
        chosen = catalog.select_tables(tables, self.spec.get('tables'), self.spec.get('exclude_tables'))
        return tables, chosen

    def initial_load(self):
        for dbname in self.spec['databases']:
            self.check_stop()
            self.store.ensure_database_row(self.name, dbname, task_state.object_name(self.name, dbname))
        self.store.set_stage(self.name, 'schema')
        if self.spec.get('migrate_roles') and not self.store.roles_done(self.name):
            # once per task, before any schema (its owners and grants name these roles); all or nothing
            from ansible_collections.pgdts.migration.plugins.module_utils import roles
            result = roles.migrate_roles(self.source, self.destination)
            self.store.set_roles_done(self.name)
            self.event(roles.describe(result))
        for dbname in self.spec['databases']:
            row = [d for d in self.store.databases(self.name) if d['dbname'] == dbname][0]
            if not row['schema_done']:
                self.load_database(dbname, row)
            else:
                self.resume_copy(dbname)

    def client_bindir(self):
        """Directory of the pg_dump / pg_restore / psql of this task (schema.client_bindir), found once."""
        if getattr(self, '_client_bindir', None) is None:
            with connect(self.source, application_name='pgdts-worker') as src, \
                    connect(self.destination, application_name='pgdts-worker') as dst:
                self._client_bindir = schema.client_bindir(self.spec.get('pg_bindir'), src.info.server_version,
                                                           dst.info.server_version)
        return self._client_bindir

    def load_database(self, dbname, row):
        """Fresh start for one database: slot with exported snapshot, schema, copy of every table under it."""
        from ansible_collections.pgdts.migration.plugins.module_utils import decoding
        name = task_state.object_name(self.name, dbname)
        plugin = self.spec.get('plugin', 'pgoutput')
        retry = row['slot_lsn'] is not None or row['created_database']
        with connect(self.destination, application_name='pgdts-worker') as admin, \
                connect(self.source, application_name='pgdts-worker') as src_admin:
            props = schema.database_properties(src_admin, dbname)
            dest_version = admin.info.server_version
            created = schema.ensure_database(admin, dbname, props)
            if created:
                self.store.update_database(self.name, dbname, created_database=True)
                self.event('created database "%s" on the destination' % dbname)
        if not created and not row['created_database'] and self.store.existing_objects(self.name, dbname) is None:
            # the database was there before: note its own objects once, before anything of the task is restored into
            # it, so that a cancel with drop_destination removes only what the task created
            with connect(self.destination, dbname, application_name='pgdts-worker') as dst:
                self.store.update_database(self.name, dbname, existing_objects=schema.own_objects(dst))
        with connect(self.source, dbname, application_name='pgdts-worker') as src:
            all_tables, chosen = self.selected_tables(src, dbname)
            decoding.drop_slot(src, name, missing_ok=True)
            decoding.drop_publication(src, name, missing_ok=True)
            chosen = self.identity_checked(src, dbname, chosen)
            if plugin == 'pgoutput':
                decoding.create_publication(src, name, [(t.schema, t.name) for t in scope.publication_tables(chosen)])
            major = max(src.info.server_version, dest_version) // 10000     # pg_dump/pg_restore at least this
        self.store.register_tables(self.name, dbname, chosen)
        self.store.reset_unfinished_tables(self.name, dbname)
        repl = connect(self.source, dbname, application_name='pgdts-snapshot', replication='database')
        try:
            lsn, snapshot = decoding.create_slot_with_snapshot(repl, name, plugin)
            self.live_slots.add(dbname)
            self.store.update_database(self.name, dbname, slot_lsn=lsn)
            self.event('database "%s": slot %s created at %s' % (dbname, name, int_to_lsn(lsn)))
            dump_path = schema.temp_dump_path(self.paths.work, task_state.database_tag(dbname))
            whole = not self.spec.get('tables') and not self.spec.get('exclude_tables')
            schema.dump_schema(self.source, dbname, snapshot, schema.dump_arguments(all_tables, chosen, whole), dump_path,
                               keep_owners=self.spec.get('migrate_roles', False), server_major=major,
                               bindir=self.client_bindir())
            self.log('database "%s": schema dumped' % dbname)
            with open(dump_path, 'rb') as handle:
                self.store.update_database(self.name, dbname, schema_dump=handle.read())
            try:
                if retry:
                    retry = self.drop_partial_schema(dbname)
                if not whole:
                    # sequences the selected tables use from schemas the dump does not hold come first
                    selected = [(t.schema, t.name) for t in chosen]
                    schema.create_sequences(self.source, self.destination, dbname,
                                            schema.missing_sequences(self.source, self.destination, dbname, selected,
                                                                     dump_path),
                                            snapshot=snapshot, keep_owners=self.spec.get('migrate_roles', False),
                                            server_major=major)
                schema.restore_section(self.destination, dbname, dump_path, 'pre-data', clean=retry,
                                       keep_owners=self.spec.get('migrate_roles', False),
                                       bindir=self.client_bindir())
                self.store.update_database(self.name, dbname, schema_done=True)
                self.event('database "%s": schema (pre-data) restored' % dbname)
                self.store.set_stage(self.name, 'copy')
                self.copy_tables(dbname, chosen, snapshot, lsn, exporting=repl, dump_path=dump_path, fresh=True)
                self.copy_large_objects(dbname, snapshot)
            finally:
                os.unlink(dump_path)
        finally:
            repl.close()

    def drop_partial_schema(self, dbname):
        """Before the pre-data restore runs again: in a database that existed before the task, drop what an earlier
        attempt of the task restored, and nothing else (pg_restore --clean would also drop the destination's own objects
        that have the name of a restored one). That is what was not there before the task and is an object of the
        source database (an object the user renamed to make room is neither). Returns whether the restore may still
        --clean: only in a database the task created, which holds nothing but the task's objects."""
        existing = self.store.existing_objects(self.name, dbname)
        if existing is None:
            return True
        with connect(self.source, dbname, application_name='pgdts-worker') as src:
            source_objects = {json.dumps(address) for address in schema.own_objects(src)}
        with connect(self.destination, dbname, application_name='pgdts-worker', options=WRITER_OPTIONS) as dst:
            dropped = schema.drop_objects(dst, [address for address in schema.created_objects(dst, existing)
                                                if json.dumps(address) in source_objects])
        if dropped:
            self.event('database "%s": dropped %d object(s) an earlier schema restore of the task left: %s' % (
                dbname, len(dropped), ', '.join('%s %s' % item for item in dropped[:10])))
        return False

    def identity_checked(self, src, dbname, chosen):
        """Before the publication exists: the tables without a usable replica identity get what the replica_identity
        option says (a publication of their updates would make the source's UPDATE and DELETE on them fail). Without
        incremental sync nothing reads the publication: such tables are copied and left out of it (publication_tables)."""
        if not self.spec.get('incremental', True):
            return chosen
        kept, set_full, left_out = scope.apply_identity_option(src, chosen, self.spec.get('replica_identity') or 'fail')
        if set_full:
            self.event('database "%s": REPLICA IDENTITY FULL set on the source for %s (replica_identity: full)'
                       % (dbname, ', '.join(scope.display(t) for t in set_full)))
        if left_out:
            self.event('database "%s": left out of the task (no usable replica identity, replica_identity: exclude; '
                       'not copied, synced or compared): %s' % (dbname, ', '.join(scope.display(t) for t in left_out)))
        return kept

    def resume_copy(self, dbname):
        """After a crash during the copy: keep copied tables, copy the others under a new snapshot."""
        from ansible_collections.pgdts.migration.plugins.module_utils import decoding
        rows = self.store.tables(self.name, dbname)
        kept = [r for r in rows if r['state'] == 'copied']
        pending_names = {(r['schema'], r['table']) for r in rows if r['state'] != 'copied'}
        self.store.set_stage(self.name, 'copy')
        if kept:
            self.event('database "%s": keeping %d copied table(s): %s' % (
                dbname, len(kept), ', '.join('%s.%s' % (r['schema'], r['table']) for r in kept)))
        if not pending_names:
            # every table is copied; large objects may not be (a restart during their copy): complete them now
            self.copy_large_objects(dbname, None)
            return
        self.store.reset_unfinished_tables(self.name, dbname)
        with connect(self.source, dbname, application_name='pgdts-worker') as src:
            _all, chosen = self.selected_tables(src, dbname)
        pending = [t for t in chosen if (t.schema, t.name) in pending_names]
        self.event('database "%s": copying %d table(s) again under a new snapshot: %s' % (
            dbname, len(pending), ', '.join(t.qualified for t in pending)))
        repl = connect(self.source, dbname, application_name='pgdts-snapshot', replication='database')
        try:
            temp_name = task_state.temporary_slot_name(self.name, dbname, int(time.time()) % 100000)
            lsn, snapshot = decoding.create_slot_with_snapshot(repl, temp_name, self.spec.get('plugin', 'pgoutput'),
                                                               temporary=True)
            dump = self.store.schema_dump(self.name, dbname)
            dump_path = None
            if dump:
                dump_path = schema.temp_dump_path(self.paths.work, task_state.database_tag(dbname))
                with open(dump_path, 'wb') as handle:
                    handle.write(dump)
            try:
                self.copy_tables(dbname, pending, snapshot, lsn, exporting=repl, dump_path=dump_path)
                self.copy_large_objects(dbname, snapshot)
            finally:
                if dump_path:
                    os.unlink(dump_path)
        finally:
            repl.close()

    def copy_tables(self, dbname, tables, snapshot, copy_lsn, exporting, dump_path=None, fresh=False):
        """COPY the tables; meanwhile each copied table gets its own indexes and constraints (from the dump) and is
        analyzed, so that the post-data step at the end has little left. fresh: the schema restore of this attempt
        has just created every table (empty)."""
        from ansible_collections.pgdts.migration.plugins.module_utils import copy as copy_mod
        jobs = int(self.spec.get('jobs', 4))
        keep_owners = self.spec.get('migrate_roles', False)
        plan = {}
        with connect(self.source, dbname, application_name='pgdts-worker') as src:
            pages = table_pages(src, tables)
            if dump_path:
                with connect(self.destination, dbname, application_name='pgdts-worker') as dst:
                    entries = schema.toc_entries(dump_path, self.client_bindir())
                    plan, _built = schema.table_post_data(src, dst, entries)
        items = plan_items(tables, pages, jobs)
        store = self.store
        copied = copy_mod.CopiedBatch(lambda batch: store.tables_copied(self.name, dbname, batch, copy_lsn))
        builder = None
        if dump_path:
            builder = copy_mod.IndexBuilder(
                plan, lambda lines, started: schema.restore_entries(
                    self.destination, dbname, dump_path, lines, jobs=jobs, keep_owners=keep_owners, started=started,
                    maintenance_work_mem=self.spec.get('maintenance_work_mem'), bindir=self.client_bindir()),
                lambda: connect(self.destination, dbname, application_name='pgdts-analyze', options=WRITER_OPTIONS),
                stop_event=self.stop_event, log=self.log)

        def started(table):
            # a small table is copied before anyone could see it in the status; only large ones are shown copying
            if (table.size_bytes or 0) >= copy_mod.STREAM_READER_BYTES:
                store.table_started(self.name, dbname, table)

        def progress(table, delta):
            store.table_progress(self.name, dbname, table, delta)

        def done(table, rows, nbytes):
            copied.add(table, rows, nbytes)
            self.log('copied %s.%s: %d rows, %d bytes' % (dbname, table.qualified, rows, nbytes))
            if builder is not None:
                builder.table_done(table)

        try:
            psql = schema.client_program('psql', self.client_bindir())
        except schema.SchemaError:
            psql = None
        copier = ParallelCopy(self.source, self.destination, dbname, snapshot, jobs, started, progress, done,
                              stop_event=self.stop_event, log=self.log, psql=psql, fresh=fresh)
        try:
            copier.run(items)
        except BaseException:
            if builder is not None:
                builder.close(abort=True)
            try:
                copied.flush()      # what was copied stays copied
            except Exception as exc:  # pylint: disable=broad-except
                self.log('could not record copied tables: %s' % error_text(exc))
            self.check_stop()
            raise
        try:
            copied.flush()
        except BaseException:
            if builder is not None:
                builder.close(abort=True)
            raise
        if builder is not None:
            builder.close()
            self.analyzed_during_copy.setdefault(dbname, set()).update(builder.analyzed)
            self.log('database "%s": %d index/constraint entries built (%d batches) and %d table(s) analyzed during '
                     'the copy' % (dbname, builder.built, builder.batches, len(builder.analyzed)))
        self.check_stop()
        # partitioned parents have no rows of their own; mark them copied
        store.tables_copied(self.name, dbname, [(t, 0, 0) for t in tables if not t.has_storage], copy_lsn)
        self.event('database "%s": %d table(s) copied' % (dbname, len(tables)))

    # -- indexes, sequences, analyze -----------------------------------------------------------------------------
    def build_indexes(self):
        jobs = int(self.spec.get('jobs', 4))
        keep_owners = self.spec.get('migrate_roles', False)
        index_memory = self.spec.get('maintenance_work_mem')
        bindir = self.client_bindir()
        for row in self.store.databases(self.name):
            self.check_stop()
            dbname = row['dbname']
            if row['index_done']:
                continue
            dump = self.store.schema_dump(self.name, dbname)
            dump_path = schema.temp_dump_path(self.paths.work, task_state.database_tag(dbname))
            with open(dump_path, 'wb') as handle:
                handle.write(dump)
            try:
                # indexes and constraints built during the copy (or by an interrupted earlier attempt) are left out
                with connect(self.source, dbname, application_name='pgdts-worker') as src, \
                        connect(self.destination, dbname, application_name='pgdts-worker') as dst:
                    _plan, built = schema.table_post_data(src, dst, schema.toc_entries(dump_path, bindir))
                # nothing left (every post-data object was built during the copy): no pg_restore session at all
                if any(e.line not in built for e in schema.toc_entries(dump_path, bindir, section='post-data')):
                    try:
                        schema.restore_section(self.destination, dbname, dump_path, 'post-data', jobs=jobs,
                                               keep_owners=keep_owners, skip=built, maintenance_work_mem=index_memory,
                                               bindir=bindir)
                    except schema.SchemaError:
                        # A retry after a crash may find part of the post-data already built: restore with --clean.
                        schema.restore_section(self.destination, dbname, dump_path, 'post-data', jobs=jobs,
                                               clean=True, keep_owners=keep_owners, maintenance_work_mem=index_memory,
                                               bindir=bindir)
            finally:
                os.unlink(dump_path)
            self.log('database "%s": post-data restored' % dbname)
            self.refresh_materialized_views(dbname)
            scope = self.scope_tables(dbname)
            schema.sync_sequences(self.source, self.destination, dbname, scope, keep_owners=keep_owners)
            self.log('database "%s": sequences set' % dbname)
            self._analyze_rest(dbname, jobs)
            self.store.update_database(self.name, dbname, index_done=True)
            self.event('database "%s": indexes and constraints built, sequences set, analyzed' % dbname)

    def scope_tables(self, dbname):
        """None for a whole-database task, else the task's [(schema, table)] of `dbname`."""
        if catalog.whole_database(self.spec):
            return None
        return [(r['schema'], r['table']) for r in self.store.tables(self.name, dbname)]

    def refresh_materialized_views(self, dbname):
        """Populate the materialized views of the task's scope from the copied data, in dependency order."""
        scope = self.scope_tables(dbname)
        schemas = None if scope is None else sorted({s for s, _t in scope})
        done = schema.refresh_materialized_views(self.source, self.destination, dbname, schemas)
        if done:
            self.event('database "%s": %d materialized view(s) refreshed' % (dbname, len(done)))

    def copy_large_objects(self, dbname, snapshot):
        """A whole-database task copies the database's large objects (oids, data, and with migrate_roles owners and
        privileges) under the copy's snapshot; finish brings later changes over under the fence."""
        if not catalog.whole_database(self.spec):
            return
        from ansible_collections.pgdts.migration.plugins.module_utils import large_objects
        created = [d for d in self.store.databases(self.name) if d['dbname'] == dbname][0]['created_database']
        summary = large_objects.sync_large_objects(self.source, self.destination, dbname, snapshot=snapshot,
                                                   keep_owners=self.spec.get('migrate_roles', False),
                                                   drop_extra=bool(created), stop_event=self.stop_event)
        if summary['source']:
            self.event('database "%s": %s' % (dbname, large_objects.describe(summary)))
        self.check_stop()

    def _analyze_rest(self, dbname, jobs):
        """ANALYZE what the copy did not: everything (one session) when nothing was analyzed during the copy, else
        the other tables of the task (partitions, partitioned parents, tables whose indexes were built only now),
        by up to `jobs` sessions."""
        analyzed = self.analyzed_during_copy.get(dbname)
        if not analyzed:
            schema.analyze_database(self.destination, dbname)
            return
        rest = [(r['schema'], r['table']) for r in self.store.tables(self.name, dbname)
                if '%s.%s' % (r['schema'], r['table']) not in analyzed]
        if not rest:
            return
        work = list(rest)
        lock = threading.Lock()

        def analyze():
            with connect(self.destination, dbname, application_name='pgdts-analyze', options=WRITER_OPTIONS) as conn:
                while True:
                    with lock:
                        if not work:
                            return
                        name = work.pop()
                    conn.execute(sql.SQL('ANALYZE {}').format(sql.Identifier(*name)))

        errors = []

        def guarded():
            try:
                analyze()
            except Exception as exc:  # pylint: disable=broad-except
                errors.append(exc)

        run_threads([threading.Thread(target=guarded, name='analyze-%d' % n, daemon=True)
                     for n in range(max(1, min(jobs, len(rest))))], errors)

    def end_without_sync(self):
        databases = [r['dbname'] for r in self.store.databases(self.name)]
        release_task_objects(self.source, self.destination, self.name, databases, log=self.log)
        summary = {'copied_tables': len(self.store.tables(self.name)), 'incremental': False}
        self.store.finish_task(self.name, 'finished', summary)
        remove_credentials(self.paths)
        self.event('full copy finished; no incremental sync requested: slots and publications dropped')

    # -- incremental sync ----------------------------------------------------------------------------------------
    def sync(self):
        databases = [r['dbname'] for r in self.store.databases(self.name)]
        if self.spec.get('protect_destination', True):
            with connect(self.destination, application_name='pgdts-worker') as admin:
                own = database_settings(admin, databases)
                for dbname in databases:
                    # its own setting first, given back exactly when the task ends (release_task_objects)
                    self.store.save_destination_setting(self.name, dbname, own.get(dbname))
                    admin.execute(sql.SQL('ALTER DATABASE {} SET default_transaction_read_only = on').format(
                        sql.Identifier(dbname)))
        errors = []
        threads = [threading.Thread(target=self._sync_guard, args=(dbname, errors), name='sync-%s' % dbname,
                                    daemon=True) for dbname in databases]
        self.event('incremental sync running for %d database(s)' % len(databases))
        run_threads(threads, errors)
        self.check_stop()

    def _sync_guard(self, dbname, errors):
        try:
            SyncLoop(self, dbname).run()
        except (Cancelled, Stopped):
            self.log('database "%s": sync stopped' % dbname)
        except Exception as exc:  # pylint: disable=broad-except
            errors.append(exc)
            self.stop_event.set()


class SyncLoop:
    """Decode from the slot, apply to the destination, confirm what the destination committed; retry on outages."""

    def __init__(self, runner, dbname):
        self.runner = runner
        self.dbname = dbname
        self.name = task_state.object_name(runner.name, dbname)
        self.batch_changes = int(runner.spec.get('batch_changes', 20000))
        self.poll_seconds = float(runner.spec.get('poll_interval', 0.2))
        self.max_retry_seconds = float(runner.spec.get('retry_timeout', 600))
        self.scope = None           # scope.Scope of this database, set by each session
        self.scope_checked = 0.0
        self.ignored = set()        # (schema, table) of changes found out of scope since the last catalog check
        self.partitioned = False    # the task has a partitioned table (its new partitions are synced)
        # the fence's proof: the last applied transactions that changed the scope, and those already reported as
        # committed after the fence of a running finish
        self.recent = collections.deque(maxlen=FENCE_RECENT)
        self.reported = set()
        self.last_change = None

    def table_metas(self, conn, known=None):
        """The apply metadata of the task's tables (`known`: the (schema, table) pairs it registered) that the sync
        carries: not partitioned parents (no rows), not unlogged tables (no WAL; finish copies them again)."""
        from ansible_collections.pgdts.migration.plugins.module_utils import apply
        _all, chosen = self.runner.selected_tables(conn, self.dbname)
        metas = {}
        self.partitioned = any(t.relkind == 'p' for t in chosen if known is None or (t.schema, t.name) in known)
        for table in chosen:
            if not table.has_storage or table.relpersistence == 'u':
                continue
            if known is not None and (table.schema, table.name) not in known:
                continue      # in scope now, but not part of the task (the scope watch decides about it)
            metas[(table.schema, table.name)] = apply.TableMeta(
                table.schema, table.name, [(c.name, c.type_name, bool(c.generated)) for c in table.columns],
                list(table.key_columns), table.key_kind)
        return metas

    def run(self):
        retry_outages(self.session, self.max_retry_seconds, self.runner.log, self.runner.stop_event.wait,
                      'database "%s": ' % self.dbname, before=self.runner.check_stop, on_error=self.check_slot,
                      passthrough=(Cancelled, Stopped))

    def check_slot(self, exc):
        """After a sync error: raise SlotInvalidated (from exc) when the task's slot was dropped or invalidated."""
        from ansible_collections.pgdts.migration.plugins.module_utils import decoding
        try:
            with connect(self.runner.source, self.dbname, application_name='pgdts-worker') as conn:
                # wal_status exists from 13 on; a 12 slot is never invalidated (no max_slot_wal_keep_size)
                state = decoding.slot_states(conn, [self.name]).get(self.name)
                keep = query_value(conn, "SELECT pg_catalog.current_setting('max_slot_wal_keep_size', true)")
        except Exception:  # pylint: disable=broad-except
            return       # cannot tell: the original error stands
        if self.runner.guard_error is not None:
            raise self.runner.guard_error from exc
        if state is None:
            raise SlotInvalidated('replication slot "%s" of database "%s" no longer exists on the source (it was '
                                  'dropped outside pgdts), so the changes since the last sync cannot be read. %s.'
                                  % (self.name, self.dbname, SLOT_LOST_TODO)) from exc
        if state['invalidation']:
            raise SlotInvalidated(invalidated_message(self.name, self.dbname, state, keep)) from exc

    def session(self):
        with TaskStore(self.runner.destination, 'pgdts-sync-state') as store:
            store.open(create=False)
            self._session(store)

    def _session(self, store):
        from ansible_collections.pgdts.migration.plugins.module_utils import apply
        runner = self.runner
        copy_lsn = {(r['schema'], r['table']): lsn_to_int(r['copy_lsn']) or 0 for r in store.tables(runner.name, self.dbname)}
        with connect(runner.source, self.dbname, application_name='pgdts-decode', options=WRITER_OPTIONS) as src, \
                connect(runner.destination, self.dbname, autocommit=False, application_name='pgdts-apply',
                        options=WRITER_OPTIONS) as dst:
            metas = self.table_metas(src, set(copy_lsn))
            self.scope = scope.Scope(self.dbname, runner.spec.get('tables'), runner.spec.get('exclude_tables'),
                                     set(copy_lsn), runner.spec.get('replica_identity'), runner.spec.get('plugin'))
            self.scope_checked = 0.0
            applier = apply.Applier(dst, self.name, metas, copy_lsn)
            applier.setup()
            runner.log('database "%s": applying from origin position %s' % (self.dbname, int_to_lsn(applier.applied_lsn())))
            reader = self.open_reader(src, metas)
            try:
                self._loop(store, src, reader, applier)
            finally:
                reader.close()

    def open_reader(self, src, metas):
        """The replication stream of the task's slot, or the SQL peek functions when the source refuses this session a
        replication connection (the REPLICATION attribute, or every max_wal_senders slot taken)."""
        from ansible_collections.pgdts.migration.plugins.module_utils import decoding
        plugin = self.runner.spec.get('plugin', 'pgoutput')
        try:
            repl = connect(self.runner.source, self.dbname, application_name='pgdts-stream', replication='database')
        except ConnectionFailure as exc:
            if exc.kind in LOST_KINDS and not _REPLICATION_REFUSED.search(str(exc)):
                raise
            self.runner.log('database "%s": no replication connection (%s); reading the slot through the SQL '
                            'functions for this session' % (self.dbname, error_text(exc)))
        else:
            try:
                return decoding.StreamReader(src, repl, self.name, plugin, publication=self.name,
                                             tables=self.reader_tables(plugin, metas),
                                             queue_changes=max(4 * self.batch_changes, 50000))
            except BaseException:
                repl.close()
                raise
        return decoding.SlotReader(src, self.name, plugin, publication=self.name, tables=self.reader_tables(plugin, metas),
                                   advance_interval=SQL_ADVANCE_SECONDS)

    def reader_tables(self, plugin, metas):
        """The reader's table filter: None (no filter) where changes of tables the task does not know yet must reach
        the sync (see watch_changes): with pgoutput the publication already limits them to the task's tables and the
        partitions of its partitioned tables; with wal2json, for a whole-database task (new tables stop it) and for a
        task with a partitioned table (new partitions are synced)."""
        if plugin == 'pgoutput':
            return None
        if not self.runner.spec.get('tables') or self.partitioned:
            return None
        return list(metas)

    def _loop(self, store, src, reader, applier):
        """Read, apply, confirm. With the replication stream, batch N+1 is read and its statements are built while
        batch N is applied (one apply thread, so the destination still sees one batch after the other)."""
        runner = self.runner
        streaming = getattr(reader, 'streaming', False)
        previous = [d for d in store.databases(runner.name) if d['dbname'] == self.dbname][0]
        progress = {'transactions': previous['applied_transactions'], 'changes': previous['applied_changes'],
                    'last_commit_time': None, 'window_start': time.time(), 'window_txns': 0}
        if self.last_change is None:
            self.last_change = store.fence_marks(runner.name).get(self.dbname, (None, []))[0] or 0

        def apply_batch(transactions, plan):
            result = applier.apply(transactions, plan)
            if result['transactions']:
                # The apply session commits asynchronously: flush the destination's WAL up to the origin position
                # before the source slot may move past what it applied (else a destination crash loses it).
                applier.applied_lsn()
            return result

        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='pgdts-apply') if streaming else None
        pending = None      # (future, transactions, complete, end) of the batch being applied
        try:
            while True:
                runner.check_stop()
                end = lsn_to_int(query_value(src, 'SELECT pg_catalog.pg_current_wal_flush_lsn()::text'))
                transactions, complete = reader.read(upto_lsn=end, max_changes=self.batch_changes)
                unknown = self.unknown_tables(transactions, applier) if transactions else None
                if unknown and pending is not None:      # settle the batch being applied before the tables change
                    self._settle(store, reader, progress, pending[0].result(), *pending[1:])
                    pending = None
                self.watch_scope(src, store, applier, transactions, unknown)
                plan = applier.plan(transactions) if executor is not None and transactions else None
                if pending is not None:
                    future, done_txns, done_complete, done_end = pending
                    pending = None
                    self._settle(store, reader, progress, future.result(), done_txns, done_complete, done_end)
                if not transactions:
                    self._settle(store, reader, progress, None, transactions, complete, end)
                    if complete and not streaming:
                        runner.stop_event.wait(self.poll_seconds)
                elif executor is None:
                    self._settle(store, reader, progress, apply_batch(transactions, None), transactions, complete, end)
                else:
                    pending = (executor.submit(apply_batch, transactions, plan), transactions, complete, end)
        finally:
            if executor is not None:
                executor.shutdown(wait=True)

    SCOPE_SECONDS = 5.0

    @staticmethod
    def unknown_tables(transactions, applier):
        """(schema, table) of the changes in `transactions` whose table the applier does not know."""
        tables = applier.tables
        found = set()
        for txn in transactions:
            for change in txn.changes:
                if change.kind == 'T':
                    found.update(t for t in change.truncate if t not in tables)
                elif (change.schema, change.table) not in tables:
                    found.add((change.schema, change.table))
        return found

    def watch_scope(self, src, store, applier, transactions, unknown):
        """Tables that appeared in the task's scope on the source: every SCOPE_SECONDS, and at once when a change of a
        table the task does not know arrives. A new partition of a partitioned table of the task is adopted (synced
        into the destination's partition of the same name); any other new table in scope raises scope.ScopeError (the
        task stops, naming it: its rows would be lost). Changes of tables out of scope are dropped from the batch."""
        due = time.monotonic() - self.scope_checked >= self.SCOPE_SECONDS
        if due:
            self.ignored = set()     # read the catalog again for these too (a table may have been renamed into scope)
        if due or (unknown and not unknown <= self.ignored):
            adopt = self.scope.check(src, self.runner.destination)
            self.scope_checked = time.monotonic()
            if adopt:
                self.adopt(src, store, applier, adopt)
        if not unknown:
            return
        unknown = {key for key in unknown if key not in applier.tables}
        self.ignored |= unknown
        if not unknown:
            return
        # out of scope (not matching the task's patterns, left out by replica_identity: exclude, or dropped since)
        for txn in transactions:
            kept = []
            for change in txn.changes:
                if change.kind == 'T':
                    change.truncate = [t for t in change.truncate if t not in unknown]
                    if change.truncate:
                        kept.append(change)
                elif (change.schema, change.table) not in unknown:
                    kept.append(change)
            txn.changes = kept

    def adopt(self, src, store, applier, tables):
        """Make new partitions of the task's partitioned tables part of the task: registered (so that finish compares
        them), and applied from their first change on (they were never copied: copy LSN 0)."""
        from ansible_collections.pgdts.migration.plugins.module_utils import apply
        runner = self.runner
        store.register_tables(runner.name, self.dbname, tables)
        store.tables_copied(runner.name, self.dbname, [(t, 0, 0) for t in tables], 0)
        self.scope.adopted(tables)
        for table in tables:
            if table.has_storage and table.relpersistence != 'u':
                key = (table.schema, table.name)
                applier.tables[key] = apply.TableMeta.from_table(table)
                applier.copy_lsn[key] = 0
        applier._reload_catalog = True      # pylint: disable=protected-access  # read the new tables' columns
        runner.event('database "%s": partition(s) created or attached on the source during the sync, synced into the '
                     'same partition(s) of the destination: %s'
                     % (self.dbname, ', '.join(scope.display(t) for t in tables)))

    def _settle(self, store, reader, progress, result, transactions, complete, end):
        """After a batch was applied (or nothing was read): confirm it to the reader and record the progress."""
        if result is not None:
            progress['transactions'] += result['transactions']
            progress['changes'] += result['changes']
            progress['window_txns'] += result['transactions']
            if result.get('last_commit_time'):
                progress['last_commit_time'] = result['last_commit_time']
        if complete:
            confirmed = end
        elif transactions:
            confirmed = max(t.end_lsn or t.commit_lsn for t in transactions)
        else:
            confirmed = None
        if confirmed is not None:
            reader.confirm(confirmed)
        now = time.time()
        values = {'source_lsn': end}
        if confirmed is not None:
            values['synced_lsn'] = confirmed
        if progress['last_commit_time'] is not None:
            values['last_commit_time'] = progress['last_commit_time']
        if complete:
            values['caught_up_at'] = datetime.datetime.now(datetime.timezone.utc)
        if now - progress['window_start'] >= 2.0:
            values['tps'] = progress['window_txns'] / (now - progress['window_start'])
            progress['window_start'], progress['window_txns'] = now, 0
        if result is not None:
            values['applied_transactions'] = progress['transactions']
            values['applied_changes'] = progress['changes']
            changed = [t for t in transactions if t.changes and t.commit_lsn > self.last_change]
            if changed:
                self.last_change = changed[-1].commit_lsn
                values['last_change_lsn'] = self.last_change
                self.recent.extend(transaction_summary(t) for t in changed)
        # before the progress moves: a finish that sees the destination caught up then sees the leaks too
        self._report_fence_leaks(store)
        store.update_database(self.runner.name, self.dbname, **values)

    def _report_fence_leaks(self, store):
        """While a finish runs (request 'finish', request_lsn = its fence): record every applied transaction in scope
        that committed after the fence, so that finish can name it."""
        runner = self.runner
        fence = runner.request_lsn
        if runner.request != 'finish' or not fence or len(self.reported) >= FENCE_REPORTED:
            return
        leaks = [t for t in self.recent if t['lsn'] > fence and t['lsn'] not in self.reported]
        if not leaks:
            return
        self.reported.update(t['lsn'] for t in leaks)
        items = [dict((k, v) for k, v in t.items() if k != 'lsn') for t in leaks]
        store.add_fence_leaks(runner.name, self.dbname, items)
        self.runner.event('database "%s": %d transaction(s) committed on the source after the fence of finish (%s): '
                          'applied' % (self.dbname, len(leaks), int_to_lsn(fence)))


def transaction_summary(txn):
    """What the fence's proof tells of one applied source transaction."""
    tables = set()
    for change in txn.changes:
        if change.kind == 'T':
            tables.update('%s.%s' % t for t in change.truncate)
        else:
            tables.add('%s.%s' % (change.schema, change.table))
    return {'lsn': txn.commit_lsn, 'xid': txn.xid, 'commit_lsn': int_to_lsn(txn.commit_lsn),
            'commit_time': txn.commit_time.isoformat() if txn.commit_time else None, 'origin': txn.origin,
            'changes': len(txn.changes), 'tables': sorted(tables)[:20]}


def run_threads(threads, errors):
    """Start the threads, wait for all of them, then raise the first error they put into `errors`."""
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def error_record(exc, stage):
    record = {'stage': stage, 'message': str(exc).strip() or exc.__class__.__name__, 'type': exc.__class__.__name__}
    for attr in ('table', 'key', 'lsn', 'statement'):
        value = getattr(exc, attr, None)
        if value is not None:
            record[attr] = int_to_lsn(value) if attr == 'lsn' and isinstance(value, int) else value
    return json.loads(json.dumps(record, default=str))


def main(argv=None):
    argv = sys.argv if argv is None else argv
    task_dir = os.path.abspath(argv[1])
    with open(os.path.join(task_dir, 'task.json')) as handle:
        spec = json.load(handle)
    paths = TaskPaths(os.path.dirname(task_dir), spec['name'])
    lock_fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        sys.stderr.write('another worker holds the lock of task %s; exiting\n' % spec['name'])
        return 0
    with open(paths.pid, 'w') as handle:
        handle.write(str(os.getpid()))
    with open(paths.credentials) as handle:
        credentials = json.load(handle)
    source = ServerSpec.from_dict(credentials['source'])
    destination = ServerSpec.from_dict(credentials['destination'])
    runner = TaskRunner(paths, spec, source, destination)
    # `kill -USR1 <pid>` writes every thread's stack to the log: what is the worker doing right now?
    import faulthandler
    import signal
    faulthandler.register(signal.SIGUSR1, file=runner.log_handle, all_threads=True)
    runner.log('worker started for task %s' % spec['name'])
    code = runner.run()
    runner.log('worker exiting with code %d' % code)
    return code


if __name__ == '__main__':
    raise SystemExit(main())
