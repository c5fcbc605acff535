# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Task names, the names of the objects a task owns, and the task's durable state."""

from __future__ import annotations

import hashlib
import re
import zlib

TASK_NAME_RE = re.compile(r'^[a-z][a-z0-9_]{0,39}$')
STATE_DATABASE = 'pgdts'
STATE_SCHEMA = 'pgdts'
STAGES = ('scheduled', 'schema', 'copy', 'index', 'sync', 'finishing', 'finished', 'failed', 'cancelled')
ACTIVE_STAGES = ('scheduled', 'schema', 'copy', 'index', 'sync', 'finishing')
END_STAGES = ('finished', 'cancelled')


class TaskNameError(ValueError):
    pass


def validate_task_name(name):
    if not isinstance(name, str) or not TASK_NAME_RE.match(name):
        raise TaskNameError('task name %r must start with a lower-case letter and hold only lower-case letters, digits '
                            'and underscores, at most 40 characters (it names replication slots)' % (name,))
    return name


def database_tag(dbname):
    """8 hex digits that stand for a database in object names (database names may hold any character)."""
    return hashlib.sha256(dbname.encode('utf-8')).hexdigest()[:8]


def object_name(task, dbname):
    """Name of the slot, publication and origin of `task` for source database `dbname`."""
    return 'pgdts_%s_%s' % (validate_task_name(task), database_tag(dbname))


def object_name_re(task):
    """Regex matching every object name of `task` (and of no other task)."""
    return re.compile(r'^pgdts_%s_[0-9a-f]{8}$' % re.escape(validate_task_name(task)))


def temporary_slot_name(task, dbname, attempt):
    return 'pgdts_%s_%s_t%d' % (validate_task_name(task), database_tag(dbname), attempt)


# ---------------------------------------------------------------------------------------------------------------
# Durable state on the destination: database `pgdts`, schema `pgdts`.

import datetime  # noqa: E402  (kept beside the code that uses it)
import json  # noqa: E402

from ansible_collections.pgdts.migration.plugins.module_utils.connection import (  # noqa: E402
    WRITER_OPTIONS, connect, query_all, query_one, sql,
)
from ansible_collections.pgdts.migration.plugins.module_utils.lsn import int_to_lsn, lsn_to_int  # noqa: E402

_STATE_DDL = (
    "CREATE SCHEMA IF NOT EXISTS pgdts",
    """CREATE TABLE IF NOT EXISTS pgdts.task (
        name text PRIMARY KEY,
        spec jsonb NOT NULL,
        stage text NOT NULL,
        error jsonb,
        request text,
        request_lsn pg_lsn,
        worker_host text,
        worker_pid integer,
        heartbeat timestamptz,
        created_at timestamptz NOT NULL DEFAULT now(),
        started_at timestamptz,
        stage_changed_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz,
        summary jsonb,
        log jsonb NOT NULL DEFAULT '[]',
        roles_done boolean NOT NULL DEFAULT false)""",
    """CREATE TABLE IF NOT EXISTS pgdts.task_database (
        task text NOT NULL REFERENCES pgdts.task (name) ON DELETE CASCADE,
        dbname text NOT NULL,
        object_name text NOT NULL,
        created_database boolean NOT NULL DEFAULT false,
        slot_lsn pg_lsn,
        schema_dump bytea,
        schema_done boolean NOT NULL DEFAULT false,
        index_done boolean NOT NULL DEFAULT false,
        synced_lsn pg_lsn,
        source_lsn pg_lsn,
        applied_transactions bigint NOT NULL DEFAULT 0,
        applied_changes bigint NOT NULL DEFAULT 0,
        last_commit_time timestamptz,
        caught_up_at timestamptz,
        tps double precision,
        PRIMARY KEY (task, dbname))""",
    """CREATE TABLE IF NOT EXISTS pgdts.task_table (
        task text NOT NULL REFERENCES pgdts.task (name) ON DELETE CASCADE,
        dbname text NOT NULL,
        schema_name text NOT NULL,
        table_name text NOT NULL,
        state text NOT NULL DEFAULT 'pending',
        est_rows bigint NOT NULL DEFAULT 0,
        est_bytes bigint NOT NULL DEFAULT 0,
        rows bigint NOT NULL DEFAULT 0,
        bytes bigint NOT NULL DEFAULT 0,
        copy_lsn pg_lsn,
        started_at timestamptz,
        finished_at timestamptz,
        PRIMARY KEY (task, dbname, schema_name, table_name))""",
)

# Columns added after the first release: (table, column, definition). State databases created before them get them
# when a run opens the state with create=True (only when missing, so that no lock is taken otherwise).
_STATE_COLUMNS = (
    ('task', 'roles_done', 'boolean NOT NULL DEFAULT false'),     # migrate_roles: the roles were brought over
    # a destination database that existed before the task: its own objects before the schema restore (addresses of
    # schema.own_objects()), so that drop_destination removes only what the task created
    ('task_database', 'existing_objects', 'jsonb'),
    # the write fence of pg_dts_finish: the source databases it fenced and their own default_transaction_read_only
    # before (restored by a failed or interrupted finish, a later finish or a cancel)
    ('task', 'source_fence', 'jsonb'),
    # commit LSN of the last applied source transaction that changed a table in scope (the fence's proof)
    ('task_database', 'last_change_lsn', 'pg_lsn'),
    # source transactions in scope that committed after the fence of a running finish (who leaked through)
    ('task_database', 'fence_leaks', 'jsonb'),
    # the destination database's own default_transaction_read_only before the worker protected it ({'previous': v})
    ('task_database', 'destination_setting', 'jsonb'),
)

# advisory lock key held while the state tables are created ('pgdts' as an integer)
_STATE_DDL_LOCK = 0x7067647473
_FINISH_LOCK_CLASS = 0x70676466      # 'pgdf': advisory locks (class, key) of pg_dts_finish, one key per task


def parse_time(value):
    """A start_at value (ISO 8601; a time without zone is local time) as an aware UTC datetime; None stays None."""
    if not value:
        return None
    if isinstance(value, datetime.datetime):
        parsed = value
    else:
        text = str(value).strip().replace('Z', '+00:00')
        parsed = datetime.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()
    return parsed.astimezone(datetime.timezone.utc)


def _lock_key(task):
    """A stable int4 key of a task name."""
    value = zlib.crc32(task.encode('utf-8'))
    return value - (1 << 32) if value >= (1 << 31) else value


class TaskStore:
    """Reads and writes the durable state of tasks on the destination (autocommit; one row per change)."""

    def __init__(self, destination, application_name='pgdts-state'):
        self.destination = destination
        self.application_name = application_name
        self.conn = None

    # -- set-up --------------------------------------------------------------------------------------------------
    @staticmethod
    def exists(destination):
        with connect(destination, application_name='pgdts-state') as conn:
            return bool(query_one(conn, 'SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s', (STATE_DATABASE,)))

    def open(self, create=True):
        """Connect to the state database, creating it and its tables when `create`; returns False when absent."""
        if create:
            import psycopg
            with connect(self.destination, application_name=self.application_name) as admin:
                if not query_one(admin, 'SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s', (STATE_DATABASE,)):
                    try:
                        admin.execute(sql.SQL('CREATE DATABASE {}').format(sql.Identifier(STATE_DATABASE)))
                    except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
                        pass     # a parallel run created it a moment ago
        elif not self.exists(self.destination):
            return False
        self.conn = connect(self.destination, STATE_DATABASE, application_name=self.application_name,
                            options=WRITER_OPTIONS)
        if create:
            # parallel runs may create the tables at the same moment: IF NOT EXISTS alone is not safe against that
            with self.conn.transaction():
                self.conn.execute('SELECT pg_catalog.pg_advisory_xact_lock(%s)', (_STATE_DDL_LOCK,))
                for ddl in _STATE_DDL:
                    self.conn.execute(ddl)
                self._add_columns()
        return True

    def _add_columns(self):
        for table, column, definition in _STATE_COLUMNS:
            if not query_one(self.conn, 'SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = %s::regclass '
                                        'AND attname = %s AND NOT attisdropped', ('pgdts.' + table, column)):
                self.conn.execute(sql.SQL('ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} ' + definition).format(
                    sql.Identifier(STATE_SCHEMA, table), sql.Identifier(column)))

    def ensure_columns(self):
        """Add the columns of this version to existing state tables (a state opened with create=False)."""
        with self.conn.transaction():
            self.conn.execute('SELECT pg_catalog.pg_advisory_xact_lock(%s)', (_STATE_DDL_LOCK,))
            self._add_columns()

    def try_finish_lock(self, task):
        """Take the task's finish lock (a session advisory lock on the state database); False when another session
        holds it. Held until release_finish_lock() or the end of this store's connection."""
        return bool(self.conn.execute('SELECT pg_catalog.pg_try_advisory_lock(%s, %s)',
                                      (_FINISH_LOCK_CLASS, _lock_key(task))).fetchone()[0])

    def release_finish_lock(self, task):
        if self.conn is not None and not self.conn.closed:
            self.conn.execute('SELECT pg_catalog.pg_advisory_unlock(%s, %s)', (_FINISH_LOCK_CLASS, _lock_key(task)))

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def is_open(self):
        """Whether the store has a connection that was not closed (it may still have broken since)."""
        return self.conn is not None and not self.conn.closed

    def has_tables(self):
        return bool(query_one(self.conn, "SELECT to_regclass('pgdts.task') IS NOT NULL")[0])

    def check_access(self):
        """Raise the psycopg error when this login may not read the task table."""
        self.conn.execute('SELECT 1 FROM pgdts.task LIMIT 0')

    def task_names(self):
        return [r[0] for r in query_all(self.conn, 'SELECT name FROM pgdts.task ORDER BY name')]

    # -- tasks ---------------------------------------------------------------------------------------------------
    def get_task(self, name):
        if not self.has_tables():
            return None
        row = query_one(self.conn, """
            SELECT name, spec, stage, error, request, request_lsn::text, worker_host, worker_pid, heartbeat, created_at,
                   started_at, stage_changed_at, finished_at, summary, log
              FROM pgdts.task WHERE name = %s""", (name,))
        if not row:
            return None
        keys = ('name', 'spec', 'stage', 'error', 'request', 'request_lsn', 'worker_host', 'worker_pid', 'heartbeat',
                'created_at', 'started_at', 'stage_changed_at', 'finished_at', 'summary', 'log')
        return dict(zip(keys, row))

    def create_task(self, name, spec, stage):
        self.conn.execute('INSERT INTO pgdts.task (name, spec, stage) VALUES (%s, %s, %s)',
                          (name, json.dumps(spec), stage))

    def delete_task(self, name):
        self.conn.execute('DELETE FROM pgdts.task WHERE name = %s', (name,))

    def set_stage(self, name, stage, error=None, clear_error=False):
        if error is not None:
            self.conn.execute('UPDATE pgdts.task SET stage = %s, error = %s, stage_changed_at = now() WHERE name = %s',
                              (stage, json.dumps(error), name))
        elif clear_error:
            self.conn.execute('UPDATE pgdts.task SET stage = %s, error = NULL, stage_changed_at = now() WHERE name = %s',
                              (stage, name))
        else:
            self.conn.execute('UPDATE pgdts.task SET stage = %s, stage_changed_at = now() WHERE name = %s',
                              (stage, name))

    def set_request(self, name, request, lsn=None):
        self.conn.execute('UPDATE pgdts.task SET request = %s, request_lsn = %s::pg_lsn WHERE name = %s',
                          (request, int_to_lsn(lsn) if isinstance(lsn, int) else lsn, name))

    def set_started(self, name):
        self.conn.execute('UPDATE pgdts.task SET started_at = coalesce(started_at, now()) WHERE name = %s', (name,))

    def heartbeat(self, name, host, pid):
        self.conn.execute('UPDATE pgdts.task SET heartbeat = now(), worker_host = %s, worker_pid = %s WHERE name = %s',
                          (host, pid, name))

    def add_log(self, name, message):
        entry = {'at': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'), 'message': message}
        self.conn.execute("UPDATE pgdts.task SET log = (log || %s::jsonb) WHERE name = %s",
                          (json.dumps([entry]), name))

    def roles_done(self, name):
        """True once the task's roles were brought to the destination (migrate_roles)."""
        row = query_one(self.conn, 'SELECT roles_done FROM pgdts.task WHERE name = %s', (name,))
        return bool(row and row[0])

    def set_roles_done(self, name):
        self.conn.execute('UPDATE pgdts.task SET roles_done = true WHERE name = %s', (name,))

    # -- the write fence of the source (pg_dts_finish) ----------------------------------------------------------------
    def source_fence(self, name):
        """{'databases': {dbname: {'previous': value or None}}, ...} while finish has (or may have) the source
        fenced; None when not."""
        import psycopg
        try:
            row = query_one(self.conn, 'SELECT source_fence FROM pgdts.task WHERE name = %s', (name,))
        except psycopg.errors.UndefinedColumn:
            return None     # written by a version without the column: it never recorded a fence
        return row[0] if row else None

    def set_source_fence(self, name, record):
        self.conn.execute('UPDATE pgdts.task SET source_fence = %s::jsonb WHERE name = %s',
                          (json.dumps(record, default=str) if record is not None else None, name))

    def add_fence_leaks(self, task, dbname, leaks):
        self.conn.execute("UPDATE pgdts.task_database SET fence_leaks = coalesce(fence_leaks, '[]'::jsonb) || "
                          "%s::jsonb WHERE task = %s AND dbname = %s", (json.dumps(leaks, default=str), task, dbname))

    def fence_marks(self, task):
        """{dbname: (last_change_lsn int or None, [leaks])}."""
        rows = query_all(self.conn, 'SELECT dbname, last_change_lsn::text, fence_leaks FROM pgdts.task_database '
                                    'WHERE task = %s', (task,))
        return {r[0]: (lsn_to_int(r[1]), list(r[2] or [])) for r in rows}

    def save_destination_setting(self, task, dbname, previous):
        """Keep the destination database's own default_transaction_read_only before the worker protects it (only
        the first time: a worker that starts again finds its own protection there)."""
        value = json.dumps({'previous': previous})
        self.conn.execute('UPDATE pgdts.task_database SET destination_setting = %s::jsonb WHERE task = %s AND '
                          'dbname = %s AND destination_setting IS NULL', (value, task, dbname))

    def destination_settings(self, task):
        """{dbname: value or None} recorded by save_destination_setting."""
        import psycopg
        try:
            rows = query_all(self.conn, 'SELECT dbname, destination_setting FROM pgdts.task_database WHERE task = %s '
                                        'AND destination_setting IS NOT NULL', (task,))
        except psycopg.errors.UndefinedColumn:
            return {}
        return {r[0]: (r[1] or {}).get('previous') for r in rows}

    def clear_fence_leaks(self, task):
        self.conn.execute('UPDATE pgdts.task_database SET fence_leaks = NULL WHERE task = %s', (task,))

    def finish_task(self, name, stage, summary):
        self.conn.execute('UPDATE pgdts.task SET stage = %s, summary = %s, finished_at = now(), request = NULL, '
                          'stage_changed_at = now() WHERE name = %s', (stage, json.dumps(summary, default=str), name))

    # -- databases -----------------------------------------------------------------------------------------------
    def ensure_database_row(self, task, dbname, object_name):
        self.conn.execute('INSERT INTO pgdts.task_database (task, dbname, object_name) VALUES (%s, %s, %s) '
                          'ON CONFLICT DO NOTHING', (task, dbname, object_name))

    def databases(self, task):
        rows = query_all(self.conn, """
            SELECT dbname, object_name, created_database, slot_lsn::text, schema_done, index_done, synced_lsn::text,
                   source_lsn::text, applied_transactions, applied_changes, last_commit_time, caught_up_at, tps
              FROM pgdts.task_database WHERE task = %s ORDER BY dbname""", (task,))
        keys = ('dbname', 'object_name', 'created_database', 'slot_lsn', 'schema_done', 'index_done', 'synced_lsn',
                'source_lsn', 'applied_transactions', 'applied_changes', 'last_commit_time', 'caught_up_at', 'tps')
        return [dict(zip(keys, r)) for r in rows]

    def update_database(self, task, dbname, **values):
        casts = {'slot_lsn': '::pg_lsn', 'synced_lsn': '::pg_lsn', 'source_lsn': '::pg_lsn', 'existing_objects': '::jsonb',
                 'last_change_lsn': '::pg_lsn'}
        assignments = sql.SQL(', ').join(
            sql.SQL('{} = %s' + casts.get(key, '')).format(sql.Identifier(key)) for key in values)
        params = [int_to_lsn(v) if k in casts and isinstance(v, int) else
                  json.dumps(v) if k == 'existing_objects' and v is not None else v for k, v in values.items()]
        self.conn.execute(sql.SQL('UPDATE pgdts.task_database SET {} WHERE task = %s AND dbname = %s').format(assignments),
                          params + [task, dbname])

    def existing_objects(self, task, dbname):
        """The destination database's own objects before the task's schema restore; None when not recorded (the task
        created the database, or it started before this was recorded)."""
        import psycopg
        try:
            row = query_one(self.conn, 'SELECT existing_objects FROM pgdts.task_database WHERE task = %s AND dbname = %s',
                            (task, dbname))
        except psycopg.errors.UndefinedColumn:
            return None     # a state database no worker of this version has opened yet
        return row[0] if row else None

    def schema_dump(self, task, dbname):
        row = query_one(self.conn, 'SELECT schema_dump FROM pgdts.task_database WHERE task = %s AND dbname = %s',
                        (task, dbname))
        return bytes(row[0]) if row and row[0] is not None else None

    # -- tables --------------------------------------------------------------------------------------------------
    def register_tables(self, task, dbname, tables):
        with self.conn.cursor() as cur:
            cur.executemany('INSERT INTO pgdts.task_table (task, dbname, schema_name, table_name, est_rows, est_bytes) '
                            'VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING',
                            [(task, dbname, t.schema, t.name, t.est_rows, t.size_bytes) for t in tables])

    def tables(self, task, dbname=None):
        rows = query_all(self.conn, """
            SELECT dbname, schema_name, table_name, state, est_rows, est_bytes, rows, bytes, copy_lsn::text,
                   started_at, finished_at
              FROM pgdts.task_table WHERE task = %s AND (%s::text IS NULL OR dbname = %s)
             ORDER BY dbname, schema_name, table_name""", (task, dbname, dbname))
        keys = ('database', 'schema', 'table', 'state', 'est_rows', 'est_bytes', 'rows', 'bytes', 'copy_lsn',
                'started_at', 'finished_at')
        return [dict(zip(keys, r)) for r in rows]

    def table_started(self, task, dbname, table):
        self.conn.execute("UPDATE pgdts.task_table SET state = 'copying', started_at = now(), rows = 0, bytes = 0 "
                          "WHERE task = %s AND dbname = %s AND schema_name = %s AND table_name = %s",
                          (task, dbname, table.schema, table.name))

    def table_progress(self, task, dbname, table, delta_bytes):
        self.conn.execute('UPDATE pgdts.task_table SET bytes = bytes + %s '
                          'WHERE task = %s AND dbname = %s AND schema_name = %s AND table_name = %s',
                          (delta_bytes, task, dbname, table.schema, table.name))

    def table_copied(self, task, dbname, table, rows, nbytes, copy_lsn):
        self.conn.execute("UPDATE pgdts.task_table SET state = 'copied', rows = %s, bytes = %s, copy_lsn = %s::pg_lsn, "
                          "finished_at = now() "
                          "WHERE task = %s AND dbname = %s AND schema_name = %s AND table_name = %s",
                          (rows, nbytes, int_to_lsn(copy_lsn), task, dbname, table.schema, table.name))

    def tables_copied(self, task, dbname, copied, copy_lsn):
        """table_copied for several tables in one statement; copied = [(table, rows, bytes)]."""
        if not copied:
            return
        self.conn.execute("UPDATE pgdts.task_table t SET state = 'copied', rows = c.rows, bytes = c.bytes, "
                          "copy_lsn = %s::pg_lsn, finished_at = now() "
                          "FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[]) "
                          "AS c(schema_name, table_name, rows, bytes) "
                          "WHERE t.task = %s AND t.dbname = %s AND t.schema_name = c.schema_name "
                          "AND t.table_name = c.table_name",
                          (int_to_lsn(copy_lsn), [t.schema for t, _r, _b in copied], [t.name for t, _r, _b in copied],
                           [r for _t, r, _b in copied], [b for _t, _r, b in copied], task, dbname))

    def reset_unfinished_tables(self, task, dbname):
        self.conn.execute("UPDATE pgdts.task_table SET state = 'pending', rows = 0, bytes = 0, started_at = NULL "
                          "WHERE task = %s AND dbname = %s AND state <> 'copied'", (task, dbname))


def _iso(value):
    return value.isoformat() if isinstance(value, (datetime.datetime, datetime.date)) else value


def task_report(store, name, source_lsns=None, include_tables=True, slots=None):
    """What a user sees about a task: stage, per-table progress, totals with percent and ETA, lag, error.

    source_lsns: {dbname: current source WAL flush position (int)} when the caller could read it; else the last
    position the worker recorded is used.
    slots: {dbname: decoding.slot_states() entry} of the task's slots read on the source, when the caller could; the
    WAL each slot holds back, wal_status and safe_wal_size are null without it (or when the slot does not exist).
    """
    task = store.get_task(name)
    if task is None:
        return None
    tables = store.tables(name)
    databases = store.databases(name)
    now = datetime.datetime.now(datetime.timezone.utc)
    est_bytes = sum(max(t['est_bytes'], t['bytes']) for t in tables)
    done_bytes = sum(t['bytes'] if t['state'] != 'copied' else max(t['bytes'], t['est_bytes']) for t in tables)
    copied = sum(1 for t in tables if t['state'] == 'copied')
    rows = sum(t['rows'] for t in tables)
    if task['stage'] in ('index', 'sync', 'finishing', 'finished') or (tables and copied == len(tables)):
        percent = 100.0
    elif est_bytes:
        percent = round(min(99.9, 100.0 * done_bytes / est_bytes), 1)
    else:
        percent = round(100.0 * copied / len(tables), 1) if tables else 0.0
    eta = None
    starts = [t['started_at'] for t in tables if t['started_at']]
    if task['stage'] == 'copy' and starts and done_bytes:
        elapsed = (now - min(starts)).total_seconds()
        if elapsed > 0:
            eta = round(max(0.0, (est_bytes - done_bytes) / (done_bytes / elapsed)), 1)
    table_rows = []
    for t in tables:
        size = max(t['est_bytes'], t['bytes'])
        pct = 100.0 if t['state'] == 'copied' else (round(min(99.9, 100.0 * t['bytes'] / size), 1) if size else 0.0)
        table_rows.append({'database': t['database'], 'schema': t['schema'], 'table': t['table'], 'state': t['state'],
                           'rows': t['rows'], 'bytes': t['bytes'], 'percent': pct, 'copy_lsn': t['copy_lsn']})
    sync = []
    for d in databases:
        synced = lsn_to_int(d['synced_lsn'])
        current = (source_lsns or {}).get(d['dbname']) or lsn_to_int(d['source_lsn'])
        lag_bytes = max(0, current - synced) if synced is not None and current is not None else None
        lag_seconds = None
        slot = (slots or {}).get(d['dbname']) or {}
        if synced is not None:
            if lag_bytes == 0 and d['caught_up_at'] is not None:
                lag_seconds = 0.0
            elif d['last_commit_time'] is not None:
                lag_seconds = round(max(0.0, (now - d['last_commit_time']).total_seconds()), 3)
            elif d['caught_up_at'] is not None:
                lag_seconds = round(max(0.0, (now - d['caught_up_at']).total_seconds()), 3)
        sync.append({'database': d['dbname'], 'slot': d['object_name'], 'synced_lsn': d['synced_lsn'],
                     'source_lsn': int_to_lsn(current) if current is not None else None, 'lag_bytes': lag_bytes,
                     'lag_seconds': lag_seconds, 'applied_transactions': d['applied_transactions'],
                     'applied_changes': d['applied_changes'], 'transactions_per_second': round(d['tps'] or 0.0, 1),
                     'last_commit_time': _iso(d['last_commit_time']),
                     'retained_wal_bytes': slot.get('retained_bytes'), 'wal_status': slot.get('wal_status'),
                     'safe_wal_size': slot.get('safe_wal_size'), 'slot_invalidation': slot.get('invalidation')})
    lags = [s['lag_bytes'] for s in sync if s['lag_bytes'] is not None]
    lag_secs = [s['lag_seconds'] for s in sync if s['lag_seconds'] is not None]
    report = {
        'name': name, 'stage': task['stage'], 'error': task['error'], 'request': task['request'],
        'created_at': _iso(task['created_at']), 'started_at': _iso(task['started_at']),
        'finished_at': _iso(task['finished_at']), 'stage_changed_at': _iso(task['stage_changed_at']),
        'worker': {'host': task['worker_host'], 'pid': task['worker_pid'], 'heartbeat': _iso(task['heartbeat'])},
        'totals': {'tables': len(tables), 'tables_copied': copied, 'rows': rows, 'bytes': done_bytes,
                   'estimated_bytes': est_bytes, 'percent': percent, 'eta_seconds': eta},
        'lag_bytes': max(lags) if lags else None,
        'lag_seconds': max(lag_secs) if lag_secs else None,
        'transactions_per_second': round(sum(s['transactions_per_second'] for s in sync), 1) if sync else None,
        'databases': sync,
        'summary': task['summary'],
        'log': (task['log'] or [])[-20:],
        'spec': task['spec'],
    }
    if include_tables:
        report['tables'] = table_rows
    return report
