# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Apply decoded transactions to the destination exactly once.

One destination transaction per batch: the source transactions it contains are applied in commit order and the
transaction records the last source commit with ``pg_replication_origin_xact_setup`` on a session bound to the
task's replication origin, so progress and data commit atomically. On a restart transactions whose commit LSN is
not above ``pg_replication_origin_progress`` are skipped.

Speed: a batch is applied set-based when it can be: per table the NET effect per key is computed (insert, update of
a set of columns, delete, delete + insert) and applied with one ``DELETE ... USING unnest()``, one
``UPDATE ... FROM unnest()`` per set of updated columns and one ``INSERT ... SELECT FROM unnest()``, each checking
its row count. Tables whose changes cannot be netted safely in a batch (a key change, REPLICA IDENTITY FULL or no
key with updates/deletes) are applied statement by statement in source order. TRUNCATE is a barrier. If anything in
the set-based attempt fails (a transient unique conflict, a missing row), the batch is rolled back and applied again
in order, statement by statement, which either succeeds or raises ApplyError naming the table, key, LSN and
statement. The final state is the same either way.

Apply session: ``session_replication_role = replica`` (triggers and foreign keys do not fire a second time),
``synchronous_commit = off``; callers confirm the source slot only with ``applied_lsn()``, which flushes.
"""

from __future__ import annotations

import operator
import struct
import time

from ansible_collections.pgdts.migration.plugins.module_utils.connection import (
    VALUE_TEXT_SETTINGS, connection_lost, error_text, sql)
from ansible_collections.pgdts.migration.plugins.module_utils.decoding import gc_paused
from ansible_collections.pgdts.migration.plugins.module_utils.lsn import int_to_lsn, lsn_to_int

try:
    import psycopg
    from psycopg.adapt import Dumper
    from psycopg.pq import Format
except ImportError:  # pragma: no cover - connection.require_psycopg() reports it
    psycopg = None
    Dumper = object
    Format = None

# The value text settings of the decoding session (decoding.READER_SETTINGS), so that text values are read back as sent.
SESSION_SETTINGS = VALUE_TEXT_SETTINGS + (
    ('search_path', 'pg_catalog'),
    ('session_replication_role', 'replica'),
    ('synchronous_commit', 'off'),
    # set-based statements join an unnest() of the batch's keys to the table: always probe the key index
    ('enable_hashjoin', 'off'),
    ('enable_mergejoin', 'off'),
)

KEYED = ('primary', 'index')
TEXT_OID = 25
TEXT_ARRAY_OID = 1009
_MISSING = object()
_VALUE_PREVIEW = 200


class TableMeta:
    """What the applier needs to know about one replicated table.

    columns: list of (name, type_name as format_type gives it, generated) - the destination's own catalog is read
    again in Applier.setup() for types, identity and generated columns. key_columns: the columns that identify a row
    in decoded changes (primary key or replica identity index); key_kind: 'primary', 'index', 'full' or None."""

    __slots__ = ('schema', 'table', 'columns', 'key_columns', 'key_kind')

    def __init__(self, schema, table, columns=None, key_columns=None, key_kind=None):
        self.schema = schema
        self.table = table
        self.columns = [tuple(c) for c in (columns or [])]
        self.key_columns = list(key_columns or [])
        self.key_kind = key_kind

    @classmethod
    def from_table(cls, table):
        """From a catalog.Table of the source."""
        return cls(table.schema, table.name, [(c.name, c.type_name, bool(c.generated)) for c in table.columns],
                   table.key_columns, table.key_kind)

    def __repr__(self):
        return 'TableMeta(%s.%s key=%s %s)' % (self.schema, self.table, self.key_kind, self.key_columns)


class ApplyError(Exception):
    """A change could not be applied. The batch's destination transaction was rolled back."""

    def __init__(self, message, table=None, key=None, lsn=None, statement=None):
        self.message = message
        self.table = table          # 'schema.table'
        self.key = key              # dict column -> text value
        self.lsn = lsn              # commit LSN (int) of the source transaction
        self.statement = statement  # SQL text with placeholders, no values
        super().__init__(self._text())

    def _text(self):
        parts = [self.message]
        details = []
        if self.table:
            details.append('table %s' % self.table)
        if self.key:
            details.append('key %s' % _preview(self.key))
        if self.lsn is not None:
            details.append('LSN %s' % int_to_lsn(self.lsn))
        if details:
            parts.append('(%s)' % ', '.join(details))
        return ' '.join(parts)

    def to_dict(self):
        return {'message': self.message, 'table': self.table, 'key': self.key,
                'lsn': int_to_lsn(self.lsn) if self.lsn is not None else None, 'statement': self.statement}


class _TextArray:
    """A text[] parameter already in PostgreSQL's binary array format (built far faster than psycopg's list dumper)."""

    __slots__ = ('data',)

    _HEADER = struct.Struct('>iiIii')

    def __init__(self, values, _null=b'\xff\xff\xff\xff', _length=struct.Struct('>i').pack):
        values = list(values)
        has_null = None in values
        if has_null:
            encoded = [None if v is None else v.encode() for v in values]
            body = b''.join([_null if r is None else _length(len(r)) + r for r in encoded])
        else:
            body = b''.join([_length(len(r)) + r for r in [v.encode() for v in values]])
        self.data = self._HEADER.pack(1, 1 if has_null else 0, TEXT_OID, len(values), 1) + body


class _TextArrayDumper(Dumper):
    format = Format.BINARY if Format is not None else None
    oid = TEXT_ARRAY_OID

    def dump(self, obj):
        return obj.data


class _ConnectionLost(Exception):
    """Carries a psycopg error that means the connection or server went away."""

    def __init__(self, error):
        super().__init__(str(error))
        self.error = error


def _quiet_rollback(conn):
    if conn.closed or conn.broken:
        return
    try:
        conn.rollback()
    except psycopg.Error:
        pass


class _NetFailed(Exception):
    """The set-based attempt cannot go on: roll back and apply the batch in order."""


def _preview(values):
    out = {}
    for name, value in values.items():
        if isinstance(value, str) and len(value) > _VALUE_PREVIEW:
            value = value[:_VALUE_PREVIEW] + '...(%d chars)' % len(value)
        out[name] = value
    return out


def _param_safe(composable, conn):
    """A composed identifier usable in a query with parameters: psycopg reads '%' as a placeholder mark."""
    return sql.SQL(composable.as_string(conn).replace('%', '%%'))


def _shown(query, conn):
    """The text of a parameterised query as a person reads it."""
    text = query.as_string(conn) if not isinstance(query, (bytes, str)) else query
    text = text.decode() if isinstance(text, bytes) else text
    return text.replace('%%', '%')


class _Column:
    __slots__ = ('name', 'ident', 'cast', 'generated', 'identity', 'type_oid', 'text_compare')

    def __init__(self, name, ident, cast, generated, identity, type_oid):
        self.name = name
        self.ident = ident              # param-safe quoted identifier
        self.cast = cast                # sql.SQL of the type without typmod, schema-qualified
        self.generated = generated      # never written
        self.identity = identity        # 'a' always, 'd' by default, '' none
        self.type_oid = type_oid
        self.text_compare = False       # REPLICA IDENTITY FULL matching: compare as text (type has no equality)


class _Target:
    """A destination table as the applier writes it."""

    def __init__(self, meta, relkind, columns, copy_lsn, conn):
        self.schema = meta.schema
        self.table = meta.table
        self.name = '%s.%s' % (meta.schema, meta.table)
        self.plain_ident = sql.Identifier(meta.schema, meta.table)      # for statements without parameters
        self.ident = _param_safe(self.plain_ident, conn)
        self.only = sql.SQL('ONLY ') if relkind != 'p' else sql.SQL('')
        self.columns = columns                     # name -> _Column
        self.key_columns = tuple(meta.key_columns)
        self.key_kind = meta.key_kind
        self.keyed = meta.key_kind in KEYED and bool(self.key_columns)
        self.copy_lsn = copy_lsn
        self.statements = {}

    def column(self, name, lsn, key):
        try:
            return self.columns[name]
        except KeyError:
            raise ApplyError('column "%s" does not exist on the destination table' % name, self.name, key,
                             lsn) from None

    def written(self, names, lsn, key):
        """The columns of `names` that are written (generated columns never are), checked to exist."""
        out = []
        for name in names:
            col = self.column(name, lsn, key)
            if not col.generated:
                out.append(col)
        return out

    def key_of(self, values):
        return {k: values.get(k) for k in self.key_columns} if values else None


_CATALOG_QUERY = """
SELECT n.nspname, c.relname, c.relkind, a.attname, pg_catalog.format_type(a.atttypid, -1), a.atttypid,
       {generated}, a.attidentity
  FROM unnest(%s::text[], %s::text[]) AS w(s, t)
  JOIN pg_catalog.pg_namespace n ON n.nspname = w.s
  JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = w.t AND c.relkind IN ('r', 'p')
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY n.nspname, c.relname, a.attnum
"""

_TYPE_QUERY = """
SELECT t.typtype, t.typcategory, t.typelem, t.typbasetype, t.typrelid,
       EXISTS (SELECT 1 FROM pg_catalog.pg_opclass oc JOIN pg_catalog.pg_am am ON am.oid = oc.opcmethod
                WHERE am.amname IN ('btree', 'hash') AND oc.opcdefault
                  AND (oc.opcintype = t.oid
                       OR oc.opcintype IN (SELECT castx.casttarget FROM pg_catalog.pg_cast castx
                                            WHERE castx.castsource = t.oid AND castx.castmethod = 'b')))
  FROM pg_catalog.pg_type t WHERE t.oid = %s
"""


class Applier:
    """Apply batches of decoded transactions to one destination database, exactly once.

    conn: a NON-autocommit connection to the destination database, used only by this applier.
    tables: dict (schema, table) -> TableMeta. copy_lsn: dict (schema, table) -> int; a change to that table is
    applied only when its transaction's commit LSN is >= that value. net: try set-based apply first."""

    def __init__(self, conn, origin_name, tables, copy_lsn=None, net=True):
        self.conn = conn
        self.origin_name = origin_name
        self.tables = {tuple(k): v for k, v in tables.items()}
        self.copy_lsn = {tuple(k): lsn_to_int(v) for k, v in (copy_lsn or {}).items()}
        self.net = net
        self.targets = {}
        self._is_setup = False
        self._reload_catalog = False
        self.stats = {'batches': 0, 'net_batches': 0, 'ordered_batches': 0, 'fallbacks': 0, 'statements': 0,
                      'net_seconds': 0.0}
        self.last_fallback_reason = None

    # -- session -------------------------------------------------------------------------------------------------
    def setup(self):
        """Create the origin if missing, bind this session to it, set the apply settings, read the catalog."""
        if self.conn.autocommit:
            raise ApplyError('the Applier needs a connection that is not in autocommit mode')
        conn = self.conn
        conn.adapters.register_dumper(_TextArray, _TextArrayDumper)
        try:
            with conn.cursor() as cur:
                for name, value in SESSION_SETTINGS:
                    cur.execute('SELECT pg_catalog.set_config(%s, %s, false)', (name, value))
                cur.execute('SELECT pg_catalog.pg_replication_origin_oid(%s)', (self.origin_name,))
                if cur.fetchone()[0] is None:
                    cur.execute('SELECT pg_catalog.pg_replication_origin_create(%s)', (self.origin_name,))
                conn.commit()
                cur.execute('SELECT pg_catalog.pg_replication_origin_session_is_setup()')
                if not cur.fetchone()[0]:
                    cur.execute('SELECT pg_catalog.pg_replication_origin_session_setup(%s)', (self.origin_name,))
                conn.commit()
                self._load_catalog(cur)
            conn.commit()
        except ApplyError:
            conn.rollback()
            raise
        except psycopg.Error as exc:
            if connection_lost(exc, conn):
                raise
            conn.rollback()
            raise ApplyError('cannot set up the apply session for replication origin "%s": %s'
                             % (self.origin_name, error_text(exc, detail=True))) from None
        self._is_setup = True

    def _load_catalog(self, cur):
        self.targets = {}
        keys = list(self.tables)
        generated = 'a.attgenerated' if self.conn.info.server_version >= 120000 else "''::\"char\""
        cur.execute(_CATALOG_QUERY.format(generated=generated), ([k[0] for k in keys], [k[1] for k in keys]))
        found = {}
        for schema, table, relkind, name, type_name, type_oid, gen, identity in cur.fetchall():
            entry = found.setdefault((schema, table), [relkind, {}])
            entry[1][name] = _Column(name, _param_safe(sql.Identifier(name), self.conn),
                                     sql.SQL(type_name.replace('%', '%%')), bool(gen and gen != '\x00'),
                                     identity if identity and identity != '\x00' else '', type_oid)
        missing = [k for k in keys if k not in found]
        if missing:
            raise ApplyError('table %s does not exist on the destination' % ', '.join('%s.%s' % k for k in missing),
                             table='%s.%s' % missing[0])
        type_cache = {}
        for key, meta in self.tables.items():
            relkind, columns = found[key]
            target = _Target(meta, relkind, columns, self.copy_lsn.get(key), self.conn)
            for name in target.key_columns:
                if name not in columns:
                    raise ApplyError('key column "%s" does not exist on the destination table' % name, target.name)
            if not target.keyed:
                for col in columns.values():
                    col.text_compare = not self._type_has_equality(cur, col.type_oid, type_cache, 0)
            self.targets[key] = target

    def _type_has_equality(self, cur, oid, cache, depth):
        """Whether values of this type can be compared with '=' (typed) when matching REPLICA IDENTITY FULL rows."""
        if oid in cache:
            return cache[oid]
        if depth > 10:
            return False
        cache[oid] = False
        cur.execute(_TYPE_QUERY, (oid,))
        row = cur.fetchone()
        result = False
        if row is not None:
            typtype, category, elem, base, relid, has_opclass = row
            if typtype == 'd':
                result = self._type_has_equality(cur, base, cache, depth + 1)
            elif category == 'A' and elem:
                result = self._type_has_equality(cur, elem, cache, depth + 1)
            elif typtype == 'c':
                cur.execute('SELECT atttypid FROM pg_catalog.pg_attribute WHERE attrelid = %s AND attnum > 0 '
                            'AND NOT attisdropped', (relid,))
                result = all(self._type_has_equality(cur, r[0], cache, depth + 1) for r in cur.fetchall())
            elif typtype in ('e', 'r', 'm'):
                result = True
            elif typtype == 'b':
                result = bool(has_opclass)
        cache[oid] = result
        return result

    def close(self):
        """Unbind the session from the origin (the origin itself stays)."""
        try:
            with self.conn.cursor() as cur:
                cur.execute('SELECT pg_catalog.pg_replication_origin_session_is_setup()')
                if cur.fetchone()[0]:
                    cur.execute('SELECT pg_catalog.pg_replication_origin_session_reset()')
            self.conn.commit()
        except psycopg.Error:
            self.conn.rollback()
        self._is_setup = False

    def _progress(self, cur, flush):
        cur.execute('SELECT pg_catalog.pg_replication_origin_progress(%s, %s)::text', (self.origin_name, flush))
        row = cur.fetchone()
        return lsn_to_int(row[0]) if row and row[0] else 0

    def applied_lsn(self):
        """The commit LSN of the last source transaction committed (and flushed) on the destination; 0 when none.
        This is what the source slot may be confirmed to."""
        with self.conn.cursor() as cur:
            value = self._progress(cur, True)
        self.conn.rollback()
        return value

    # -- apply ---------------------------------------------------------------------------------------------------
    def apply(self, transactions, plan=None):
        """Apply a batch in ONE destination transaction. Returns counts and the last commit applied.

        `plan` (from plan() on the same transactions) saves building the statements again."""
        with gc_paused():
            return self._apply(transactions, plan)

    def plan(self, transactions):
        """Build the set-based statements of a batch without using the destination, so that a caller can do it
        while the previous batch is being applied. None when the batch must be applied another way (apply() then
        decides, and reports any error in order)."""
        if not self._is_setup or self._reload_catalog or not self.net or not transactions:
            return None
        try:
            with gc_paused():
                return self._plan(list(transactions))
        except Exception:  # pylint: disable=broad-except
            return None

    def _plan(self, txns):
        segments = list(self._net_segments(txns))
        if len(segments) != 1:
            return None     # TRUNCATEs are applied in their place in the batch
        states, count, _truncate = segments[0]
        statements = []
        for state in states.values():
            if state.ordered:
                return None
            statements.extend(self._table_statements(state))
        return _Plan(txns, statements, count)

    def _apply(self, transactions, plan=None):
        if not self._is_setup:
            raise ApplyError('Applier.setup() must run before apply()')
        txns = list(transactions)
        for before, after in zip(txns, txns[1:]):
            if after.commit_lsn <= before.commit_lsn:
                raise ApplyError('transactions are not in commit order (%s after %s)'
                                 % (int_to_lsn(after.commit_lsn), int_to_lsn(before.commit_lsn)), lsn=after.commit_lsn)
        conn = self.conn
        if self._reload_catalog:
            # the last batch failed: the user may have fixed the destination's tables since
            plan = None
            try:
                with conn.cursor() as cur:
                    self._load_catalog(cur)
                conn.commit()
            except ApplyError:
                conn.rollback()
                raise
            except psycopg.Error as exc:
                if connection_lost(exc, conn):
                    raise
                conn.rollback()
                raise ApplyError('cannot read the destination catalog: %s' % error_text(exc, detail=True)) from None
            self._reload_catalog = False
        try:
            with conn.cursor() as cur:
                progress = self._progress(cur, False)
                todo = [t for t in txns if t.commit_lsn > progress]
                result = {'transactions': len(todo), 'changes': 0, 'skipped_transactions': len(txns) - len(todo),
                          'last_commit_lsn': progress, 'last_end_lsn': None, 'last_commit_time': None,
                          'mode': None}
                if not todo:
                    conn.rollback()
                    return result
                mode = 'ordered'
                if plan is not None and (plan.transactions != txns or len(todo) != len(txns)):
                    plan = None     # built for other transactions, or part of the batch was applied before
                if self.net:
                    try:
                        if plan is not None:
                            for statement in plan.statements:
                                self._net_execute(cur, *statement)
                            result['changes'] = plan.changes
                        else:
                            result['changes'] = self._apply_net(cur, todo)
                        mode = 'net'
                    except _NetFailed as failed:
                        conn.rollback()
                        self.stats['fallbacks'] += 1
                        self.last_fallback_reason = str(failed)
                if mode == 'ordered':
                    result['changes'] = self._apply_ordered(cur, todo)
                last = todo[-1]
                # a transaction id makes the commit write a commit record, which carries the origin's progress
                if conn.info.server_version >= 130000:
                    cur.execute('SELECT pg_catalog.pg_current_xact_id()')
                else:
                    cur.execute('SELECT pg_catalog.txid_current()')
                cur.execute('SELECT pg_catalog.pg_replication_origin_xact_setup(%s::pg_lsn, '
                            'COALESCE(%s::timestamptz, pg_catalog.now()))',
                            (int_to_lsn(last.commit_lsn), last.commit_time))
            conn.commit()
        except _ConnectionLost as lost:
            _quiet_rollback(conn)
            raise lost.error from None      # the worker retries after an outage: keep psycopg's own error
        except ApplyError:
            _quiet_rollback(conn)
            self._reload_catalog = True
            raise
        except psycopg.Error as exc:
            _quiet_rollback(conn)
            if connection_lost(exc, conn):
                raise
            self._reload_catalog = True
            raise ApplyError('cannot apply the batch: %s' % error_text(exc, detail=True)) from None
        except BaseException:
            _quiet_rollback(conn)
            raise
        self.stats['batches'] += 1
        self.stats['%s_batches' % mode] += 1
        result.update({'mode': mode, 'last_commit_lsn': last.commit_lsn, 'last_end_lsn': last.end_lsn,
                       'last_commit_time': last.commit_time})
        return result

    # -- shared helpers ------------------------------------------------------------------------------------------
    def _target(self, schema, table, lsn):
        target = self.targets.get((schema, table))
        if target is None:
            raise ApplyError('a change arrived for a table that is not part of this sync', '%s.%s' % (schema, table),
                             lsn=lsn)
        return target

    def _execute(self, cur, query, params):
        self.stats['statements'] += 1
        cur.execute(query, params)
        return cur.rowcount

    def _truncate(self, cur, change, lsn):
        targets = []
        for schema, table in change.truncate:
            target = self._target(schema, table, lsn)
            if target.copy_lsn is not None and lsn < target.copy_lsn:
                continue
            targets.append(target)
        if not targets:
            return 0
        query = sql.SQL('TRUNCATE {}').format(sql.SQL(', ').join(t.only + t.plain_ident for t in targets))
        if change.restart_identity:
            query += sql.SQL(' RESTART IDENTITY')
        if change.cascade:
            query += sql.SQL(' CASCADE')
        try:
            self._execute(cur, query, None)
        except psycopg.Error as exc:
            if connection_lost(exc, self.conn):
                raise _ConnectionLost(exc) from None
            raise ApplyError('cannot apply TRUNCATE: %s' % error_text(exc, detail=True), ', '.join(t.name for t in targets),
                             None, lsn, query.as_string(self.conn)) from None
        return 1

    # -- ordered apply ---------------------------------------------------------------------------------------------
    def _apply_ordered(self, cur, txns):
        count = 0
        for txn in txns:
            lsn = txn.commit_lsn
            for change in txn.changes:
                if change.kind == 'T':
                    count += self._truncate(cur, change, lsn)
                    continue
                target = self._target(change.schema, change.table, lsn)
                if target.copy_lsn is not None and lsn < target.copy_lsn:
                    continue
                self._apply_one(cur, target, change, lsn)
                count += 1
        return count

    def _apply_one(self, cur, target, change, lsn):
        kind = change.kind
        if kind == 'I':
            self._insert_one(cur, target, change.new, lsn)
        elif kind == 'U':
            self._update_one(cur, target, change, lsn)
        elif kind == 'D':
            self._delete_one(cur, target, change, lsn)
        else:
            raise ApplyError('unknown change kind %r' % kind, target.name, lsn=lsn)

    def _run_one(self, cur, target, query, params, lsn, key, what):
        try:
            return self._execute(cur, query, params)
        except psycopg.Error as exc:
            if connection_lost(exc, self.conn):
                raise _ConnectionLost(exc) from None
            self._statement_error(exc, target, query, lsn, key, what)
        return 0

    def _statement_error(self, exc, target, query, lsn, key, what):
        if isinstance(exc, psycopg.errors.UniqueViolation):
            message = 'cannot apply %s: duplicate key on the destination: %s' % (what, error_text(exc, detail=True))
        else:
            message = 'cannot apply %s: %s' % (what, error_text(exc, detail=True))
        raise ApplyError(message, target.name, key, lsn, _shown(query, self.conn))

    def _insert_one(self, cur, target, new, lsn):
        key = target.key_of(new) if target.keyed else None
        cols = target.written(new, lsn, key)
        query = _insert_values_sql(target, cols)
        self._run_one(cur, target, query, [new[c.name] for c in cols], lsn, key or _preview(new), 'INSERT')

    def _match(self, target, change, lsn):
        """(WHERE clause, params, key for messages, ctid_limited) that finds the changed row."""
        if target.keyed:
            source = change.old if change.old else change.new
            values = {}
            for name in target.key_columns:
                value = source.get(name, _MISSING) if source else _MISSING
                if value is _MISSING:
                    raise ApplyError('cannot apply %s: the decoded change does not carry key column "%s"'
                                     % (_KIND_NAMES[change.kind], name), target.name, _preview(source or {}), lsn)
                values[name] = value
            conds, params = [], []
            for name, value in values.items():
                col = target.columns[name]
                conds.append(sql.SQL('t.{} = {}::{}').format(col.ident, sql.Placeholder(), col.cast))
                params.append(value)
            return sql.SQL(' AND ').join(conds), params, values, False
        if not change.old:
            raise ApplyError('cannot apply %s: the table has no primary key or replica identity, so the row cannot '
                             'be found' % _KIND_NAMES[change.kind], target.name, None, lsn)
        conds, params = [], []
        for name, value in change.old.items():
            col = target.column(name, lsn, _preview(change.old))
            if col.generated:
                continue
            ident = col.ident
            if value is None:
                conds.append(sql.SQL('t.{} IS NULL').format(ident))
            elif col.text_compare:
                conds.append(sql.SQL('t.{}::text = {}').format(ident, sql.Placeholder()))
                params.append(value)
            else:
                conds.append(sql.SQL('t.{} = {}::{}').format(ident, sql.Placeholder(), col.cast))
                params.append(value)
        where = sql.SQL(' AND ').join(conds) if conds else sql.SQL('true')
        return where, params, _preview(change.old), True

    def _located(self, target, where, ctid_limited):
        if not ctid_limited:
            return where
        query = sql.SQL('t.ctid = (SELECT t.ctid FROM {}{} AS t WHERE {} LIMIT 1)')
        return query.format(target.only, target.ident, where)

    def _update_one(self, cur, target, change, lsn):
        where, params, key, limited = self._match(target, change, lsn)
        new = change.new or {}
        cols = target.written(new, lsn, key)
        key_change = target.keyed and change.old and any(change.old.get(k) != new.get(k, change.old.get(k))
                                                         for k in target.key_columns)
        if target.keyed and not key_change:
            cols = [c for c in cols if c.name not in target.key_columns]
        always = [c for c in cols if c.identity == 'a']
        cols = [c for c in cols if c.identity != 'a']
        located = self._located(target, where, limited)
        assignments = [sql.SQL('{} = {}::{}').format(c.ident, sql.Placeholder(), c.cast) for c in cols]
        if not assignments:
            first = next(iter(c for c in ([target.columns[k] for k in target.key_columns] if target.keyed
                                          else target.columns.values())
                              if not c.generated and c.identity != 'a'), None)
            if first is not None:
                assignments = [sql.SQL('{} = t.{}').format(first.ident, first.ident)]
        guard = [sql.SQL('t.{} = {}::{}').format(c.ident, sql.Placeholder(), c.cast) for c in always]
        condition = sql.SQL(' AND ').join([located] + guard)
        if assignments:
            query = sql.SQL('UPDATE {}{} AS t SET {} WHERE {}').format(target.only, target.ident,
                                                                       sql.SQL(', ').join(assignments), condition)
            values = [new[c.name] for c in cols] + params + [new[c.name] for c in always]
        else:
            query = sql.SQL('SELECT 1 FROM {}{} AS t WHERE {} LIMIT 1').format(target.only, target.ident, condition)
            values = params + [new[c.name] for c in always]
        if self._run_one(cur, target, query, values, lsn, key, 'UPDATE') >= 1:
            return
        if always:
            # A GENERATED ALWAYS identity value changed: UPDATE cannot write it, so move the row: delete it and
            # insert it again with the new values (columns that were not sent keep their old value).
            written = [c for c in target.columns.values() if not c.generated]
            sources = []
            values = params[:]
            for col in written:
                if col.name in new:
                    sources.append(sql.SQL('{}::{}').format(sql.Placeholder(), col.cast))
                    values.append(new[col.name])
                else:
                    sources.append(sql.SQL('d.{}').format(col.ident))
            query = sql.SQL('WITH d AS (DELETE FROM {}{} AS t WHERE {} RETURNING t.*) '
                            'INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM d').format(
                                target.only, target.ident, located, target.ident,
                                sql.SQL(', ').join(c.ident for c in written),
                                sql.SQL(', ').join(sources))
            if self._run_one(cur, target, query, values, lsn, key, 'UPDATE') >= 1:
                return
        raise ApplyError('cannot apply UPDATE: the row does not exist on the destination', target.name, key, lsn,
                         _shown(query, self.conn))

    def _delete_one(self, cur, target, change, lsn):
        where, params, key, limited = self._match(target, change, lsn)
        located = self._located(target, where, limited)
        query = sql.SQL('DELETE FROM {}{} AS t WHERE {}').format(target.only, target.ident, located)
        if self._run_one(cur, target, query, params, lsn, key, 'DELETE') < 1:
            raise ApplyError('cannot apply DELETE: the row does not exist on the destination', target.name, key, lsn,
                             _shown(query, self.conn))

    # -- set-based apply -----------------------------------------------------------------------------------------
    def _apply_net(self, cur, txns):
        count = 0
        for states, changes, truncate in self._net_segments(txns):
            if truncate is not None:
                count += self._truncate(cur, *truncate)
            else:
                self._flush_net(cur, states)
                count += changes
        return count

    def _net_segments(self, txns):
        """The batch's net changes per table, split at each TRUNCATE: yields (states, changes, None) for the changes
        between TRUNCATEs and (None, 0, (change, lsn)) for each TRUNCATE."""
        states = {}
        count = 0
        for txn in txns:
            lsn = txn.commit_lsn
            for change in txn.changes:
                if change.kind == 'T':
                    yield states, count, None
                    yield None, 0, (change, lsn)
                    states, count = {}, 0
                    continue
                key = (change.schema, change.table)
                state = states.get(key)
                if state is None:
                    target = self._target(change.schema, change.table, lsn)
                    state = states[key] = _NetTable(target)
                else:
                    target = state.target
                if target.copy_lsn is not None and lsn < target.copy_lsn:
                    continue
                state.add(change, lsn)
                count += 1
        yield states, count, None

    def _flush_net(self, cur, states):
        for state in states.values():
            if state.ordered:
                for change, lsn in state.raw:
                    self._apply_one(cur, state.target, change, lsn)
            else:
                self._flush_table(cur, state)

    def _net_execute(self, cur, target, query, params, expected, what):
        started = time.perf_counter()
        try:
            count = self._execute(cur, query, params)
            self.stats['net_seconds'] += time.perf_counter() - started
        except psycopg.Error as exc:
            if connection_lost(exc, self.conn):
                raise _ConnectionLost(exc) from None
            raise _NetFailed('set-based %s on %s failed: %s' % (what, target.name, error_text(exc, detail=True))) from None
        if count != expected:
            raise _NetFailed('set-based %s on %s touched %d rows instead of %d' % (what, target.name, count, expected))

    def _flush_table(self, cur, state):
        for statement in self._table_statements(state):
            self._net_execute(cur, *statement)

    def _table_statements(self, state):
        """The set-based statements of one table's net changes: (target, query, params, expected rows, what)."""
        target = state.target
        lsn = state.last_lsn
        out = []
        if state.plain:
            groups = {}
            for new in state.plain:
                groups.setdefault(tuple(new), []).append(new)
            for names, rows in groups.items():
                out.append(self._net_insert(target, names, rows, lsn))
        if not state.entries:
            return out
        deletes, inserts, updates = [], {}, {}
        for key, entry in state.entries.items():
            op = entry[0]
            if op == 'U':
                names = tuple(n for n in entry[1] if n not in target.key_columns)
                updates.setdefault(names, []).append((key, entry[1]))
                continue
            if op in ('D', 'DI'):
                deletes.append(key)
            if op in ('I', 'DI'):
                inserts.setdefault(tuple(entry[1]), []).append(entry[1])
        if deletes:
            kcols = [target.columns[k] for k in target.key_columns]
            query = target.statements.get('net_delete')
            if query is None:
                query = target.statements['net_delete'] = sql.SQL('DELETE FROM {}{} AS t USING {} WHERE {}').format(
                    target.only, target.ident, _batch_rows(len(kcols), kcols), _key_join(kcols, 0)).as_bytes(self.conn)
            out.append((target, query, state.key_arrays(deletes), len(deletes), 'DELETE'))
        for names, rows in updates.items():
            out.append(self._net_update(target, names, rows, lsn, state))
        for names, rows in inserts.items():
            out.append(self._net_insert(target, names, rows, lsn))
        return out

    def _net_update(self, target, names, rows, lsn, state):
        kcols = [target.columns[k] for k in target.key_columns]
        written = target.written(names, lsn, None)
        cols = [c for c in written if c.identity != 'a']
        always = [c for c in written if c.identity == 'a']
        cache_key = ('net_update', names)
        query = target.statements.get(cache_key)
        nkeys = len(kcols)
        if query is None:
            assignments = [sql.SQL('{} = d.{}::{}').format(c.ident, sql.Identifier('c%d' % (nkeys + i)), c.cast)
                           for i, c in enumerate(cols)]
            if not assignments:
                assignments = [sql.SQL('{} = t.{}').format(kcols[0].ident, kcols[0].ident)]
            conds = [_key_join(kcols, 0)]
            conds += [sql.SQL('t.{} = d.{}::{}').format(c.ident, sql.Identifier('c%d' % (nkeys + len(cols) + i)), c.cast)
                      for i, c in enumerate(always)]
            width = nkeys + len(cols) + len(always)
            query = target.statements[cache_key] = sql.SQL('UPDATE {}{} AS t SET {} FROM {} WHERE {}').format(
                target.only, target.ident, sql.SQL(', ').join(assignments), _batch_rows(width, kcols),
                sql.SQL(' AND ').join(conds)).as_bytes(self.conn)
        params = state.key_arrays([key for key, _values in rows])
        params += [_TextArray([values[c.name] for _key, values in rows]) for c in cols]
        params += [_TextArray([values[c.name] for _key, values in rows]) for c in always]
        return target, query, params, len(rows), 'UPDATE'

    def _net_insert(self, target, names, rows, lsn):
        cache_key = ('net_insert', names)
        entry = target.statements.get(cache_key)
        if entry is None:
            cols = target.written(names, lsn, None)
            overriding = sql.SQL(' OVERRIDING SYSTEM VALUE') if any(c.identity == 'a' for c in cols) else sql.SQL('')
            order = None
            if target.keyed and all(k in names for k in target.key_columns):
                position = {c.name: i for i, c in enumerate(cols)}
                order = [(position[k], target.columns[k]) for k in target.key_columns]
            query = sql.SQL('INSERT INTO {} ({}){} SELECT {} FROM {}').format(
                target.ident, sql.SQL(', ').join(c.ident for c in cols), overriding,
                sql.SQL(', ').join(sql.SQL('d.{}::{}').format(sql.Identifier('c%d' % i), c.cast)
                                   for i, c in enumerate(cols)),
                _batch_rows(len(cols), order)).as_bytes(self.conn)
            entry = target.statements[cache_key] = (query, [c.name for c in cols])
        query, colnames = entry
        params = [_TextArray([row[name] for row in rows]) for name in colnames]
        return target, query, params, len(rows), 'INSERT'


class _Plan:
    """The statements of a batch's net changes, built ahead of applying it."""

    __slots__ = ('transactions', 'statements', 'changes')

    def __init__(self, transactions, statements, changes):
        self.transactions = transactions
        self.statements = statements
        self.changes = changes


def _batch_rows(width, order=None):
    """The batch's rows as relation d(c0, c1, ...) from `width` text[] parameters. With `order` (key columns, or
    (position, column) pairs) the rows come in key order, so index probes and heap pages are visited in order."""
    arrays = sql.SQL(', ').join([sql.SQL('{}::text[]').format(sql.Placeholder())] * width)
    aliases = sql.SQL(', ').join(sql.Identifier('c%d' % i) for i in range(width))
    if not order:
        return sql.SQL('unnest({}) AS d({})').format(arrays, aliases)
    pairs = [item if isinstance(item, tuple) else (i, item) for i, item in enumerate(order)]
    keys = sql.SQL(', ').join(sql.SQL('u.{}::{}').format(sql.Identifier('c%d' % i), col.cast) for i, col in pairs)
    return sql.SQL('(SELECT * FROM unnest({}) AS u({}) ORDER BY {}) AS d').format(arrays, aliases, keys)


def _key_join(kcols, offset):
    return sql.SQL(' AND ').join(sql.SQL('t.{} = d.{}::{}').format(c.ident, sql.Identifier('c%d' % (offset + i)),
                                                                   c.cast)
                                 for i, c in enumerate(kcols))


def _insert_values_sql(target, cols):
    key = ('insert', tuple(c.name for c in cols))
    query = target.statements.get(key)
    if query is None:
        overriding = sql.SQL(' OVERRIDING SYSTEM VALUE') if any(c.identity == 'a' for c in cols) else sql.SQL('')
        if cols:
            query = sql.SQL('INSERT INTO {} ({}){} VALUES ({})').format(
                target.ident, sql.SQL(', ').join(c.ident for c in cols), overriding,
                sql.SQL(', ').join(sql.SQL('{}::{}').format(sql.Placeholder(), c.cast) for c in cols))
        else:
            query = sql.SQL('INSERT INTO {} DEFAULT VALUES').format(target.ident)
        target.statements[key] = query
    return query


_KIND_NAMES = {'I': 'INSERT', 'U': 'UPDATE', 'D': 'DELETE', 'T': 'TRUNCATE'}


class _NetTable:
    """The net effect of a batch's changes on one table, per key.

    entries: key -> [op, values, lsn] with op 'I' (insert full row), 'U' (update these columns), 'D' (delete) or 'DI'
    (delete, then insert full row); the key is the key column's value, or a tuple of them for a multi-column key.
    Tables that cannot be netted keep their changes in `raw` order. Change objects are never modified."""

    __slots__ = ('target', 'entries', 'plain', 'raw', 'ordered', 'last_lsn', 'keyget', 'single')

    def __init__(self, target):
        self.target = target
        self.entries = {}
        self.plain = []
        self.raw = []
        self.ordered = False
        self.last_lsn = None
        kcols = target.key_columns
        self.keyget = operator.itemgetter(*kcols) if target.keyed else None
        self.single = len(kcols) == 1

    def add(self, change, lsn):
        self.raw.append((change, lsn))
        self.last_lsn = lsn
        if self.ordered:
            return
        keyget = self.keyget
        kind = change.kind
        if keyget is None:
            if kind == 'I':
                self.plain.append(change.new)
            else:
                self.ordered = True
            return
        entries = self.entries
        try:
            if kind == 'U':
                new = change.new
                key = keyget(new)
                old = change.old
                if old is not None and keyget(old) != key:
                    self.ordered = True   # a key change: apply this table in order
                    return
                entry = entries.get(key)
                if entry is None:
                    entries[key] = ['U', new, lsn]
                elif entry[0] == 'D':
                    raise _NetFailed('UPDATE of a row the batch deleted in %s' % self.target.name)
                else:
                    entry[1] = {**entry[1], **new}
                    entry[2] = lsn
            elif kind == 'I':
                new = change.new
                key = keyget(new)
                entry = entries.get(key)
                if entry is None:
                    entries[key] = ['I', new, lsn]
                elif entry[0] == 'D':
                    entry[0] = 'DI'
                    entry[1] = new
                    entry[2] = lsn
                else:
                    raise _NetFailed('INSERT of a key that the batch already has in %s' % self.target.name)
            elif kind == 'D':
                key = keyget(change.old)
                entry = entries.get(key)
                if entry is None:
                    entries[key] = ['D', None, lsn]
                elif entry[0] == 'I':
                    del entries[key]
                elif entry[0] == 'D':
                    raise _NetFailed('DELETE of a row the batch deleted in %s' % self.target.name)
                else:
                    entry[0] = 'D'
                    entry[1] = None
                    entry[2] = lsn
            else:
                self.ordered = True
        except (KeyError, TypeError):
            self.ordered = True   # a change without its key columns (or without an old key): apply in order

    def key_arrays(self, keys):
        """text[] parameters for the key columns of `keys`."""
        if self.single:
            return [_TextArray(keys)]
        return [_TextArray(column) for column in zip(*keys)]


def drop_origin(conn, origin_name, missing_ok=True):
    """Drop a replication origin (the session using it must have ended or reset it). True when it existed."""
    with conn.cursor() as cur:
        cur.execute('SELECT pg_catalog.pg_replication_origin_oid(%s)', (origin_name,))
        if cur.fetchone()[0] is None:
            if not conn.autocommit:
                conn.rollback()
            if missing_ok:
                return False
            raise ApplyError('replication origin "%s" does not exist' % origin_name)
        try:
            cur.execute('SELECT pg_catalog.pg_replication_origin_drop(%s)', (origin_name,))
        except psycopg.Error as exc:
            if not conn.autocommit:
                conn.rollback()
            raise ApplyError('cannot drop replication origin "%s": %s' % (origin_name, error_text(exc, detail=True))) from None
    if not conn.autocommit:
        conn.commit()
    return True


def origin_progress(conn, origin_name):
    """pg_replication_origin_progress of an origin from any session (0 when none); None when it does not exist."""
    with conn.cursor() as cur:
        cur.execute('SELECT pg_catalog.pg_replication_origin_oid(%s)', (origin_name,))
        if cur.fetchone()[0] is None:
            result = None
        else:
            cur.execute('SELECT pg_catalog.pg_replication_origin_progress(%s, true)::text', (origin_name,))
            row = cur.fetchone()
            result = lsn_to_int(row[0]) if row and row[0] else 0
    if not conn.autocommit:
        conn.rollback()
    return result


# -- values the wal2json of Debian 12 (2.5) cannot carry ------------------------------------------------------------

# numeric, real, double precision: wal2json before 2.6 (no numeric-data-types-as-string) prints NaN, Infinity and
# -Infinity of these as JSON null, the same as a real NULL, so the sync applies them as NULL.
AMBIGUOUS_NULL_TYPE_OIDS = (700, 701, 1700)
REPAIR_BATCH = 500


def repair_ambiguous_nulls(source, destination, dbname, tables, batch=REPAIR_BATCH):
    """Under the write fence, after the catch-up (pg_dts_finish of a wal2json task): every destination row of `tables`
    (catalog.Table of the source) that holds NULL in a numeric/real/double precision column gets that column's value
    from the source row with the same key, where they differ (a NaN or Infinity wal2json sent as null; a real NULL
    stays). Tables without a key cannot be addressed and are returned for the comparison to judge.
    Returns ([(table.qualified, rows corrected)], [table.qualified without a key])."""
    from ansible_collections.pgdts.migration.plugins.module_utils.connection import WRITER_OPTIONS, connect
    corrected, keyless = [], []
    with connect(source, dbname, application_name='pgdts-finish') as src, \
            connect(destination, dbname, application_name='pgdts-finish', options=WRITER_OPTIONS) as dst:
        src.execute('SET row_security = off')
        for table in tables:
            cols = [c.name for c in table.columns if c.type_oid in AMBIGUOUS_NULL_TYPE_OIDS and not c.generated]
            keys = list(table.key_columns)
            if not cols:
                continue
            if not keys:
                keyless.append(table.qualified)
                continue
            target = sql.Identifier(table.schema, table.name)
            texts = sql.SQL(', ').join(sql.SQL('{}::pg_catalog.text').format(sql.Identifier(c)) for c in keys + cols)
            nulls = sql.SQL(' OR ').join(sql.SQL('{} IS NULL').format(sql.Identifier(c)) for c in cols)
            found = dst.execute(sql.SQL('SELECT {} FROM {} WHERE {}').format(texts, target, nulls)).fetchall()
            key_row = sql.SQL('({})').format(sql.SQL(', ').join(sql.Identifier(k) for k in keys))
            one_key = sql.SQL('({})').format(sql.SQL(', ').join(sql.Placeholder() for _k in keys))
            update = sql.SQL('UPDATE {} SET {} WHERE {} = {}').format(
                target, sql.SQL(', ').join(sql.SQL('{} = {}').format(sql.Identifier(c), sql.Placeholder()) for c in cols),
                key_row, one_key)
            count = 0
            for start in range(0, len(found), batch):
                part = {tuple(row[:len(keys)]): tuple(row[len(keys):]) for row in found[start:start + batch]}
                query = sql.SQL('SELECT {} FROM {} WHERE {} IN ({})').format(
                    texts, target, key_row, sql.SQL(', ').join(one_key for _row in part))
                params = [value for key in part for value in key]
                with dst.transaction():
                    for row in src.execute(query, params).fetchall():
                        key, values = tuple(row[:len(keys)]), tuple(row[len(keys):])
                        if key in part and part[key] != values:
                            dst.execute(update, list(values) + list(key))
                            count += 1
            if count:
                corrected.append((table.qualified, count))
    return corrected, keyless
