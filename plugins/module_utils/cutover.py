# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cutover of a task (pg_dts_finish): fence the source writers, wait until the destination caught up, sync
sequences, compare, then end the sync and release the task's objects."""

from __future__ import annotations

import time

from ansible_collections.pgdts.migration.plugins.module_utils import catalog, proof, schema, scope, task_state
from ansible_collections.pgdts.migration.plugins.module_utils import sync_scope as scope_mod
from ansible_collections.pgdts.migration.plugins.module_utils import apply as apply_mod, checks
from ansible_collections.pgdts.migration.plugins.module_utils import worker_process as worker
from ansible_collections.pgdts.migration.plugins.module_utils.connection import connect, query_value, sql
from ansible_collections.pgdts.migration.plugins.module_utils.task_control import TaskControlError
from ansible_collections.pgdts.migration.plugins.module_utils.task_state import lsn_int


def _fence_sql(dbname, on):
    if on:
        return sql.SQL('ALTER DATABASE {} SET default_transaction_read_only = on').format(sql.Identifier(dbname))
    return sql.SQL('ALTER DATABASE {} RESET default_transaction_read_only').format(sql.Identifier(dbname))


class Finisher:
    """The cutover of one task (used by pg_dts_finish)."""

    def __init__(self, control, params):
        self.control = control
        self.params = params
        self.name = control.name
        self.fenced = []
        self.scope_result = {}
        self.left_out = {}   # {dbname: [(schema, table)]} left out by replica_identity: exclude (not in the proof)

    def log(self, store, message):
        store.add_log(self.name, message)

    def fence(self, databases):
        with connect(self.control.source, application_name='pgdts-finish') as conn:
            for dbname in databases:
                conn.execute(_fence_sql(dbname, True))
                self.fenced.append(dbname)
            pids = [r[0] for r in conn.execute(
                "SELECT pid FROM pg_catalog.pg_stat_activity WHERE datname = ANY(%s) AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend' AND coalesce(application_name, '') NOT LIKE 'pgdts%%'",
                (databases,)).fetchall()]
            for pid in pids:
                conn.execute('SELECT pg_catalog.pg_terminate_backend(%s)', (pid,))
            deadline = time.time() + 10
            while pids and time.time() < deadline:
                left = conn.execute('SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE pid = ANY(%s)',
                                    (pids,)).fetchone()[0]
                if not left:
                    break
                time.sleep(0.05)
            return lsn_int(query_value(conn, 'SELECT pg_catalog.pg_current_wal_insert_lsn()::text')), len(pids)

    def check_fence_rights(self, store):
        """Fail before anything is fenced when the source login cannot fence (verify's source.fence_privilege)."""
        databases = [d['dbname'] for d in store.databases(self.name)]
        with connect(self.control.source, application_name='pgdts-finish') as conn:
            rights = conn.execute(checks.FENCE_RIGHTS).fetchone()
            user = conn.info.user
        problem = checks.fence_problems(rights, databases, user)
        if problem:
            raise TaskControlError('task %s not finished, nothing fenced: %s. %s' % (self.name, problem[0], problem[1]),
                                   task=self.control.report(store))

    def repair_wal2json_nulls(self, store, databases):
        """wal2json before 2.6 sends NaN and Infinity of numeric and float columns as null: under the fence, after the
        catch-up, such NULLs on the destination get the source's value (apply.repair_ambiguous_nulls)."""
        for dbname in databases:
            wanted = {(r['schema'], r['table']) for r in store.tables(self.name, dbname)}
            with connect(self.control.source, dbname, application_name='pgdts-finish') as conn:
                tables = [t for t in catalog.load_tables(conn, dbname) if (t.schema, t.name) in wanted and t.has_storage]
            corrected, _keyless = apply_mod.repair_ambiguous_nulls(self.control.source, self.control.destination,
                                                                   dbname, tables)
            for qualified, count in corrected:
                self.log(store, 'finish: %s.%s: %d row(s) with NaN or Infinity that wal2json had sent as NULL '
                                'corrected from the source' % (dbname, qualified, count))

    def lift_fence(self):
        if not self.fenced:
            return
        with connect(self.control.source, application_name='pgdts-finish') as conn:
            for dbname in self.fenced:
                conn.execute(_fence_sql(dbname, False))
        self.fenced = []

    def wait_applied(self, store, target, timeout):
        deadline = time.time() + timeout
        respawned = 0.0
        while True:
            rows = store.databases(self.name)
            task = store.get_task(self.name)
            if task['stage'] == 'failed':
                raise TaskControlError('task %s failed while catching up: %s' % (
                    self.name, (task['error'] or {}).get('message')), task=self.control.report(store))
            if all(lsn_int(r['synced_lsn']) is not None and lsn_int(r['synced_lsn']) >= target for r in rows):
                return
            if time.time() - respawned >= 5 and not worker.worker_pid(self.control.paths):
                # the worker died while we wait for it (killed, host trouble): start it again, it resumes the sync
                self.log(store, 'finish: the worker is gone; starting it again to catch up')
                respawned = time.time()
                self.control.spawn(store)
            if time.time() >= deadline:
                raise TaskControlError('timed out after %d s waiting for the destination to apply everything up to %s'
                                       % (timeout, task_state.lsn_text(target)), task=self.control.report(store))
            time.sleep(0.1)

    def check_scope(self, store, databases):
        """Under the fence, after the catch-up: read the source catalog for tables in the task's scope that the task
        does not carry (created during the sync; DDL is not replicated) and refuse to finish while one exists. New
        partitions of the task's partitioned tables that the destination has (same name, same parent) join the task,
        so that the comparison covers them. Lists the tables left out by replica_identity: exclude."""
        spec = store.get_task(self.name)['spec'] or {}
        problems, adopted, left_out = [], [], []
        for dbname in databases:
            known = {(r['schema'], r['table']) for r in store.tables(self.name, dbname)}
            watch = scope_mod.Scope(dbname, spec.get('tables'), spec.get('exclude_tables'), known,
                                    spec.get('replica_identity'))
            with connect(self.control.source, dbname, application_name='pgdts-finish') as conn:
                adopt, found = watch.classify(conn, self.control.destination)
                if spec.get('replica_identity') == 'exclude':
                    chosen = catalog.select_tables(catalog.load_tables(conn, dbname), spec.get('tables'),
                                                   spec.get('exclude_tables'))
                    gone = [t for t in chosen if scope_mod.lacks_identity(t) and (t.schema, t.name) not in known]
                    self.left_out[dbname] = [(t.schema, t.name) for t in gone]
                    left_out += ['%s.%s' % (dbname, scope_mod.display(t)) for t in gone]
            problems += ['database "%s": %s' % (dbname, p) for p in found]
            if adopt:
                store.register_tables(self.name, dbname, adopt)
                store.tables_copied(self.name, dbname, [(t, 0, 0) for t in adopt], 0)
                adopted += ['%s.%s' % (dbname, scope_mod.display(t)) for t in adopt]
        if problems:
            raise TaskControlError('task %s not finished: %s; the sync keeps running' % (self.name, '; '.join(problems)))
        if adopted:
            self.scope_result['adopted_partitions'] = adopted
        self.scope_result['left_out'] = left_out

    def recopy_unlogged(self, store, databases):
        """Under the fence, after the catch-up: copy the task's UNLOGGED tables again (their changes are not in the
        WAL, so the sync never saw them), before the comparison."""
        done = []
        for dbname in databases:
            known = {(r['schema'], r['table']) for r in store.tables(self.name, dbname)}
            with connect(self.control.source, dbname, application_name='pgdts-finish') as conn:
                tables = scope_mod.unlogged_tables(conn, dbname, known)
            for table, rows in scope_mod.recopy_unlogged(self.control.source, self.control.destination, dbname, tables):
                done.append({'database': dbname, 'schema': table.schema, 'table': table.name, 'rows': rows})
        if done:
            self.log(store, 'finish: unlogged table(s) copied again under the fence: %s' % ', '.join(
                '%s.%s.%s (%d rows)' % (d['database'], d['schema'], d['table'], d['rows']) for d in done))
        self.scope_result['unlogged_recopied'] = done

    def compare(self, store, databases):
        """The proof: everything in the task's scope, read from the source catalog now (under the fence), not from the
        tables the task registered; see proof.py."""
        spec = store.get_task(self.name)['spec'] or {}
        scopes, existing = [], {}
        for dbname in databases:
            with connect(self.control.source, dbname, application_name='pgdts-compare') as conn:
                scopes.append(scope.read_task_scope(conn, dbname, spec))
            scopes[-1].left_out = list(self.left_out.get(dbname, []))
            existing[dbname] = store.existing_objects(self.name, dbname)
        return proof.prove(self.control.source, self.control.destination, scopes,
                           mode=self.params.get('compare', 'checksum'), jobs=int(self.params.get('jobs') or 4),
                           existing=existing, compare_owners=bool(spec.get('migrate_roles')))

    def run(self):
        control = self.control
        control.check_name()
        store = control.open_store(create=False)
        task = store.get_task(self.name) if store else None
        if task is None:
            raise TaskControlError('task %s does not exist on the destination; nothing to finish' % self.name)
        if task['stage'] == 'finished':
            return control.result(store, False, 'none', 'task %s is already finished' % self.name,
                                  **(task['summary'] or {}).get('finish', {}))
        if task['stage'] not in ('sync', 'finishing'):
            detail = ''
            if task['stage'] == 'failed':
                detail = ': %s' % (task['error'] or {}).get('message')
            raise TaskControlError('task %s is at stage %s%s; finish needs a task in incremental sync' % (
                self.name, task['stage'], detail), task=control.report(store))
        if self.params.get('fence', 'read_only') == 'read_only':
            self.check_fence_rights(store)
        if control.check_mode:
            return control.result(store, True, 'finished', 'task %s would be finished' % self.name,
                                  after_stage='finished')
        if not store.try_finish_lock(self.name):
            raise TaskControlError('another pg_dts_finish is running for task %s (it holds the task\'s finish lock on '
                                   'the destination); wait for it to end, then run this again' % self.name,
                                   task=control.report(store))
        try:
            return self._run(store)
        finally:
            store.release_finish_lock(self.name)

    def _run(self, store):
        control = self.control
        if not worker.worker_pid(control.paths):
            control.spawn(store)
        databases = [d['dbname'] for d in store.databases(self.name)]
        fence = self.params.get('fence', 'read_only')
        started = time.time()
        phases = {}
        mark = [started]

        def phase(label):
            now = time.time()
            phases[label] = round(now - mark[0], 3)
            mark[0] = now

        terminated = 0
        try:
            if fence == 'read_only':
                target, terminated = self.fence(databases)
            else:
                target = control.source_lsn()
            phase('fence')
            store.set_stage(self.name, 'finishing')
            store.set_request(self.name, 'finish', target)
            self.log(store, 'finish: %s, waiting for the destination to apply up to %s' % (
                'source fenced read-only' if fence == 'read_only' else 'no fence', task_state.lsn_text(target)))
            self.wait_applied(store, target, int(self.params.get('wait_timeout') or 600))
            phase('catch_up')
            self.check_scope(store, databases)
            self.recopy_unlogged(store, databases)
            if (store.get_task(self.name)['spec'] or {}).get('plugin') == 'wal2json':
                self.repair_wal2json_nulls(store, databases)
            sequences = []
            if self.params.get('sync_sequences', True):
                for dbname in databases:
                    schemas = sorted({r['schema'] for r in store.tables(self.name, dbname)})
                    for item in schema.sync_sequences(control.source, control.destination, dbname, schemas):
                        item['database'] = dbname
                        sequences.append(item)
            phase('sequences')
            comparison, summary = ([], None)
            if self.params.get('compare', 'checksum') != 'none':
                comparison, summary = self.compare(store, databases)
            phase('compare')
            if summary and (summary.get('mismatch') or summary.get('error')):
                message = proof.failure_message(comparison, summary)
                if self.params.get('on_mismatch', 'fail') == 'fail':
                    raise TaskControlError('task %s not finished: %s; the sync keeps running' % (self.name, message),
                                           comparison=comparison, comparison_summary=summary)
                self.log(store, 'finish: %s (on_mismatch=warn)' % message)
        except TaskControlError as exc:
            self.lift_fence()
            store.set_request(self.name, None)
            store.set_stage(self.name, 'sync')
            exc.result.setdefault('task', control.report(store))
            raise
        except Exception:
            self.lift_fence()
            store.set_request(self.name, None)
            store.set_stage(self.name, 'sync')
            raise
        store.set_request(self.name, 'stop')
        # Everything up to the fence is applied and compared: a worker that is slow to notice is terminated.
        worker.stop_worker(control.paths, timeout=30, grace=1.0)
        phase('stop_worker')
        worker.release_task_objects(control.source, control.destination, self.name, databases)
        if not self.params.get('keep_source_fence', True):
            self.lift_fence()
        phase('cleanup')
        downtime = round(time.time() - started, 3) if fence == 'read_only' else None
        finish = {'final_lsn': task_state.lsn_text(target), 'sequences': sequences, 'comparison': comparison,
                  'comparison_summary': summary, 'downtime_seconds': downtime, 'terminated_sessions': terminated,
                  'source_fenced': bool(self.fenced), 'phase_seconds': phases}
        finish.update(self.scope_result)
        store.finish_task(self.name, 'finished', {'finish': finish})
        store.add_log(self.name, 'finished: sync ended, slots, publications and origins dropped')
        worker.remove_task_dir(control.paths)
        return control.result(store, True, 'finished', 'task %s finished%s' % (
            self.name, '; proof: %s' % summary['text'] if summary else ''), before_stage='sync', **finish)
