# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cutover of a task (pg_dts_finish): fence the source writers, wait until the destination caught up, sync
sequences, compare, then end the sync and release the task's objects."""

from __future__ import annotations

import datetime
import secrets
import signal
import time

from ansible_collections.pgdts.migration.plugins.module_utils import catalog, proof, schema, scope
from ansible_collections.pgdts.migration.plugins.module_utils import sync_scope as scope_mod
from ansible_collections.pgdts.migration.plugins.module_utils import apply as apply_mod, checks
from ansible_collections.pgdts.migration.plugins.module_utils import worker_process as worker
from ansible_collections.pgdts.migration.plugins.module_utils.connection import connect, query_value, sql
from ansible_collections.pgdts.migration.plugins.module_utils.lsn import int_to_lsn, lsn_to_int
from ansible_collections.pgdts.migration.plugins.module_utils.task_control import TaskControlError


# Backends of a fenced database that finish does not end: they do not write on their own (a walsender streams, the
# task's own among them; an autovacuum or parallel worker works for the server or for a session that is ended).
_NOT_TERMINATED = ('walsender', 'autovacuum worker', 'parallel worker')
_LOGICAL_WORKER = 'logical replication%'


class FenceInterrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP reached pg_dts_finish: unwind so that the fence is lifted on the way out."""


def _fence_sql(dbname, on, previous=None):
    """ALTER DATABASE that fences `dbname` (on), or gives it back its own setting from before the fence (`previous`:
    the value it had in pg_db_role_setting, None when it had none)."""
    if on:
        return sql.SQL('ALTER DATABASE {} SET default_transaction_read_only = on').format(sql.Identifier(dbname))
    return worker.read_only_sql(dbname, previous)


def restore_source_fence(source, store, task, application_name='pgdts-finish', log=None):
    """Give every database a fence of `task` recorded in the task state its own setting back (a failed or interrupted
    finish, a later finish, a cancel). Returns the databases restored."""
    import psycopg
    record = store.source_fence(task)
    if not record or record.get('kept'):
        return []
    restored = []
    with connect(source, application_name=application_name) as conn:
        for dbname, item in sorted((record.get('databases') or {}).items()):
            try:
                conn.execute(_fence_sql(dbname, False, (item or {}).get('previous')))
            except psycopg.errors.InvalidCatalogName:
                continue        # the database was dropped since
            restored.append(dbname)
    store.set_source_fence(task, None)
    if log and restored:
        log('source fence lifted: %s given back their own default_transaction_read_only' % ', '.join(restored))
    return restored


def _session(row):
    keys = ('pid', 'database', 'usename', 'application_name', 'client_addr', 'backend_type', 'backend_start')
    return dict(zip(keys, [str(v) if isinstance(v, datetime.datetime) else v for v in row[:7]]))


class Finisher:
    """The cutover of one task (used by pg_dts_finish)."""

    def __init__(self, control, params):
        self.control = control
        self.params = params
        self.name = control.name
        self.fenced = []
        self.scope_result = {}
        self.left_out = {}   # {dbname: [(schema, table)]} left out by replica_identity: exclude (not in the proof)
        self.moved = {}         # what the cutover carried besides rows: materialized views, large objects
        self.store = None
        # this run's own sessions carry this token; only they (by pid) are spared by the fence
        self.application_name = 'pgdts-finish-%s' % secrets.token_hex(6)
        self.own_pids = set()
        self.fence_lsn = None
        self.fenced_at = None
        self.watch_conn = None
        self.seen = {}              # (pid, backend_start) -> session seen in a fenced database after the fence
        self.ended = []             # sessions the fence ended

    def log(self, store, message):
        store.add_log(self.name, message)

    def _connect_source(self):
        conn = connect(self.control.source, application_name=self.application_name)
        self.own_pids.add(conn.info.backend_pid)
        return conn

    def _sessions(self, conn, databases):
        return conn.execute(
            'SELECT pid, datname, usename, application_name, client_addr::text, backend_type, backend_start, '
            'backend_xid::text FROM pg_catalog.pg_stat_activity WHERE datname = ANY(%s) AND pid <> ALL(%s) '
            'AND backend_type <> ALL(%s)', (list(databases), sorted(self.own_pids), list(_NOT_TERMINATED))).fetchall()

    def _terminate(self, conn, rows):
        import psycopg
        ended, refused = [], []
        for row in rows:
            session = _session(row)
            try:
                ok = conn.execute('SELECT pg_catalog.pg_terminate_backend(%s)', (row[0],)).fetchone()[0]
            except psycopg.Error as exc:
                session['error'] = str(exc).strip().splitlines()[0]
                refused.append(session)
                continue
            if ok:
                ended.append(session)
        self.ended.extend(ended)
        return ended, refused

    def fence(self, databases, store=None):
        """Fence the source databases: make them read-only for new transactions (each database's own setting is kept
        in the task state first, so that any later run can give it back), end every session connected to them but
        this run's own, wait until they are gone, and return (fence LSN, number of sessions ended)."""
        import psycopg
        store = store or self.store
        timeout = int(self.params.get('wait_timeout') or 600)
        with self._connect_source() as conn:
            current = worker.database_settings(conn, databases)
            missing = [d for d in databases if d not in current]
            if missing:
                raise TaskControlError('source database(s) %s no longer exist; cannot fence them' % ', '.join(missing))
            record = store.source_fence(self.name) or {}
            saved = dict(record.get('databases') or {}) if not record.get('kept') else {}
            for dbname in databases:
                # a fence left by an interrupted finish keeps the value from before it
                saved.setdefault(dbname, {'previous': current[dbname]})
            self.fenced_at = datetime.datetime.now(datetime.timezone.utc)
            store.set_source_fence(self.name, {'databases': saved, 'fenced_at': self.fenced_at.isoformat(),
                                               'by': self.application_name})
            for dbname in databases:
                self.fenced.append(dbname)
                try:
                    conn.execute(_fence_sql(dbname, True))
                except psycopg.errors.InsufficientPrivilege as exc:
                    self.fenced.pop()
                    raise TaskControlError('cannot fence source database %s: %s; finish needs a login that owns the '
                                           'migrated databases (or a superuser), or fence=none' % (
                                               dbname, str(exc).strip().splitlines()[0])) from None
            ended, refused = self._terminate(conn, self._sessions(conn, databases))
            if refused:
                raise TaskControlError('cannot fence the source: %d session(s) could not be ended (%s); finish needs '
                                       'a login that may end them (a superuser, or a member of pg_signal_backend for '
                                       'sessions of roles that are not superusers)' % (len(refused), '; '.join(
                                           '%s pid %s of %s (%s)' % (s['backend_type'], s['pid'], s['usename'],
                                                                     s['error']) for s in refused)),
                                       fenced_sessions=refused)
            pids = [s['pid'] for s in ended]
            deadline = time.time() + timeout
            while pids:
                left = [r[0] for r in conn.execute('SELECT pid FROM pg_catalog.pg_stat_activity WHERE pid = ANY(%s)',
                                                   (pids,)).fetchall()]
                if not left:
                    break
                if time.time() >= deadline:
                    raise TaskControlError('cannot fence the source: %d ended session(s) are still there after %d s '
                                           '(wait_timeout): %s' % (len(left), timeout, ', '.join(
                                               '%s pid %s of %s' % (s['backend_type'], s['pid'], s['usename'])
                                               for s in ended if s['pid'] in left)), fenced_sessions=ended)
                time.sleep(0.05)
            self.fence_lsn = lsn_to_int(query_value(conn, 'SELECT pg_catalog.pg_current_wal_insert_lsn()::text'))
            return self.fence_lsn, len(ended)

    def check_fence_rights(self, store):
        """Fail before anything is fenced when the source login cannot fence (verify's source.fence_privilege)."""
        databases = [d['dbname'] for d in store.databases(self.name)]
        with connect(self.control.source, application_name='pgdts-finish') as conn:
            rights = checks.fence_rights(conn)
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

    def watch_fence(self):
        """Note who is connected to a fenced database after the fence (to name a writer that gets through) and end
        logical replication workers that came back."""
        if not self.fenced or self.fence_lsn is None:
            return
        try:
            if self.watch_conn is None or self.watch_conn.closed:
                self.watch_conn = self._connect_source()
            rows = self._sessions(self.watch_conn, self.fenced)
        except Exception:  # pylint: disable=broad-except
            self.watch_conn = None      # the proof does not depend on this: it only helps to name a writer
            return
        again = []
        for row in rows:
            entry = self.seen.setdefault((row[0], str(row[6])), dict(_session(row), xids=[]))
            if row[7] and row[7] not in entry['xids']:
                entry['xids'].append(row[7])
            if row[5] and row[5].startswith('logical replication') and not entry.get('ended'):
                entry['ended'] = True
                again.append(row)
        if again:
            try:
                self._terminate(self.watch_conn, again)
            except Exception:  # pylint: disable=broad-except
                pass

    def settle(self, store, seconds):
        """Keep watching the fenced databases for `seconds` after the catch-up (a writer that gets through commits
        in that time), then catch up again to the source's position."""
        deadline = time.time() + seconds
        while time.time() < deadline:
            self.watch_fence()
            time.sleep(0.1)
        with self._connect_source() as conn:
            target = lsn_to_int(query_value(conn, 'SELECT pg_catalog.pg_current_wal_insert_lsn()::text'))
        self.wait_applied(store, target, int(self.params.get('wait_timeout') or 600))

    def fence_leaks(self, store):
        """The fence's proof: the transactions in scope that committed on the source after the fence and reached the
        destination through the sync, per database, with who may have written them. [] when the fence held."""
        marks = store.fence_marks(self.name)
        leaks = []
        for dbname in self.fenced:
            last, items = marks.get(dbname, (None, []))
            if not items and not (last and last > self.fence_lsn):
                continue
            xids = {str(t.get('xid')) for t in items if t.get('xid') is not None}
            sessions = [s for s in self.seen.values() if s['database'] == dbname]
            subscriptions = self._subscriptions(items)
            matched = [s for s in sessions if xids & set(s['xids'])]
            # who else may have written, most likely first: the apply workers when the transactions came from a
            # subscription, sessions seen holding a transaction id, sessions that do not look like the task's worker
            writers = (matched or
                       (subscriptions and [s for s in sessions if (s['backend_type'] or '').startswith(
                           'logical replication')]) or
                       [s for s in sessions if s['xids']] or
                       [s for s in sessions if s['application_name'] not in ('pgdts-decode', 'pgdts-stream')] or
                       sessions)
            for entry in writers:
                entry['certain'] = bool(matched)
            leaks.append({'database': dbname, 'transactions': items[:20], 'transaction_count': len(items),
                          'last_change_lsn': int_to_lsn(last), 'writers': writers,
                          'subscriptions': subscriptions})
        return leaks

    def _subscriptions(self, items):
        oids = sorted({int(t['origin'][3:]) for t in items if (t.get('origin') or '').startswith('pg_')
                       and t['origin'][3:].isdigit()})
        if not oids:
            return []
        try:
            with self._connect_source() as conn:
                return [r[0] for r in conn.execute('SELECT subname FROM pg_catalog.pg_subscription WHERE oid = ANY(%s) '
                                                   'ORDER BY 1', (oids,)).fetchall()]
        except Exception:  # pylint: disable=broad-except
            return ['origin pg_%d' % o for o in oids]

    @staticmethod
    def describe_leaks(leaks):
        parts = []
        for leak in leaks:
            tables = sorted({t for item in leak['transactions'] for t in item.get('tables', ())})
            who = '; '.join('user %s, application "%s"%s, %s pid %s' % (
                w['usename'], w['application_name'] or '', ' from %s' % w['client_addr'] if w['client_addr'] else '',
                w['backend_type'], w['pid']) for w in leak['writers'][:5]) or 'no session seen'
            if leak['subscriptions']:
                who = 'subscription %s; %s' % (', '.join(leak['subscriptions']), who)
            parts.append('database %s: %s transaction(s)%s committed after the fence (%s)' % (
                leak['database'], leak['transaction_count'] or 'some',
                ' on %s' % ', '.join(tables[:10]) if tables else '', who))
        return '; '.join(parts)

    def lift_fence(self, store=None):
        """Give the fenced databases back their own setting (on every failure path, and after a cutover with
        keep_source_fence=false)."""
        store = store or self.store
        if self.watch_conn is not None:
            self.watch_conn.close()
            self.watch_conn = None
        if store is None:
            return
        restore_source_fence(self.control.source, store, self.name, self.application_name,
                             log=lambda message: self.log(store, 'finish: %s' % message))
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
            if all(lsn_to_int(r['synced_lsn']) is not None and lsn_to_int(r['synced_lsn']) >= target for r in rows):
                return
            self.watch_fence()
            if time.time() - respawned >= 5 and not worker.worker_pid(self.control.paths):
                # the worker died while we wait for it (killed, host trouble): start it again, it resumes the sync
                self.log(store, 'finish: the worker is gone; starting it again to catch up')
                respawned = time.time()
                self.control.spawn(store)
            if time.time() >= deadline:
                raise TaskControlError('timed out after %d s waiting for the destination to apply everything up to %s'
                                       % (timeout, int_to_lsn(target)), task=self.control.report(store))
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
                                    spec.get('replica_identity'), spec.get('plugin'))
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

    def scope_tables(self, store, dbname):
        """None for a whole-database task, else the task's [(schema, table)] of `dbname` (catalog.sequences_in_scope)."""
        if catalog.whole_database(store.get_task(self.name)['spec'] or {}):
            return None
        return [(r['schema'], r['table']) for r in store.tables(self.name, dbname)]

    def refresh_materialized_views(self, store, databases):
        """After the catch-up: REFRESH the materialized views of the scope on the destination, in dependency order,
        so that they hold what the caught-up data gives."""
        refreshed = []
        for dbname in databases:
            selected = self.scope_tables(store, dbname)
            schemas = None if selected is None else sorted({s for s, _t in selected})
            for item in schema.refresh_materialized_views(self.control.source, self.control.destination, dbname,
                                                          schemas):
                item['database'] = dbname
                refreshed.append(item)
        if refreshed:
            self.log(store, 'finish: %d materialized view(s) refreshed' % len(refreshed))
        self.moved['materialized_views'] = refreshed

    def sync_large_objects(self, store, databases):
        """After the catch-up, with the source fenced: bring the large objects of a whole-database task up to date
        (logical decoding does not carry them). A table selection does not carry large objects: it cannot tell which
        belong to it; the result says how many it left."""
        from ansible_collections.pgdts.migration.plugins.module_utils import large_objects
        spec = store.get_task(self.name)['spec'] or {}
        rows = {r['dbname']: r for r in store.databases(self.name)}
        summaries = []
        for dbname in databases:
            if not catalog.whole_database(spec):
                with connect(self.control.source, dbname, application_name='pgdts-finish') as conn:
                    left = large_objects.count(conn)
                if left:
                    summaries.append({'database': dbname, 'source': left, 'carried': False,
                                      'reason': 'a table selection does not carry large objects'})
                continue
            summary = large_objects.sync_large_objects(
                self.control.source, self.control.destination, dbname, keep_owners=spec.get('migrate_roles', False),
                drop_extra=bool(rows[dbname]['created_database']))
            if summary['source'] or summary['dropped'] or summary['kept']:
                self.log(store, 'finish: database "%s": %s' % (dbname, large_objects.describe(summary)))
            summaries.append(dict(summary, database=dbname))
        self.moved['large_objects'] = summaries

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
        if float(self.params.get('fence_settle') or 0) < 0:
            raise TaskControlError('fence_settle must be 0 or more seconds', task=control.report(store))
        if self.params.get('fence', 'read_only') == 'read_only':
            self.check_fence_rights(store)
        if control.check_mode:
            return control.result(store, True, 'finished', 'task %s would be finished' % self.name,
                                  after_stage='finished')
        if not store.try_finish_lock(self.name):
            raise TaskControlError('another pg_dts_finish is running for task %s (it holds the task\'s finish lock on '
                                   'the destination); wait for it to end, then run this again' % self.name,
                                   task=control.report(store))
        handlers = _trap_signals()
        try:
            return self._run(store)
        finally:
            _restore_signals(handlers)
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
        self.store = store
        leaks = []
        on_leak = self.params.get('on_fence_leak') or 'fail'
        settle = float(self.params.get('fence_settle') if self.params.get('fence_settle') is not None else 2)
        try:
            store.ensure_columns()
            store.clear_fence_leaks(self.name)
            if fence == 'read_only':
                target, terminated = self.fence(databases, store)
            else:
                self.lift_fence(store)      # a fence an interrupted finish left behind
                target = control.source_lsn()
            phase('fence')
            store.set_stage(self.name, 'finishing')
            store.set_request(self.name, 'finish', target)
            self.log(store, 'finish: %s, waiting for the destination to apply up to %s' % (
                'source fenced read-only' if fence == 'read_only' else 'no fence', int_to_lsn(target)))
            self.wait_applied(store, target, int(self.params.get('wait_timeout') or 600))
            if fence == 'read_only':
                # the proof of the fence: whatever still commits in scope comes through the sync, and is named
                self.settle(store, settle)
                leaks = self.judge_leaks(store, on_leak)
            phase('catch_up')
            self.check_scope(store, databases)
            self.recopy_unlogged(store, databases)
            if (store.get_task(self.name)['spec'] or {}).get('plugin') == 'wal2json':
                self.repair_wal2json_nulls(store, databases)
            self.refresh_materialized_views(store, databases)
            phase('materialized_views')
            self.sync_large_objects(store, databases)
            phase('large_objects')
            sequences = []
            if self.params.get('sync_sequences', True):
                spec = store.get_task(self.name)['spec'] or {}
                for dbname in databases:
                    for item in schema.sync_sequences(control.source, control.destination, dbname,
                                                      self.scope_tables(store, dbname),
                                                      keep_owners=spec.get('migrate_roles', False)):
                        item['database'] = dbname
                        sequences.append(item)
            phase('sequences')
            comparison, summary = ([], None)
            if self.params.get('compare', 'checksum') != 'none':
                comparison, summary = self.compare(store, databases)
            phase('compare')
            if fence == 'read_only':
                # the last look before the sync ends: catch up to the source's position now, and judge again (a
                # writer that got past the fence explains a mismatch better than the mismatch does)
                self.settle(store, 0)
                leaks = self.judge_leaks(store, on_leak)
            if summary and (summary.get('mismatch') or summary.get('error')):
                message = proof.failure_message(comparison, summary)
                if self.params.get('on_mismatch', 'fail') == 'fail':
                    raise TaskControlError('task %s not finished: %s; the sync keeps running' % (self.name, message),
                                           comparison=comparison, comparison_summary=summary)
                self.log(store, 'finish: %s (on_mismatch=warn)' % message)
        except TaskControlError as exc:
            self._give_back(store)
            exc.result.setdefault('task', control.report(store))
            raise
        except FenceInterrupted as exc:
            self._give_back(store)
            raise TaskControlError('task %s not finished: pg_dts_finish was interrupted (%s); the source fence was '
                                   'lifted and the sync keeps running' % (self.name, exc), task=control.report(store))
        except BaseException:
            self._give_back(store)
            raise
        if self.watch_conn is not None:
            self.watch_conn.close()
            self.watch_conn = None
        store.set_request(self.name, 'stop')
        # Everything up to the fence is applied and compared: a worker that is slow to notice is terminated.
        worker.stop_worker(control.paths, timeout=30, grace=1.0)
        phase('stop_worker')
        worker.release_task_objects(control.source, control.destination, self.name, databases,
                                    destination_settings=store.destination_settings(self.name))
        if not self.params.get('keep_source_fence', True):
            self.lift_fence(store)
        elif self.fenced:
            record = store.source_fence(self.name) or {}
            store.set_source_fence(self.name, dict(record, kept=True))
        phase('cleanup')
        downtime = round(time.time() - started, 3) if fence == 'read_only' else None
        finish = {'final_lsn': int_to_lsn(target), 'sequences': sequences, 'comparison': comparison,
                  'comparison_summary': summary, 'downtime_seconds': downtime, 'terminated_sessions': terminated,
                  'source_fenced': bool(self.fenced), 'phase_seconds': phases, 'fence_leaks': leaks,
                  'fenced_sessions': self.ended}
        finish.update(self.scope_result)
        finish.update(self.moved)
        store.finish_task(self.name, 'finished', {'finish': finish})
        store.add_log(self.name, 'finished: sync ended, slots, publications and origins dropped')
        worker.remove_task_dir(control.paths)
        warnings = ['the write fence leaked (on_fence_leak=warn): %s; those transactions were applied to the '
                    'destination' % self.describe_leaks(leaks)] if leaks else []
        return control.result(store, True, 'finished', 'task %s finished%s' % (
            self.name, '; proof: %s' % summary['text'] if summary else ''), before_stage='sync', warnings=warnings,
            **finish)

    def judge_leaks(self, store, on_leak):
        leaks = self.fence_leaks(store)
        if not leaks:
            return []
        message = self.describe_leaks(leaks)
        if on_leak == 'fail':
            raise TaskControlError('task %s not finished: the write fence leaked: %s. Those transactions were applied '
                                   'to the destination (nothing is lost), the fence was lifted and the sync keeps '
                                   'running; stop that writer and run finish again (or set on_fence_leak=warn)'
                                   % (self.name, message), fence_leaks=leaks, fenced_sessions=self.ended)
        self.log(store, 'finish: the write fence leaked (on_fence_leak=warn): %s' % message)
        return leaks

    def _give_back(self, store):
        """A finish that does not complete: lift the fence, the sync goes on. Errors here must not hide the first."""
        try:
            self.lift_fence(store)
        except Exception as exc:  # pylint: disable=broad-except
            try:
                self.log(store, 'finish: could not lift the source fence (%s); run finish again or cancel the task '
                                'to lift it' % str(exc).strip().splitlines()[0])
            except Exception:  # pylint: disable=broad-except
                pass
        try:
            store.set_request(self.name, None)
            store.set_stage(self.name, 'sync')
        except Exception:  # pylint: disable=broad-except
            pass


def _interrupted(signum, _frame):
    raise FenceInterrupted('signal %d' % signum)


def _trap_signals():
    """SIGTERM and SIGHUP unwind pg_dts_finish like an error, so that the source is not left fenced."""
    handlers = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        try:
            handlers[signum] = signal.signal(signum, _interrupted)
        except (ValueError, OSError):
            pass     # not the main thread
    return handlers


def _restore_signals(handlers):
    for signum, handler in handlers.items():
        try:
            signal.signal(signum, handler)
        except (ValueError, OSError):
            pass
