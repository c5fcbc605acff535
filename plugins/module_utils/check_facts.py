# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The facts behind the verify catalogue (checks.py): what run_checks() reads from the source and the destination.

`gather(facts)` reads both servers (never writes: the only object it makes is a TEMPORARY logical slot that lives and
dies inside one session) with a fixed number of set-based queries per database, so 2,000 tables do not mean 2,000
queries. Rows are namedtuples read by column name. A server, database or query that fails is recorded (Holder.failure,
Holder.errors), never raised: the items in checks.py turn it into failed items.
"""

from __future__ import annotations

import os
import secrets

from ansible_collections.pgdts.migration.plugins.module_utils import catalog
from ansible_collections.pgdts.migration.plugins.module_utils import task_state
from ansible_collections.pgdts.migration.plugins.module_utils.connection import ConnectionFailure, connect, error_text

try:
    import psycopg
    from psycopg import sql
    from psycopg.rows import namedtuple_row
except ImportError:  # pragma: no cover - connect() reports the missing library as a failed item
    psycopg = None
    sql = None
    namedtuple_row = None

# statuses of check items (the plugin probe ends in one of its own)
PASS, WARNING, FAILED = 'pass', 'warning', 'failed'
STATUSES = (PASS, WARNING, FAILED)

LONG_TRANSACTION_SECONDS = 5         # a transaction holding an xid this long stalls slot creation noticeably
PLUGIN_CHECK_TIMEOUT_MS = 10000      # a temporary slot waits for running transactions; the plugin loads before that
PLUGIN_CHECK_BLOCKED_TIMEOUT_MS = 2000
STATE_DATABASE = task_state.STATE_DATABASE

APPLY_FUNCTIONS = (
    'pg_catalog.pg_replication_origin_create(text)',
    'pg_catalog.pg_replication_origin_session_setup(text)',
    'pg_catalog.pg_replication_origin_xact_setup(pg_catalog.pg_lsn, timestamp with time zone)',
    'pg_catalog.pg_replication_origin_progress(text, boolean)',
    'pg_catalog.pg_replication_origin_advance(text, pg_catalog.pg_lsn)',
    'pg_catalog.pg_replication_origin_drop(text)',
)

SOURCE_SETTINGS = ('wal_level', 'max_replication_slots', 'max_wal_senders', 'max_slot_wal_keep_size', 'server_version')
SESSION_SETTINGS = ('wal_sender_timeout', 'statement_timeout', 'idle_in_transaction_session_timeout',
                    'transaction_timeout')

CONNECTION_HINTS = {
    'auth_failed': 'Check the user and password (the password option, PGPASSWORD or ~/.pgpass) and that the role may '
                   'log in (ALTER ROLE ... LOGIN PASSWORD ...).',
    'not_allowed': 'Add a pg_hba.conf line for this user and the host that runs pgdts (for example '
                   '"host all <user> <address>/32 scram-sha-256"), then reload the server (SELECT pg_reload_conf()); '
                   'pgdts.migration.pg_dts_source_config can do this on the source.',
    'unreachable': 'Check host and port, that the server runs and listens on that address (listen_addresses), and '
                   'that no firewall blocks the port.',
    'timeout': 'The server did not answer within connect_timeout: check the network path and firewall, or raise '
               'connect_timeout.',
    'database_missing': 'Set dbname to a database that exists (it is only used for server-wide queries).',
    'ssl_required': 'Set sslmode to match the server (require or verify-full when it insists on SSL; disable or prefer '
                    'when it has no SSL).',
    'too_many_connections': 'The server has no free connection slots: raise max_connections or end idle sessions.',
    'starting_up': 'Wait until the server has finished starting (or recovering) and run the check again.',
    'missing_library': 'Install psycopg 3 on the host that runs the module: pip install "psycopg[binary]".',
    'invalid': 'Fix the connection options.',
}


class Holder:
    """Facts read from one connection, and the errors of the queries that failed."""

    def __init__(self, name):
        self.name = name
        self.failure = None     # ConnectionFailure when the connection could not be made
        self.facts = {}
        self.errors = {}

    @property
    def ok(self):
        return self.failure is None

    def fetch(self, key, conn, query, params=None, how='all'):
        try:
            with conn.cursor(row_factory=namedtuple_row) as cur:      # facts are read by column name
                cur.execute(query, params)
                if how == 'all':
                    result = cur.fetchall()
                else:
                    row = cur.fetchone()
                    result = row if how == 'one' else (row[0] if row else None)
        except psycopg.Error as exc:
            self.errors[key] = error_text(exc)
            return None
        self.facts[key] = result
        return result

    def get(self, key, default=None):
        return self.facts.get(key, default)


class Facts:
    """Everything run_checks() learned from the two servers (and the options it was given): what the items judge."""

    def __init__(self, source, destination, task, databases, tables, exclude_tables, plugin, incremental, resuming,
                 migrate_roles=False):
        self.migrate_roles = bool(migrate_roles)
        self.source_spec = source
        self.dest_spec = destination
        self.task = task
        self.databases_option = list(databases) if databases else None
        self.include = list(tables or [])
        self.exclude = list(exclude_tables or [])
        self.plugin = plugin or 'pgoutput'
        self.incremental = bool(incremental)
        self.resuming = bool(resuming)
        self.task_error = None
        self.object_re = None
        self.selection_error = None
        self.src = Holder('source')
        self.dst = Holder('destination')
        self.db_names = []              # the selected source databases
        self.db_problems = []           # (dbname, problem) of the databases option
        self.src_dbs = {}               # dbname -> Holder (normal connection facts)
        self.repl = {}                  # dbname -> None or failure message
        self.dst_dbs = {}               # dbname -> Holder, only for databases that exist on the destination
        self.plugin_result = None       # (status, message, hint)
        self.expected_names = {}        # object name -> dbname
        self.replica_identity = 'fail'
        self.pg_bindir = None
        self.max_retained_wal = None    # the task's max_retained_wal (normalized size text), None: no limit
        self.roles_preview = None       # migrate_roles: roles.preview() of both servers, or the exception it raised

    @property
    def whole_databases(self):
        return not self.include

    def reachable_dbs(self):
        return [db for db in self.db_names if db in self.src_dbs and self.src_dbs[db].ok]

    def unreachable_dbs(self):
        return [db for db in self.db_names if db not in self.src_dbs or not self.src_dbs[db].ok]

    def selected(self, dbname):
        return self.src_dbs[dbname].get('selected', [])

    def all_selected(self):
        return [(db, t) for db in self.reachable_dbs() for t in self.selected(db)]


# ------------------------------------------------------------------------------------------------------------------
# Phase 1: facts
# ------------------------------------------------------------------------------------------------------------------

_SOURCE_ROLE = """
SELECT current_user AS rolname, r.rolsuper, r.rolreplication, r.rolcreatedb
  FROM pg_catalog.pg_roles r WHERE r.rolname = current_user
"""

_DATABASES = """
SELECT d.datname, d.datistemplate, d.datallowconn, pg_catalog.pg_encoding_to_char(d.encoding) AS encoding,
       d.datcollate, d.datctype, {provider} AS provider, {icu_locale} AS icu_locale,
       pg_catalog.has_database_privilege(d.oid, 'CREATE') AS can_create
  FROM pg_catalog.pg_database d ORDER BY d.datname
"""

_SETTINGS = """
SELECT name, setting, unit, pg_catalog.current_setting(name) AS display, source
  FROM pg_catalog.pg_settings WHERE name = ANY(%s)
"""

_SLOTS = """
SELECT slot_name, plugin, slot_type, database, active, active_pid, temporary, {wal_status} AS wal_status
  FROM pg_catalog.pg_replication_slots ORDER BY slot_name
"""

_LONG_TRANSACTIONS = """
SELECT pid, usename, datname, application_name, state, backend_type,
       EXTRACT(EPOCH FROM now() - xact_start)::bigint AS seconds
  FROM pg_catalog.pg_stat_activity
 WHERE pid <> pg_catalog.pg_backend_pid() AND backend_xid IS NOT NULL
   AND xact_start < now() - pg_catalog.make_interval(secs => %s)
 ORDER BY xact_start
"""

_HIDDEN_XID_SESSIONS = """
SELECT count(*) FROM pg_catalog.pg_stat_activity
 WHERE pid <> pg_catalog.pg_backend_pid() AND backend_xid IS NOT NULL AND xact_start IS NULL
"""

_PREPARED = """
SELECT gid, owner, database, EXTRACT(EPOCH FROM now() - prepared)::bigint AS seconds
  FROM pg_catalog.pg_prepared_xacts ORDER BY prepared
"""

_SERVER_IDENTITY = """
SELECT pg_catalog.pg_is_in_recovery() AS in_recovery, pg_catalog.pg_postmaster_start_time()::text AS started
"""

_SYSTEM_IDENTIFIER = 'SELECT system_identifier::text FROM pg_catalog.pg_control_system()'


def _reclassify(failure, spec):
    """connection.classify_error reads the "no encryption" of a missing pg_hba.conf entry as an SSL mismatch."""
    if failure.kind == 'ssl_required' and 'no pg_hba.conf entry' in failure.message:
        detail = failure.message.split(': ', 1)[-1]
        return ConnectionFailure('not_allowed', 'the server at %s:%s has no pg_hba.conf entry that allows user "%s": %s'
                                 % (spec.host or 'local socket', spec.port, spec.user or '', detail))
    return failure


def _connect(holder, spec, dbname=None, **kwargs):
    try:
        return connect(spec, dbname=dbname, **kwargs)
    except ConnectionFailure as exc:
        holder.failure = _reclassify(exc, spec)
    except Exception as exc:  # pylint: disable=broad-except  # any other driver error is still a failed item
        holder.failure = ConnectionFailure('error', 'cannot connect: %s' % error_text(exc))
    return None


def _databases_query(version):
    if version >= 170000:       # 17 renamed daticulocale to datlocale (also used by the builtin provider)
        return sql.SQL(_DATABASES).format(provider=sql.SQL('d.datlocprovider::text'), icu_locale=sql.SQL('d.datlocale'))
    if version >= 150000:
        return sql.SQL(_DATABASES).format(provider=sql.SQL('d.datlocprovider::text'), icu_locale=sql.SQL('d.daticulocale'))
    return sql.SQL(_DATABASES).format(provider=sql.Literal('c'), icu_locale=sql.NULL)


def _settings_map(rows):
    return {r.name: {'setting': r.setting, 'unit': r.unit, 'display': r.display, 'source': r.source} for r in rows or []}


def _gather_source(ctx):
    """Server-wide facts of the source; returns the (autocommit, idle) connection for _gather_roles, or None."""
    src = ctx.src
    conn = _connect(src, ctx.source_spec)
    if conn is None:
        return None
    version = conn.info.server_version
    src.facts['version'] = version
    src.fetch('role', conn, _SOURCE_ROLE, how='one')
    src.fetch('fence_rights', conn, FENCE_RIGHTS, how='one')
    src.fetch('databases', conn, _databases_query(version))
    src.fetch('settings', conn, _SETTINGS, (list(SOURCE_SETTINGS),))
    src.facts['settings'] = _settings_map(src.get('settings'))
    wal_status = sql.Identifier('wal_status') if version >= 130000 else sql.NULL
    src.fetch('slots', conn, sql.SQL(_SLOTS).format(wal_status=wal_status))
    src.fetch('walsenders', conn, "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE backend_type = 'walsender'",
              how='value')
    src.fetch('long_transactions', conn, _LONG_TRANSACTIONS, (LONG_TRANSACTION_SECONDS,))
    src.fetch('hidden_xid_sessions', conn, _HIDDEN_XID_SESSIONS, how='value')
    src.fetch('prepared', conn, _PREPARED)
    src.fetch('identity', conn, _SERVER_IDENTITY, how='one')
    src.fetch('system_identifier', conn, _SYSTEM_IDENTIFIER, how='value')
    src.fetch('version_text', conn, 'SHOW server_version', how='value')
    if version >= 140000:
        # the WAL the source wrote since its statistics were reset: an average rate, no sampling (source.wal_retention)
        src.fetch('wal_written', conn, 'SELECT wal_bytes::bigint AS bytes, EXTRACT(epoch FROM pg_catalog.now() - '
                                       'stats_reset)::float8 AS seconds FROM pg_catalog.pg_stat_wal', how='one')
    return conn


def _select_databases(ctx):
    """The selected source databases, and what is wrong with the `databases` option."""
    rows = ctx.src.get('databases') or []
    info = {r.datname: r for r in rows}
    if ctx.databases_option is None:
        ctx.db_names = [r.datname for r in rows if not r.datistemplate and r.datallowconn and r.datname != STATE_DATABASE]
        return
    seen = []
    for name in ctx.databases_option:
        if name in seen:
            continue
        seen.append(name)
        row = info.get(name)
        if name == STATE_DATABASE:
            ctx.db_problems.append((name, 'is the name of the pgdts state database and cannot be migrated'))
        elif row is None:
            ctx.db_problems.append((name, 'does not exist on the source'))
        elif row.datistemplate:
            ctx.db_problems.append((name, 'is a template database'))
        elif not row.datallowconn:
            ctx.db_problems.append((name, 'does not allow connections (datallowconn is false)'))
        else:
            ctx.db_names.append(name)


_REPLICA_IDENTITY_MISSING = """
SELECT c.oid FROM pg_catalog.pg_class c
 WHERE c.oid = ANY(%s) AND c.relkind = 'r'
   AND NOT (c.relreplident = 'f'
            OR (c.relreplident = 'd' AND EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                                                  WHERE i.indrelid = c.oid AND i.indisprimary))
            OR (c.relreplident = 'i' AND EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                                                  WHERE i.indrelid = c.oid AND i.indisreplident)))
"""

_NO_SELECT = """
SELECT c.oid FROM pg_catalog.pg_class c
 WHERE c.oid = ANY(%s) AND NOT pg_catalog.has_table_privilege(c.oid, 'SELECT')
"""

# Selected tables whose rows row-level security would hide from this login (copy and compare run with
# row_security = off, so such a table fails the copy instead of arriving filtered).
_RLS_FILTERED = """
SELECT c.oid, c.relforcerowsecurity AS forced FROM pg_catalog.pg_class c
 WHERE c.oid = ANY(%s) AND c.relrowsecurity
   AND NOT (SELECT r.rolsuper OR r.rolbypassrls FROM pg_catalog.pg_roles r WHERE r.rolname = current_user)
   AND (c.relforcerowsecurity OR NOT pg_catalog.pg_has_role(c.relowner, 'USAGE'))
 ORDER BY 1
"""

# What the write fence of pg_dts_finish needs: ALTER DATABASE ... SET (owner or superuser) and pg_terminate_backend
# of other roles' sessions (superuser or pg_signal_backend). One row: superuser, pg_signal_backend, databases not owned.
FENCE_RIGHTS = """
SELECT r.rolsuper, pg_catalog.pg_has_role('pg_signal_backend', 'USAGE') AS signal_backend,
       COALESCE((SELECT pg_catalog.array_agg(d.datname::text ORDER BY d.datname) FROM pg_catalog.pg_database d
                  WHERE NOT pg_catalog.pg_has_role(d.datdba, 'USAGE')), '{}') AS not_owned
  FROM pg_catalog.pg_roles r WHERE r.rolname = current_user
"""


def fence_rights(conn):
    """The FENCE_RIGHTS row of the login of `conn` (rolsuper, signal_backend, not_owned), or None."""
    with conn.cursor(row_factory=namedtuple_row) as cur:
        return cur.execute(FENCE_RIGHTS).fetchone()


_NO_USAGE = """
SELECT n.nspname FROM pg_catalog.pg_namespace n
 WHERE n.nspname = ANY(%s) AND NOT pg_catalog.has_schema_privilege(n.oid, 'USAGE') ORDER BY 1
"""

# which sequences a task carries: one query for verify, the copy and the cutover
_SEQUENCES = catalog.SEQUENCES_IN_SCOPE

_NOT_OWNED = """
SELECT c.oid FROM pg_catalog.pg_class c
 WHERE c.oid = ANY(%s) AND NOT pg_catalog.pg_has_role(c.relowner, 'USAGE')
"""

_TRIGGERS = """
SELECT t.tgrelid AS relid, t.tgname AS name, t.tgenabled::text AS enabled FROM pg_catalog.pg_trigger t
 WHERE t.tgrelid = ANY(%s) AND NOT t.tgisinternal ORDER BY 1, 2
"""

_RULES = """
SELECT r.ev_class AS relid, r.rulename AS name, r.ev_enabled::text AS enabled, r.ev_type::text, r.is_instead FROM pg_catalog.pg_rewrite r
 WHERE r.ev_class = ANY(%s) AND r.rulename <> '_RETURN' ORDER BY 1, 2
"""

_FOREIGN_KEYS = """
SELECT c.conrelid, c.conname, c.confrelid, fn.nspname AS ref_schema, fc.relname AS ref_name, c.conparentid <> 0 AS inherited
  FROM pg_catalog.pg_constraint c
  JOIN pg_catalog.pg_class fc ON fc.oid = c.confrelid
  JOIN pg_catalog.pg_namespace fn ON fn.oid = fc.relnamespace
 WHERE c.contype = 'f' AND c.conrelid = ANY(%s)
 ORDER BY c.conparentid <> 0, c.conrelid, c.conname
"""

_MATVIEWS = """
SELECT n.nspname, c.relname FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'm' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e WHERE e.classid = 'pg_catalog.pg_class'::regclass
                      AND e.objid = c.oid AND e.deptype = 'e')
 ORDER BY 1, 2
"""

_EXTENSIONS = """
SELECT e.extname, e.extversion FROM pg_catalog.pg_extension e WHERE e.extname <> 'plpgsql' ORDER BY 1
"""

_COLUMN_COLLATIONS = """
SELECT DISTINCT n.nspname, co.collname, co.collprovider::text AS provider
  FROM pg_catalog.pg_attribute a
  JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
  JOIN pg_catalog.pg_namespace n ON n.oid = co.collnamespace
 WHERE a.attrelid = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped AND a.attcollation <> 0
   AND co.collname <> 'default'
 ORDER BY 1, 2
"""

_PUBLICATIONS = r"SELECT pubname FROM pg_catalog.pg_publication WHERE pubname LIKE 'pgdts\_%' ORDER BY 1"

_SELECTED_SIZE = """
SELECT COALESCE(sum(pg_catalog.pg_total_relation_size(r.oid)), 0)::bigint
  FROM pg_catalog.pg_class r WHERE r.oid = ANY(%s)
"""


def _gather_source_db(ctx, dbname):
    holder = Holder(dbname)
    ctx.src_dbs[dbname] = holder
    conn = _connect(holder, ctx.source_spec, dbname=dbname)
    if conn is None:
        return
    with conn:
        holder.fetch('settings', conn, _SETTINGS, (list(SESSION_SETTINGS),))
        holder.facts['settings'] = _settings_map(holder.get('settings'))
        try:
            tables = catalog.load_tables(conn, dbname)
        except psycopg.Error as exc:
            holder.errors['tables'] = error_text(exc)
            tables = []
        holder.facts['tables'] = tables
        holder.facts['by_oid'] = {t.oid: t for t in tables}
        if ctx.selection_error is None:
            selected = catalog.select_tables(tables, ctx.include, ctx.exclude)
        else:
            selected = []
        holder.facts['selected'] = selected
        oids = [t.oid for t in selected]
        holder.fetch('no_replica_identity', conn, _REPLICA_IDENTITY_MISSING, (oids,))
        holder.fetch('no_select', conn, _NO_SELECT, (oids,))
        holder.fetch('no_usage', conn, _NO_USAGE, (sorted({t.schema for t in selected}),))
        holder.fetch('rls_filtered', conn, _RLS_FILTERED, (oids,))
        holder.fetch('sequences', conn, _SEQUENCES, catalog.sequence_scope_params(ctx.whole_databases and not ctx.exclude, oids))
        holder.fetch('not_owned', conn, _NOT_OWNED, (oids,))
        holder.fetch('can_create', conn, "SELECT pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE')",
                     how='value')
        holder.fetch('triggers', conn, _TRIGGERS, (oids,))
        holder.fetch('rules', conn, _RULES, (oids,))
        holder.fetch('foreign_keys', conn, _FOREIGN_KEYS, (oids,))
        holder.fetch('matviews', conn, _MATVIEWS)
        holder.fetch('large_objects', conn, 'SELECT count(*) FROM pg_catalog.pg_largeobject_metadata', how='value')
        holder.fetch('extensions', conn, _EXTENSIONS)
        holder.fetch('collations', conn, _COLUMN_COLLATIONS, (oids,))
        holder.fetch('publications', conn, _PUBLICATIONS)
        holder.fetch('size', conn, _SELECTED_SIZE, (oids,), how='value')


def _gather_replication(ctx):
    """A replication=database connection to every selected database (pg_hba, REPLICATION, max_wal_senders)."""
    for dbname in ctx.reachable_dbs() or [ctx.source_spec.dbname]:
        probe = Holder(dbname)
        conn = _connect(probe, ctx.source_spec, dbname=dbname, replication='database')
        if conn is None:
            ctx.repl[dbname] = probe.failure.message
            continue
        with conn:
            probe.fetch('identify', conn, 'IDENTIFY_SYSTEM', how='one')
        ctx.repl[dbname] = probe.errors.get('identify')


def _blocking_transactions(ctx):
    return bool(ctx.src.get('long_transactions') or ctx.src.get('prepared'))


def _check_plugin_load(ctx):
    """Create a TEMPORARY logical slot with the chosen plugin in a throw-away session; (status, message, hint)."""
    src = ctx.src
    settings = src.get('settings') or {}
    wal_level = settings.get('wal_level', {}).get('setting')
    if wal_level != 'logical':
        return (FAILED, 'skipped because wal_level is %s, not logical, so no logical slot can be made (see '
                        'source.wal_level)' % (wal_level or 'unknown'),
                'Set wal_level = logical on the source and restart it, then verify again.')
    free = _free_slots(ctx)
    if free is not None and free < 1:
        return (FAILED, 'skipped because no replication slot is free on the source to try plugin %s in a temporary '
                        'slot (see source.replication_slots)' % ctx.plugin,
                'Free a replication slot or raise max_replication_slots, then verify again.')
    dbname = (ctx.reachable_dbs() or [ctx.source_spec.dbname])[0]
    probe = Holder(dbname)
    conn = _connect(probe, ctx.source_spec, dbname=dbname)
    if conn is None:
        return (FAILED, 'skipped because pgdts could not connect to database "%s" of the source: %s'
                % (dbname, probe.failure.message), CONNECTION_HINTS.get(probe.failure.kind, ''))
    slot = 'pgdts_verify_%d_%s_chk' % (os.getpid() % 100000, secrets.token_hex(4))
    timeout = PLUGIN_CHECK_BLOCKED_TIMEOUT_MS if _blocking_transactions(ctx) else PLUGIN_CHECK_TIMEOUT_MS
    try:
        with conn:
            conn.execute(sql.SQL('SET statement_timeout = {}').format(sql.Literal(timeout)))
            try:
                conn.execute('SELECT pg_catalog.pg_create_logical_replication_slot(%s, %s, true)', (slot, ctx.plugin))
            except psycopg.errors.QueryCanceled:
                return (PASS, 'decoding plugin %s loaded in database "%s"; the temporary slot then waited for open '
                              'transactions and was given up after %d s (see source.long_transactions and '
                              'source.prepared_transactions)' % (ctx.plugin, dbname, timeout // 1000), '')
            conn.execute('SELECT pg_catalog.pg_drop_replication_slot(%s)', (slot,))
    except psycopg.Error as exc:
        text = error_text(exc)
        hint = 'Fix the error above and verify again.'
        if 'could not access file' in text or 'could not load library' in text:
            hint = ('The plugin library is not installed on the source server: install it (for wal2json the '
                    'postgresql-<major>-wal2json package, or pgdts.migration.pg_dts_plugin_install), no restart needed.')
        elif 'permission denied' in text or 'must be superuser or replication role' in text:
            hint = 'Give the source role the REPLICATION attribute (see source.replication_privilege).'
        return (FAILED, 'decoding plugin %s could not be used in database "%s": %s' % (ctx.plugin, dbname, text), hint)
    return (PASS, 'decoding plugin %s loads: a temporary slot was created and dropped in database "%s"'
            % (ctx.plugin, dbname), '')


_DEST_ROLE = _SOURCE_ROLE

_DEST_SETTINGS = ('max_replication_slots', 'max_active_replication_origins', 'data_directory', 'server_version')


def _gather_destination(ctx):
    """Server-wide facts of the destination; returns the (autocommit, idle) connection for _gather_roles, or None."""
    dst = ctx.dst
    conn = _connect(dst, ctx.dest_spec)
    if conn is None:
        return None
    version = conn.info.server_version
    dst.facts['version'] = version
    dst.fetch('role', conn, _DEST_ROLE, how='one')
    dst.fetch('databases', conn, _databases_query(version))
    dst.fetch('settings', conn, _SETTINGS, (list(_DEST_SETTINGS),))
    dst.facts['settings'] = _settings_map(dst.get('settings'))
    dst.fetch('identity', conn, _SERVER_IDENTITY, how='one')
    dst.fetch('system_identifier', conn, _SYSTEM_IDENTIFIER, how='value')
    dst.fetch('version_text', conn, 'SHOW server_version', how='value')
    trusted = sql.Identifier('trusted') if version >= 130000 else sql.Literal(False)
    dst.fetch('available_extensions', conn, sql.SQL(
        'SELECT name, version, superuser, {} AS trusted FROM pg_catalog.pg_available_extension_versions').format(trusted))
    dst.fetch('catalog_collations', conn, "SELECT collname, collcollate, collprovider::text AS provider FROM pg_catalog.pg_collation "
                                          "WHERE collnamespace = 'pg_catalog'::regnamespace")
    privileges = [sql.SQL('pg_catalog.has_function_privilege({}, {}) AS {}').format(
        sql.Literal(f), sql.Literal('EXECUTE'), sql.Identifier('f%d' % i)) for i, f in enumerate(APPLY_FUNCTIONS)]
    dst.fetch('function_privileges', conn, sql.SQL('SELECT {}').format(sql.SQL(', ').join(privileges)), how='one')
    if version >= 150000:
        dst.fetch('srr_privilege', conn, "SELECT pg_catalog.has_parameter_privilege('session_replication_role', 'SET')",
                  how='value')
    dst.fetch('origins', conn, r"SELECT roname FROM pg_catalog.pg_replication_origin WHERE roname LIKE 'pgdts\_%' "
                               "ORDER BY 1")
    dst.fetch('origin_states', conn, 'SELECT count(*) FROM pg_catalog.pg_replication_origin_status', how='value')
    return conn


_DEST_RELATIONS = """
SELECT c.oid, n.nspname, c.relname, c.relkind::text AS relkind, pg_catalog.has_table_privilege(c.oid, 'SELECT') AS readable
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN unnest(%s::text[], %s::text[]) AS s(nsp, rel) ON s.nsp = n.nspname AND s.rel = c.relname
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
 ORDER BY 2, 3
"""

_DEST_SCHEMAS = """
SELECT n.nspname, (SELECT count(*) FROM pg_catalog.pg_class c WHERE c.relnamespace = n.oid) AS relations,
       pg_catalog.has_schema_privilege(n.oid, 'CREATE') AS can_create
  FROM pg_catalog.pg_namespace n WHERE n.nspname = ANY(%s) ORDER BY 1
"""

_DEST_COLLATIONS = """
SELECT n.nspname, co.collname FROM pg_catalog.pg_collation co
  JOIN pg_catalog.pg_namespace n ON n.oid = co.collnamespace
 WHERE co.collname = ANY(%s)
"""

_EXISTS_BATCH = 400


def source_schemas(ctx, dbname):
    """Schemas the migration creates in `dbname`: those of selected tables (every user schema for a whole database)."""
    holder = ctx.src_dbs.get(dbname)
    if holder is None or not holder.ok:
        return []
    schemas = {t.schema for t in holder.get('selected', [])}
    if ctx.whole_databases:
        schemas.update(t.schema for t in holder.get('tables', []))
        schemas.update(r.nspname for r in holder.get('matviews') or [])
    return sorted(schemas)


def _gather_destination_db(ctx, dbname):
    holder = Holder(dbname)
    ctx.dst_dbs[dbname] = holder
    conn = _connect(holder, ctx.dest_spec, dbname=dbname)
    if conn is None:
        return
    selected = ctx.selected(dbname) if dbname in ctx.src_dbs and ctx.src_dbs[dbname].ok else []
    with conn:
        rows = holder.fetch('relations', conn, _DEST_RELATIONS, ([t.schema for t in selected], [t.name for t in selected]))
        holder.fetch('schemas', conn, _DEST_SCHEMAS, (source_schemas(ctx, dbname),))
        holder.fetch('extensions', conn, 'SELECT extname, extversion FROM pg_catalog.pg_extension')
        names = sorted({r.collname for r in (ctx.src_dbs[dbname].get('collations') or [])}) if dbname in ctx.src_dbs else []
        holder.fetch('collations', conn, _DEST_COLLATIONS, (names,))
        has_rows = {}
        readable = [r for r in rows or [] if r.relkind in ('r', 'p') and r.readable]
        for start in range(0, len(readable), _EXISTS_BATCH):
            chunk = readable[start:start + _EXISTS_BATCH]
            parts = [sql.SQL('SELECT {}::oid, EXISTS (SELECT 1 FROM {} LIMIT 1)').format(
                sql.Literal(r.oid), sql.Identifier(r.nspname, r.relname)) for r in chunk]
            result = holder.fetch('rows_%d' % start, conn, sql.SQL(' UNION ALL ').join(parts))
            for oid, present in result or []:
                has_rows[oid] = present
        holder.facts['has_rows'] = has_rows


def _gather_roles(ctx, src_conn, dst_conn):
    """migrate_roles: what the task would do with the roles; an error is kept and raised by the item."""
    from ansible_collections.pgdts.migration.plugins.module_utils import roles
    try:
        ctx.roles_preview = roles.preview(src_conn, dst_conn)
    except Exception as exc:  # pylint: disable=broad-except  # destination.roles reports it as it always did
        ctx.roles_preview = exc


def _close(conn):
    if conn is not None:
        conn.close()


def gather(ctx):
    """Fill the Facts `ctx` from both servers. The source and destination connections of the server-wide facts stay
    open (autocommit, idle) until the end, for the roles preview that reads both at once."""
    src_conn = _gather_source(ctx)
    dst_conn = None
    try:
        if ctx.src.ok:
            _select_databases(ctx)
            for dbname in ctx.db_names:
                _gather_source_db(ctx, dbname)
            _gather_replication(ctx)
            ctx.plugin_result = _check_plugin_load(ctx)
        elif ctx.databases_option:
            ctx.db_names = [d for d in dict.fromkeys(ctx.databases_option) if d != STATE_DATABASE]
        dst_conn = _gather_destination(ctx)
        if ctx.dst.ok:
            existing = {r.datname for r in ctx.dst.get('databases') or []}
            for dbname in ctx.db_names:
                if dbname in existing:
                    _gather_destination_db(ctx, dbname)
        if ctx.migrate_roles and src_conn is not None and dst_conn is not None:
            _gather_roles(ctx, src_conn, dst_conn)
    finally:
        _close(dst_conn)
        _close(src_conn)


def setting(holder, name):
    """One setting read into holder.facts['settings']: {setting, unit, display, source}, or None."""
    return (holder.get('settings') or {}).get(name)


def _free_slots(ctx):
    value = setting(ctx.src, 'max_replication_slots')
    slots = ctx.src.get('slots')
    if value is None or slots is None:
        return None
    return int(value['setting']) - len(slots)
