# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Logical decoding: publications, slots, and reading decoded transactions into one change model.

Two output plugins feed the same model:

* ``pgoutput`` (built in, the default) through ``pg_logical_slot_peek_binary_changes`` with protocol version 1.
  The binary messages (Begin, Commit, Origin, Relation, Type, Insert, Update, Delete, Truncate) are parsed with
  ``struct``; column values arrive as text, ``u`` marks an unchanged TOAST value and ``n`` a NULL.
* ``wal2json`` (format version 2) through ``pg_logical_slot_peek_changes``. JSON numbers are kept as the exact text
  the server printed (never rounded through float). ``numeric-data-types-as-string`` is requested so that NaN and
  Infinity arrive as text; a wal2json that does not know that option prints them as JSON ``null``, so with such a
  plugin a NULL in a numeric or floating point column stops the read with a DecodeError instead of writing a wrong
  value.

Values in the model are exactly the text the source's output functions produced in the reading session; the reader
fixes the settings that shape that text (DateStyle, IntervalStyle, TimeZone, extra_float_digits, bytea_output,
lc_monetary, search_path) so the destination can take them back as input unchanged.

Reading never consumes the slot. ``SlotReader.read()`` returns whole transactions in commit order from the
position the caller has confirmed; ``SlotReader.confirm()`` advances the slot, and the caller only ever confirms
what the destination has committed (see ``apply.Applier``).
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import json
import re
import struct
import sys
import threading
import time

from ansible_collections.pgdts.migration.plugins.module_utils.connection import (
    VALUE_TEXT_SETTINGS, connection_lost, error_text, sql)
from ansible_collections.pgdts.migration.plugins.module_utils.lsn import int_to_lsn, lsn_to_int

try:
    import psycopg
except ImportError:  # pragma: no cover - connection.require_psycopg() reports it
    psycopg = None

PLUGINS = ('pgoutput', 'wal2json')
PREFETCH_SWITCH_INTERVAL = 0.001   # seconds; sys.setswitchinterval() while a decode thread runs (default 0.005)

# The settings of the reading session that shape the text of decoded values (apply.SESSION_SETTINGS has them too).
READER_SETTINGS = (('client_encoding', 'UTF8'),) + VALUE_TEXT_SETTINGS + (('search_path', 'pg_catalog'),)

_PG_EPOCH = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
_EMPTY = frozenset()


class DecodeError(Exception):
    """Decoded data cannot be turned into exact changes (or the slot cannot be read). The message names the object."""

    def __init__(self, message, lsn=None, table=None):
        super().__init__(message)
        self.message = message
        self.lsn = lsn
        self.table = table


class _GcPause:
    """Counts the sections that run with the cyclic garbage collector paused (shared by all threads).

    Decoding and apply build many small acyclic objects (dicts of strings); the collector's passes over them cost
    as much as the work itself, and reference counting frees them anyway."""

    lock = threading.Lock()
    depth = 0
    was_enabled = False


@contextlib.contextmanager
def gc_paused():
    with _GcPause.lock:
        if _GcPause.depth == 0:
            _GcPause.was_enabled = gc.isenabled()
            gc.disable()
        _GcPause.depth += 1
    try:
        yield
    finally:
        with _GcPause.lock:
            _GcPause.depth -= 1
            if _GcPause.depth == 0 and _GcPause.was_enabled:
                gc.enable()


# -- the change model ----------------------------------------------------------------------------------------------

class Change:
    """One row change. ``new``: column -> text value (None for NULL) of the columns that were sent; a column that
    is absent from an UPDATE's ``new`` keeps its value (``unchanged`` names those known to be unchanged TOAST).
    ``old``: the old key (or, for REPLICA IDENTITY FULL, the whole old row) when the plugin sent one."""

    __slots__ = ('kind', 'schema', 'table', 'new', 'old', 'unchanged', 'truncate', 'cascade', 'restart_identity')

    def __init__(self, kind, schema=None, table=None, new=None, old=None, unchanged=_EMPTY, truncate=None,
                 cascade=False, restart_identity=False):
        self.kind = kind
        self.schema = schema
        self.table = table
        self.new = new
        self.old = old
        self.unchanged = unchanged
        self.truncate = truncate
        self.cascade = cascade
        self.restart_identity = restart_identity

    def __repr__(self):
        if self.kind == 'T':
            return 'Change(T %r cascade=%s restart_identity=%s)' % (self.truncate, self.cascade, self.restart_identity)
        return 'Change(%s %s.%s new=%r old=%r unchanged=%s)' % (
            self.kind, self.schema, self.table, self.new, self.old, sorted(self.unchanged))

    def __eq__(self, other):
        return isinstance(other, Change) and all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    __hash__ = None


class Transaction:
    """One source transaction: its changes in order and where it committed."""

    __slots__ = ('xid', 'commit_lsn', 'end_lsn', 'commit_time', 'changes', 'origin')

    def __init__(self, xid, commit_lsn, end_lsn=None, commit_time=None, changes=None, origin=None):
        self.xid = xid
        self.commit_lsn = commit_lsn
        self.end_lsn = end_lsn
        self.commit_time = commit_time
        self.changes = changes if changes is not None else []
        self.origin = origin

    def __repr__(self):
        return 'Transaction(xid=%s commit=%s end=%s changes=%d)' % (
            self.xid, int_to_lsn(self.commit_lsn), int_to_lsn(self.end_lsn), len(self.changes))


# -- publications and slots ----------------------------------------------------------------------------------------

def _publication_exists(conn, name):
    with conn.cursor() as cur:
        cur.execute('SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = %s', (name,))
        return cur.fetchone() is not None


def _leaf_partitions(conn, tables):
    """(schema, table) pairs with each partitioned table replaced by its leaf partitions, in order, once each."""
    out = []
    with conn.cursor() as cur:
        for schema, table in tables:
            cur.execute("SELECT n.nspname, c.relname FROM pg_catalog.pg_partition_tree(%s::regclass) t "
                        "JOIN pg_catalog.pg_class c ON c.oid = t.relid "
                        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE t.isleaf ORDER BY t.level, c.relname",
                        (sql.Identifier(schema, table).as_string(conn),))
            leaves = [tuple(r) for r in cur.fetchall()] or [(schema, table)]
            out += [leaf for leaf in leaves if leaf not in out]
    return out


def create_publication(conn, name, tables):
    """Create publication `name` FOR TABLE `tables` ((schema, table) pairs); if it exists, set its table list.

    Create it before the slot: pgoutput looks the publication up as of the decoded WAL.
    PostgreSQL 12 cannot publish a partitioned table: there its leaf partitions are published instead (13+ publishes
    the partitioned table, whose changes pgoutput reports on the leaf partitions as well, without
    publish_via_partition_root), so the changes reach the same partitions of the destination on every major."""
    tables = [tuple(t) for t in tables]
    if conn.info.server_version < 130000:
        tables = _leaf_partitions(conn, tables)
    targets = sql.SQL(', ').join(sql.Identifier(schema, table) for schema, table in tables)
    with conn.cursor() as cur:
        if _publication_exists(conn, name):
            if tables:
                cur.execute(sql.SQL('ALTER PUBLICATION {} SET TABLE {}').format(sql.Identifier(name), targets))
            else:
                cur.execute(sql.SQL('DROP PUBLICATION {}').format(sql.Identifier(name)))
                cur.execute(sql.SQL('CREATE PUBLICATION {}').format(sql.Identifier(name)))
        elif tables:
            cur.execute(sql.SQL('CREATE PUBLICATION {} FOR TABLE {}').format(sql.Identifier(name), targets))
        else:
            cur.execute(sql.SQL('CREATE PUBLICATION {}').format(sql.Identifier(name)))
    if not conn.autocommit:
        conn.commit()


def drop_publication(conn, name, missing_ok=True):
    """Drop publication `name`. Returns True when it existed."""
    if not _publication_exists(conn, name):
        if missing_ok:
            return False
        raise DecodeError('publication "%s" does not exist' % name)
    with conn.cursor() as cur:
        cur.execute(sql.SQL('DROP PUBLICATION {}').format(sql.Identifier(name)))
    if not conn.autocommit:
        conn.commit()
    return True


def create_slot_with_snapshot(repl_conn, slot_name, plugin, temporary=False):
    """CREATE_REPLICATION_SLOT ... LOGICAL <plugin> exporting a snapshot, on a replication='database' connection.

    Returns (consistent_point as int, snapshot name). The snapshot stays importable (SET TRANSACTION SNAPSHOT) only
    while `repl_conn` stays open and runs nothing else."""
    if plugin not in PLUGINS:
        raise DecodeError('unknown decoding plugin %r (expected one of %s)' % (plugin, ', '.join(PLUGINS)))
    parts = [sql.SQL('CREATE_REPLICATION_SLOT'), sql.Identifier(slot_name)]
    if temporary:
        parts.append(sql.SQL('TEMPORARY'))
    parts += [sql.SQL('LOGICAL'), sql.Identifier(plugin)]
    if repl_conn.info.server_version >= 150000:
        parts.append(sql.SQL("(SNAPSHOT 'export')"))
    else:
        parts.append(sql.SQL('EXPORT_SNAPSHOT'))
    with repl_conn.cursor() as cur:
        try:
            cur.execute(sql.SQL(' ').join(parts))
        except psycopg.errors.DuplicateObject:
            raise DecodeError('replication slot "%s" already exists' % slot_name) from None
        except psycopg.Error as exc:
            if connection_lost(exc, repl_conn):
                raise
            raise DecodeError('cannot create replication slot "%s": %s' % (slot_name, error_text(exc))) from None
        row = cur.fetchone()
    return lsn_to_int(row[1]), row[2]


def slot_info(conn, slot_name):
    """The slot's row as a dict (None when it does not exist)."""
    with conn.cursor() as cur:
        cur.execute('SELECT slot_type, plugin, database, active_pid, restart_lsn::text, confirmed_flush_lsn::text, '
                    'temporary FROM pg_catalog.pg_replication_slots WHERE slot_name = %s', (slot_name,))
        row = cur.fetchone()
    if row is None:
        return None
    return {'slot_type': row[0], 'plugin': row[1], 'database': row[2], 'active_pid': row[3],
            'restart_lsn': lsn_to_int(row[4]), 'confirmed_flush_lsn': lsn_to_int(row[5]), 'temporary': row[6]}


def slot_states(conn, slot_names):
    """WAL retention of replication slots: {slot_name: {'retained_bytes', 'wal_status', 'safe_wal_size',
    'invalidation', 'restart_lsn', 'confirmed_flush_lsn', 'active_pid'}} for those of `slot_names` that exist.

    retained_bytes is the WAL the slot holds back (current WAL position - restart_lsn; None when the slot has no
    restart_lsn, e.g. invalidated). wal_status and safe_wal_size exist from 13 on (None before); invalidation is the
    server's reason a slot can no longer be used: invalidation_reason on 17+, 'conflicting' (16) or 'lost' (13+)."""
    version = conn.info.server_version
    none = sql.SQL('NULL::text')
    columns = sql.SQL(', ').join([
        sql.SQL('wal_status') if version >= 130000 else none,
        sql.SQL('safe_wal_size') if version >= 130000 else sql.SQL('NULL::bigint'),
        sql.SQL('invalidation_reason') if version >= 170000 else
        (sql.SQL("CASE WHEN conflicting THEN 'conflicting' END") if version >= 160000 else none)])
    rows = conn.execute(sql.SQL(
        'SELECT slot_name::text, pg_catalog.pg_wal_lsn_diff(CASE WHEN pg_catalog.pg_is_in_recovery() '
        'THEN pg_catalog.pg_last_wal_replay_lsn() ELSE pg_catalog.pg_current_wal_lsn() END, restart_lsn)::bigint, '
        'restart_lsn::text, confirmed_flush_lsn::text, active_pid, {} FROM pg_catalog.pg_replication_slots '
        'WHERE slot_name = ANY(%s)').format(columns), (list(slot_names),)).fetchall()
    out = {}
    for name, retained, restart, confirmed, pid, wal_status, safe, reason in rows:
        if reason is None and wal_status == 'lost':
            reason = 'lost'
        out[name] = {'retained_bytes': max(0, retained) if retained is not None else None, 'wal_status': wal_status,
                     'safe_wal_size': safe, 'invalidation': reason, 'restart_lsn': restart,
                     'confirmed_flush_lsn': confirmed, 'active_pid': pid}
    return out


def drop_slot(conn, slot_name, missing_ok=True, timeout=30.0):
    """Drop a replication slot; a walsender or backend that holds it is terminated first. True when it existed."""
    deadline = time.monotonic() + timeout
    while True:
        info = slot_info(conn, slot_name)
        if info is None:
            if missing_ok:
                return False
            raise DecodeError('replication slot "%s" does not exist' % slot_name)
        with conn.cursor() as cur:
            if info['active_pid']:
                cur.execute('SELECT pg_catalog.pg_terminate_backend(%s)', (info['active_pid'],))
            else:
                try:
                    cur.execute('SELECT pg_catalog.pg_drop_replication_slot(%s)', (slot_name,))
                    if not conn.autocommit:
                        conn.commit()
                    return True
                except psycopg.errors.UndefinedObject:
                    if not conn.autocommit:
                        conn.rollback()
                    continue
                except psycopg.errors.ObjectInUse:
                    if not conn.autocommit:
                        conn.rollback()
        if time.monotonic() > deadline:
            raise DecodeError('replication slot "%s" is still in use after %.0f s' % (slot_name, timeout))
        time.sleep(0.1)


# -- pgoutput --------------------------------------------------------------------------------------------------------

_BEGIN = struct.Struct('>qqI').unpack_from
_COMMIT = struct.Struct('>bqqq').unpack_from
_I32 = struct.Struct('>I').unpack_from
_I16 = struct.Struct('>H').unpack_from


class _Relation:
    __slots__ = ('schema', 'table', 'names', 'key_names', 'replident')

    def __init__(self, schema, table, names, key_names, replident):
        self.schema = schema
        self.table = table
        self.names = names
        self.key_names = key_names
        self.replident = replident


def _cstring(buf, pos):
    end = buf.index(0, pos)
    return buf[pos:end].decode('utf-8'), end + 1


def _parse_relation(buf):
    (relid,) = _I32(buf, 1)
    schema, pos = _cstring(buf, 5)
    table, pos = _cstring(buf, pos)
    replident = chr(buf[pos])
    (ncols,) = _I16(buf, pos + 1)
    pos += 3
    names, keys = [], []
    for _i in range(ncols):
        flags = buf[pos]
        name, pos = _cstring(buf, pos + 1)
        pos += 8  # type oid, typmod
        names.append(name)
        if flags & 1:
            keys.append(name)
    return relid, _Relation(schema or 'pg_catalog', table, tuple(names), tuple(keys), replident)


def _parse_tuple(buf, pos, names, i32=_I32):
    """TupleData at buf[pos] -> (values dict, unchanged frozenset, next pos)."""
    if _I16(buf, pos)[0] != len(names):
        raise DecodeError('pgoutput tuple data has %d columns, its Relation message %d'
                          % (_I16(buf, pos)[0], len(names)))
    pos += 2
    values = {}
    unchanged = None
    for name in names:
        kind = buf[pos]
        if kind == 116:  # 't'
            start = pos + 5
            pos = start + i32(buf, pos + 1)[0]
            values[name] = buf[start:pos].decode()
        elif kind == 110:  # 'n'
            values[name] = None
            pos += 1
        elif kind == 117:  # 'u'
            if unchanged is None:
                unchanged = []
            unchanged.append(name)
            pos += 1
        elif kind == 98:  # 'b'
            raise DecodeError('pgoutput sent a binary value for column "%s": binary mode is not supported' % name)
        else:
            raise DecodeError('pgoutput tuple data has an unknown column kind %r' % chr(kind))
    return values, (frozenset(unchanged) if unchanged else _EMPTY), pos


class PgOutputParser:
    """Turns pgoutput (protocol 1) messages into Transactions. Relation messages are remembered across calls."""

    def __init__(self):
        self.relations = {}
        self.txn = None
        self.skip = False
        self._append = self._no_transaction

    def relation(self, relid):
        try:
            return self.relations[relid]
        except KeyError:
            raise DecodeError('pgoutput sent a change for relation %d before its Relation message' % relid) from None

    def feed(self, buf, skip_before=None):
        """Handle one message. Returns the finished Transaction on Commit (None when skipped or not a commit)."""
        tag = buf[0]
        if tag == 85 or tag == 73 or tag == 68:  # 'U', 'I', 'D'
            if self.skip:
                return None
            try:
                rel = self.relations[_I32(buf, 1)[0]]
            except KeyError:
                rel = self.relation(_I32(buf, 1)[0])
            names = rel.names
            if tag == 85:
                sub = buf[5]
                if sub == 78:  # 'N' only: the key did not change
                    new, unchanged, _pos = _parse_tuple(buf, 6, names)
                    self._append(Change('U', rel.schema, rel.table, new, None, unchanged))
                    return None
                old, _old_unchanged, pos = _parse_tuple(buf, 6, names)
                if sub == 75:  # 'K': only the replica identity columns carry values
                    old = {k: old[k] for k in rel.key_names if k in old}
                new, unchanged, _pos = _parse_tuple(buf, pos + 1, names)
                self._append(Change('U', rel.schema, rel.table, new, old, unchanged))
            elif tag == 73:
                new, unchanged, _pos = _parse_tuple(buf, 6, names)
                self._append(Change('I', rel.schema, rel.table, new, None, unchanged))
            else:
                old, _unchanged, _pos = _parse_tuple(buf, 6, names)
                if buf[5] == 75:
                    old = {k: old[k] for k in rel.key_names if k in old}
                self._append(Change('D', rel.schema, rel.table, None, old))
            return None
        if tag == 66:  # 'B'
            final_lsn, _micros, xid = _BEGIN(buf, 1)
            self.skip = skip_before is not None and final_lsn < skip_before
            self.txn = Transaction(xid, final_lsn)
            self._append = self.txn.changes.append
            return None
        if tag == 67:  # 'C'
            txn = self.txn
            if txn is None:
                raise DecodeError('pgoutput sent Commit without Begin')
            _flags, txn.commit_lsn, txn.end_lsn, micros = _COMMIT(buf, 1)
            txn.commit_time = _PG_EPOCH + datetime.timedelta(microseconds=micros)
            self.txn = None
            self._append = self._no_transaction
            return None if self.skip else txn
        if tag == 82:  # 'R'
            relid, rel = _parse_relation(buf)
            self.relations[relid] = rel
            return None
        if self.skip:
            return None
        txn = self.txn
        if tag == 84:  # 'T'
            (nrels,) = _I32(buf, 1)
            options = buf[5]
            targets = []
            for i in range(nrels):
                (relid,) = _I32(buf, 6 + 4 * i)
                rel = self.relation(relid)
                targets.append((rel.schema, rel.table))
            self._append(Change('T', None, None, None, None, _EMPTY, targets, bool(options & 1), bool(options & 2)))
        elif tag == 79:  # 'O' origin
            if txn is not None:
                txn.origin, _pos = _cstring(buf, 9)
        elif tag in (89, 77):  # 'Y' type, 'M' message
            pass
        else:
            raise DecodeError('pgoutput sent an unknown message type %r' % chr(tag))
        return None

    @staticmethod
    def _no_transaction(_change):
        raise DecodeError('pgoutput sent a change outside a transaction')


# -- wal2json --------------------------------------------------------------------------------------------------------

_json_decode = json.JSONDecoder(parse_float=str, parse_int=str).decode
_TS_RE = re.compile(r'^(\d{4,})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?([+-])(\d\d)(?::?(\d\d))?(?::?(\d\d))?$')
_UTC = datetime.timezone.utc
BYTEA_OID = '17'


def parse_pg_timestamptz(text):
    """'2026-11-25 03:06:13.369772+00' (ISO output of timestamptz) -> aware datetime in UTC."""
    match = _TS_RE.match(text.strip())
    if not match:
        raise DecodeError('cannot parse timestamp %r' % text)
    year, month, day, hour, minute, second, frac, sign, off_h, off_m, off_s = match.groups()
    offset = datetime.timedelta(hours=int(off_h), minutes=int(off_m or 0), seconds=int(off_s or 0))
    value = datetime.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                              int((frac or '0').ljust(6, '0')), tzinfo=_UTC)
    return value - offset if sign == '+' else value + offset


def _json_value(value):
    if value is True:       # boolean: the text boolout prints
        return 't'
    if value is False:
        return 'f'
    if value is None or isinstance(value, str):
        return value
    # objects or arrays never come from wal2json 2 (json values arrive as strings); keep them exact anyway
    return json.dumps(value, separators=(',', ':'))


class Wal2JsonParser:
    """Turns wal2json format-version 2 records into Transactions.

    `numeric_as_string`: whether the plugin honoured numeric-data-types-as-string; when it did not, a NULL in a
    numeric/float column may be a NaN or Infinity that the plugin could not print: it is handed on as NULL (see
    apply.repair_ambiguous_nulls)."""

    def __init__(self, numeric_as_string=True, tables=None):
        self.numeric_as_string = numeric_as_string
        self.tables = set(tables) if tables is not None else None
        self.txn = None
        self.skip = False
        self._truncate_lsn = None

    def _columns(self, items, where, lsn):
        values = {}
        for item in items:
            value = item.get('value')
            # value None: without numeric-data-types-as-string (wal2json before 2.6) a NULL of a numeric or float
            # column is a real NULL or a NaN / Infinity the plugin could not print; it is applied as NULL, and
            # pg_dts_finish corrects the latter from the source under the fence (apply.repair_ambiguous_nulls)
            if value is None:
                pass
            elif value.__class__ is not str:
                value = _json_value(value)
            elif item.get('typeoid') == BYTEA_OID:     # numbers, the type OID too, are kept as text
                value = '\\x' + value    # wal2json prints bytea (not a domain over it) without its \x prefix
            values[item['name']] = value
        return values

    def feed(self, data, skip_before=None):
        record = _json_decode(data) if isinstance(data, str) else _json_decode(bytes(data).decode('utf-8'))
        action = record.get('action')
        if action == 'B':
            commit_lsn = lsn_to_int(record['lsn'])
            self.skip = skip_before is not None and commit_lsn < skip_before
            self.txn = Transaction(int(record['xid']) if record.get('xid') is not None else None, commit_lsn,
                                   lsn_to_int(record.get('nextlsn')))
            return None
        if action == 'C':
            txn = self.txn
            if txn is None:
                raise DecodeError('wal2json sent a commit without a begin')
            txn.commit_lsn = lsn_to_int(record.get('lsn')) or txn.commit_lsn
            txn.end_lsn = lsn_to_int(record.get('nextlsn')) or txn.end_lsn
            if record.get('timestamp'):
                txn.commit_time = parse_pg_timestamptz(record['timestamp'])
            self.txn = None
            return None if self.skip else txn
        if self.skip or action == 'M':
            return None
        txn = self.txn
        if txn is None:
            raise DecodeError('wal2json sent a change outside a transaction: include-transaction must be on')
        schema, table = record.get('schema'), record.get('table')
        if self.tables is not None and (schema, table) not in self.tables:
            return None
        where = '%s.%s' % (schema, table)
        if action == 'I':
            txn.changes.append(Change('I', schema, table, self._columns(record.get('columns', ()), where,
                                                                        txn.commit_lsn)))
        elif action == 'U':
            new = self._columns(record.get('columns', ()), where, txn.commit_lsn)
            old = self._columns(record['identity'], where, txn.commit_lsn) if record.get('identity') else None
            txn.changes.append(Change('U', schema, table, new, old))
        elif action == 'D':
            old = self._columns(record['identity'], where, txn.commit_lsn) if record.get('identity') else None
            txn.changes.append(Change('D', schema, table, None, old))
        elif action == 'T':
            last = txn.changes[-1] if txn.changes else None
            if last is not None and last.kind == 'T' and self._truncate_lsn == record.get('lsn'):
                last.truncate.append((schema, table))
            else:
                txn.changes.append(Change('T', truncate=[(schema, table)]))
            self._truncate_lsn = record.get('lsn')
        else:
            raise DecodeError('wal2json sent an unknown action %r' % action)
        return None


def wal2json_escape(name):
    """Escape a schema or table name for wal2json's add-tables option (its list ends a name at ',' and whitespace)."""
    return re.sub(r"([\\ \t\n\r\v\f',.*])", r'\\\1', name)


# -- reading a slot ------------------------------------------------------------------------------------------------

def plugin_options(plugin, conn, publication=None, tables=None, numeric_as_string=True):
    """The output plugin's options as (name, value) pairs, for the SQL functions and for START_REPLICATION."""
    if plugin == 'pgoutput':
        publications = [publication] if isinstance(publication, str) else publication
        names = sql.SQL(',').join(sql.Identifier(p) for p in publications)
        return [('proto_version', '1'), ('publication_names', names.as_string(conn))]
    options = [('format-version', '2'), ('include-xids', '1'), ('include-timestamp', '1'), ('include-lsn', '1'),
               ('include-types', '1'), ('include-type-oids', '1'), ('include-typmod', '0'),
               ('include-domain-data-type', '1'), ('include-transaction', '1')]
    if numeric_as_string:
        options.append(('numeric-data-types-as-string', '1'))
    if tables is not None:
        options.append(('add-tables', ','.join('%s.%s' % (wal2json_escape(s), wal2json_escape(t))
                                               for s, t in tables) or 'pgdts\\.no\\ tables'))
    return options


def _check_plugin(plugin, publication):
    if plugin not in PLUGINS:
        raise DecodeError('unknown decoding plugin %r (expected one of %s)' % (plugin, ', '.join(PLUGINS)))
    if plugin == 'pgoutput' and not publication:
        raise DecodeError('the pgoutput plugin needs a publication name')


class _Reader:
    """What both readers share: the arguments, the slot checks and the client-side table filter."""

    def _init_reader(self, conn, slot_name, plugin, publication, tables):
        """Check the plugin and the slot; returns slot_info()."""
        _check_plugin(plugin, publication)
        self.conn = conn
        self.slot_name = slot_name
        self.plugin = plugin
        self.publication = publication
        self.tables = [tuple(t) for t in tables] if tables is not None else None
        self.numeric_as_string = True
        self._wanted = set(self.tables) if (plugin == 'pgoutput' and self.tables is not None) else None
        info = slot_info(conn, slot_name)
        if info is None:
            raise DecodeError('replication slot "%s" does not exist' % slot_name)
        if info['slot_type'] != 'logical':
            raise DecodeError('replication slot "%s" is a physical slot, not a logical one' % slot_name)
        if info['plugin'] != plugin:
            raise DecodeError('replication slot "%s" uses plugin %s, not %s' % (slot_name, info['plugin'], plugin))
        dbname = conn.execute('SELECT pg_catalog.current_database()').fetchone()[0]
        if info['database'] != dbname:
            raise DecodeError('replication slot "%s" belongs to database %s, not %s'
                              % (slot_name, info['database'], dbname))
        return info

    def _keep(self, change):
        if change.kind == 'T':
            change.truncate = [t for t in change.truncate if t in self._wanted]
            return bool(change.truncate)
        return (change.schema, change.table) in self._wanted


class SlotReader(_Reader):
    """Peek whole transactions from a logical slot, in commit order, without consuming them.

    `conn` is an autocommit SQL connection to the source database, used only by this reader (it changes the session
    settings, see READER_SETTINGS). `publication` is required for pgoutput; `tables` ((schema, table) pairs) limits
    wal2json output (add-tables) and filters changes client-side for both plugins.

    Windows: the reader peeks a large window (`window_changes` rows) into a server-side cursor and hands it out in
    batches, so the server decodes each part of the WAL once instead of once per batch (a peek always decodes from
    the slot's restart position). Memory stays bounded by a batch plus one fetch (`fetch_size` rows); a single
    transaction is never split, so one huge transaction is held whole.

    Position: `read()` continues after the last transaction it returned as long as the caller confirmed it;
    otherwise it starts again from the confirmed position (the slot's, or what was last passed to `confirm()`), which
    is what a retry after a failed apply needs. `reset()` forces that.

    Prefetch (`prefetch=True`): after handing out a batch, a background thread decodes the next one (opening the
    next window when needed) while the caller applies; the next `read()` takes it if the caller confirmed the batch
    before. The interpreter's thread switch interval is lowered to PREFETCH_SWITCH_INTERVAL so that the applying
    thread gets the GIL back quickly after each statement.

    `advance_interval` (seconds): `confirm()` always records the position, but calls pg_replication_slot_advance only
    when at least this long has passed since the last advance (0: every time). Before a new window the slot is
    always advanced to the confirmed position; `flush()` forces an advance."""

    def __init__(self, conn, slot_name, plugin='pgoutput', publication=None, tables=None, window_changes=500000,
                 fetch_size=2000, advance_interval=0.0, prefetch=True):
        if not conn.autocommit:
            _check_plugin(plugin, publication)
            raise DecodeError('SlotReader needs an autocommit connection')
        info = self._init_reader(conn, slot_name, plugin, publication, tables)
        self.window_changes = max(int(window_changes), 1)
        self.fetch_size = max(int(fetch_size), 1)
        self.advance_interval = float(advance_interval)
        self.prefetch = prefetch
        self._setup_session()
        self.confirmed_lsn = info['confirmed_flush_lsn']   # what the caller confirmed (or the slot's position)
        self.slot_confirmed_lsn = info['confirmed_flush_lsn']   # what the server slot has been advanced to
        self.end_lsn = None          # when the last read() returned done: everything before this LSN was returned
        self._last_advance = 0.0
        self._position = None        # commit LSN of the last transaction returned
        self._cursor = None
        self._rows = []
        self._row_index = 0
        self._window_limited = False
        self._window_end = None
        self._window_exhausted = True
        self._window_rows = 0
        self._window_limit = self.window_changes
        self._parser = None
        self._thread = None
        self._prefetched = None
        self._prefetch_error = None
        self._advance_lock = threading.Lock()
        if prefetch and sys.getswitchinterval() > PREFETCH_SWITCH_INTERVAL:
            # with the decode thread busy, a statement's result waits for the GIL for up to the switch interval
            sys.setswitchinterval(PREFETCH_SWITCH_INTERVAL)
        self.stats = {'windows': 0, 'rows': 0, 'peek_seconds': 0.0, 'prefetched_batches': 0, 'advances': 0,
                      'advance_seconds': 0.0}

    def _setup_session(self):
        with self.conn.cursor() as cur:
            for name, value in READER_SETTINGS:
                cur.execute('SELECT pg_catalog.set_config(%s, %s, false)', (name, value))

    # -- window handling
    def _close_window(self):
        if self._cursor is not None:
            try:
                self._cursor.close()
            except psycopg.Error:
                pass
        self._cursor = None
        self._rows = []
        self._row_index = 0
        self._window_exhausted = True

    def reset(self):
        """Forget the open window: the next read() starts again from the confirmed position."""
        self._join_prefetch()
        self._close_window()
        self._position = None
        self._window_end = None

    def close(self):
        self._join_prefetch()
        self._close_window()

    def _peek_query(self):
        slot = sql.Literal(self.slot_name)
        options = plugin_options(self.plugin, self.conn, self.publication, self.tables, self.numeric_as_string)
        opts = sql.SQL(', ').join(sql.SQL('{}, {}').format(sql.Literal(k), sql.Literal(v)) for k, v in options)
        function = 'pg_logical_slot_peek_binary_changes' if self.plugin == 'pgoutput' else 'pg_logical_slot_peek_changes'
        return sql.SQL('SELECT data FROM pg_catalog.{}({}, %s::pg_lsn, %s, {})').format(
            sql.Identifier(function), slot, opts)

    def _open_window(self, upto_lsn, limit):
        self._close_window()
        with self.conn.cursor() as cur:
            cur.execute('SELECT pg_catalog.pg_current_wal_flush_lsn()::text')
            flush = lsn_to_int(cur.fetchone()[0])
        cursor = self.conn.cursor(name='pgdts_peek_%x' % id(self), binary=True, withhold=True)
        started = time.monotonic()
        try:
            cursor.execute(self._peek_query(), (int_to_lsn(upto_lsn), limit))
        except psycopg.Error as exc:
            if connection_lost(exc, self.conn):
                raise
            try:
                cursor.close()
            except psycopg.Error:
                pass
            text = error_text(exc)
            if self.plugin == 'wal2json' and self.numeric_as_string and 'numeric-data-types-as-string' in text:
                self.numeric_as_string = False    # an older wal2json: NULLs in numeric columns are refused instead
                return self._open_window(upto_lsn, limit)
            raise DecodeError('cannot read replication slot "%s": %s' % (self.slot_name, text)) from None
        self.stats['peek_seconds'] += time.monotonic() - started
        self.stats['windows'] += 1
        self._cursor = cursor
        self._window_rows = 0
        self._window_limit = limit
        self._window_limited = False
        self._window_exhausted = False
        self._window_end = flush if upto_lsn is None or upto_lsn > flush else upto_lsn
        # A new decoding session starts at a transaction boundary and re-sends Relation messages.
        if self.plugin == 'pgoutput':
            old = self._parser
            self._parser = PgOutputParser()
            if old is not None:
                self._parser.relations = old.relations
        else:
            self._parser = Wal2JsonParser(self.numeric_as_string, self.tables)
        return None

    def _fetch(self):
        """Fetch the next rows of the window; False (and the window closed) at its end."""
        if self._cursor is None:
            return False
        self._rows = self._cursor.fetchmany(self.fetch_size)
        self._row_index = 0
        if not self._rows:
            self._window_limited = self._window_rows >= self._window_limit
            self._close_window()
            return False
        self._window_rows += len(self._rows)
        self.stats['rows'] += len(self._rows)
        return True

    def _fill(self, transactions, count, max_changes, skip_before):
        """Decode from the open window until `max_changes` or the window's end. Returns the new count."""
        feed = self._parser.feed
        wanted = self._wanted
        append = transactions.append
        while count < max_changes:
            rows = self._rows
            index = self._row_index
            if index >= len(rows):
                if not self._fetch():
                    break
                continue
            end = len(rows)
            while index < end:
                txn = feed(rows[index][0], skip_before)
                index += 1
                if txn is not None:
                    if wanted is not None:
                        txn.changes = [c for c in txn.changes if self._keep(c)]
                    append(txn)
                    skip_before = txn.commit_lsn + 1
                    count += len(txn.changes)
                    if count >= max_changes:
                        break
            self._row_index = index
        return count

    def _collect(self, transactions, count, max_changes, skip_before, upto_lsn, prefetching=False):
        """Decode into `transactions` until `max_changes`, opening windows as needed. Returns the new count."""
        with gc_paused():
            return self._collect_paused(transactions, count, max_changes, skip_before, upto_lsn, prefetching)

    def _collect_paused(self, transactions, count, max_changes, skip_before, upto_lsn, prefetching):
        opened_here = False
        grow = 1
        while count < max_changes:
            if self._window_exhausted:
                if self._window_end is not None and not self._window_limited and (opened_here or prefetching):
                    break    # caught up with what the last peek could see
                if transactions and not prefetching:
                    break    # the next window starts from the confirmed position: let the caller confirm first
                if (not prefetching and not opened_here and upto_lsn is not None and self._window_end is not None
                        and not self._window_limited and self._window_end >= upto_lsn):
                    break    # the last window already covered upto_lsn and everything in it was handed out
                if opened_here:
                    grow *= 2    # a window full of already returned rows (one huge transaction): look further
                self.flush()     # a new peek starts where the server slot is: move it to the confirmed position
                self._open_window(upto_lsn, self.window_changes * grow)
                opened_here = True
                continue
            count = self._fill(transactions, count, max_changes, skip_before)
            if transactions:
                skip_before = transactions[-1].commit_lsn + 1
        return count

    # -- prefetch
    def _start_prefetch(self, max_changes):
        if not self.prefetch or self._position is None or (self._window_exhausted and not self._window_limited):
            return
        skip_before = self._position + 1
        base = self._position

        def run():
            try:
                transactions = []
                count = self._collect(transactions, 0, max_changes, skip_before, None, prefetching=True)
                self._prefetched = (transactions, count, base)
            except BaseException as exc:  # pylint: disable=broad-except
                # handed to the caller of the next read()
                self._prefetch_error = exc

        self._thread = threading.Thread(target=run, name='pgdts-decode-prefetch', daemon=True)
        self._thread.start()

    def _join_prefetch(self):
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        prefetched, error = self._prefetched, self._prefetch_error
        self._prefetched = self._prefetch_error = None
        return prefetched, error

    # -- the API
    def read(self, upto_lsn=None, max_changes=10000):
        """Return (transactions, done): whole transactions in commit order, stopping at the first transaction
        boundary at or after `max_changes` changes (one transaction is never split). `done` is True when everything
        committed before `upto_lsn` (or before the WAL end when None) has been returned; transactions committed
        after `upto_lsn` may be returned too."""
        upto_lsn = lsn_to_int(upto_lsn)
        prefetched, error = self._join_prefetch()
        if self._position is not None and (self.confirmed_lsn is None or self.confirmed_lsn < self._position):
            self.reset()   # what we returned was not confirmed: hand it out again from the confirmed position
            prefetched = error = None
        if error is not None:
            self.reset()
            raise error
        transactions, count = ([], 0) if prefetched is None else (prefetched[0], prefetched[1])
        if prefetched is not None:
            self.stats['prefetched_batches'] += 1
        skip_before = self.confirmed_lsn
        if self._position is not None:
            skip_before = max(skip_before or 0, self._position + 1)
        if transactions:
            skip_before = transactions[-1].commit_lsn + 1
        count = self._collect(transactions, count, max_changes, skip_before, upto_lsn)
        if transactions:
            self._position = transactions[-1].commit_lsn
        done = self._window_exhausted and not self._window_limited and self._window_end is not None and (
            upto_lsn is None or self._window_end >= upto_lsn)
        if done:
            self.end_lsn = self._window_end
        else:
            self._start_prefetch(max_changes)
        return transactions, done

    def confirm(self, lsn, force=False):
        """Record that the destination committed everything up to `lsn` and advance the slot (see advance_interval).

        Only ever pass what the destination has durably committed (apply.Applier.applied_lsn())."""
        lsn = lsn_to_int(lsn)
        if lsn is None:
            return
        if self.confirmed_lsn is None or lsn > self.confirmed_lsn:
            self.confirmed_lsn = lsn
        if force or time.monotonic() - self._last_advance >= self.advance_interval:
            self.flush()

    def flush(self):
        """Advance the server slot to the confirmed position now."""
        with self._advance_lock:      # the prefetch thread advances too, before it opens a window
            target = self.confirmed_lsn
            if target is None or (self.slot_confirmed_lsn is not None and target <= self.slot_confirmed_lsn):
                return
            started = time.monotonic()
            with self.conn.cursor() as cur:
                cur.execute('SELECT pg_catalog.pg_replication_slot_advance(%s, %s::pg_lsn)',
                            (self.slot_name, int_to_lsn(target)))
            self.slot_confirmed_lsn = target
            self._last_advance = time.monotonic()
            self.stats['advances'] += 1
            self.stats['advance_seconds'] += self._last_advance - started


# -- streaming a slot over the replication protocol -------------------------------------------------------------------

_XLOG_DATA = struct.Struct('>QQQ').unpack_from          # after 'w': start LSN, server WAL end, send time
_KEEPALIVE = struct.Struct('>QQB').unpack_from          # after 'k': server WAL end, send time, reply requested
_STATUS_UPDATE = struct.Struct('>cQQQqB').pack          # 'r', written, flushed, applied, client time, reply requested
_OBJECT_IN_USE = '55006'


def _replication_literal(value):
    """A string constant for a replication command. Their grammar knows only the standard form '...' (quotes
    doubled, backslashes literal), not the E'...' form sql.Literal produces for a value with a backslash (wal2json's
    add-tables escapes names with backslashes)."""
    text = str(value)
    if '\x00' in text:
        raise DecodeError('an option of the output plugin contains a NUL character')
    return sql.SQL("'{}'".format(text.replace("'", "''")))


def _pg_now_micros():
    return int((time.time() - 946684800.0) * 1000000)


class StreamReader(_Reader):
    """Stream a logical slot over the replication protocol (START_REPLICATION), with the SlotReader interface.

    `repl_conn` is a `replication='database'` connection used only by this reader; `conn` an ordinary autocommit
    connection to the same source database (slot checks, and ending a walsender left on the slot by a worker that
    died). A receiver thread reads the copy stream while the caller applies: the source's walsender decodes the WAL
    once, in its own process, at the same time as the apply runs. Received transactions wait in a queue bounded by
    `queue_changes` changes (a transaction is never split); when it is full the thread stops reading and the walsender
    waits on the socket.

    Position: `read()` hands out every transaction once, in commit order; `done` is True when the walsender reported
    (keepalive) that it has sent everything up to `upto_lsn` and all of it was handed out. `confirm(lsn)` records
    what the destination has committed; the thread reports it to the walsender in standby status updates (at most
    every `feedback_interval` seconds, at least every 5 s, and at once when the walsender asks), which moves the slot
    without decoding anything again. A restart streams again from the slot's confirmed position; the applier skips
    what its replication origin already has."""

    KEEPALIVE_SECONDS = 5.0
    streaming = True

    def __init__(self, conn, repl_conn, slot_name, plugin='pgoutput', publication=None, tables=None,
                 queue_changes=100000, feedback_interval=1.0, start_timeout=30.0):
        self.repl_conn = repl_conn
        info = self._init_reader(conn, slot_name, plugin, publication, tables)
        self.queue_changes = max(int(queue_changes), 1)
        self.feedback_interval = float(feedback_interval)
        self.confirmed_lsn = info['confirmed_flush_lsn'] or 0
        self.slot_confirmed_lsn = self.confirmed_lsn
        self.end_lsn = None
        self._parser = PgOutputParser() if plugin == 'pgoutput' else Wal2JsonParser(True, self.tables)
        self._queue = []
        self._queued_changes = 0
        self._cond = threading.Condition()
        self._sent_lsn = self.confirmed_lsn     # everything committed before this was received (keepalive / commits)
        self._error = None
        self._stop = False
        self._feedback_now = False
        self._last_feedback = 0.0
        self._reported = None
        self.stats = {'windows': 0, 'rows': 0, 'peek_seconds': 0.0, 'prefetched_batches': 0, 'advances': 0,
                      'advance_seconds': 0.0, 'wait_seconds': 0.0}
        self._start(start_timeout)
        if sys.getswitchinterval() > PREFETCH_SWITCH_INTERVAL:
            # with the receiver busy, a statement's result would wait for the GIL for up to the switch interval
            sys.setswitchinterval(PREFETCH_SWITCH_INTERVAL)
        self._thread = threading.Thread(target=self._receive, name='pgdts-stream-receiver', daemon=True)
        self._thread.start()

    # -- start
    def _start_command(self):
        options = plugin_options(self.plugin, self.repl_conn, self.publication, self.tables, self.numeric_as_string)
        return sql.SQL('START_REPLICATION SLOT {} LOGICAL {} ({})').format(
            sql.Identifier(self.slot_name), sql.SQL(int_to_lsn(self.confirmed_lsn or 0)),
            sql.SQL(', ').join(sql.SQL('{} {}').format(sql.Identifier(k), _replication_literal(v)) for k, v in options)
        ).as_bytes(self.repl_conn)

    def _exec_simple(self, command):
        pgconn = self.repl_conn.pgconn
        result = pgconn.exec_(command)
        if result.status == psycopg.pq.ExecStatus.FATAL_ERROR:
            raise psycopg.errors.error_from_result(result)
        return result

    def _start(self, timeout):
        for name, value in READER_SETTINGS:
            self._exec_simple(sql.SQL('SET {} TO {}').format(sql.Identifier(name), sql.Literal(value))
                              .as_bytes(self.repl_conn))
        deadline = time.monotonic() + timeout
        while True:
            pgconn = self.repl_conn.pgconn
            pgconn.send_query(self._start_command())
            result = pgconn.get_result()
            if result is not None and result.status == psycopg.pq.ExecStatus.COPY_BOTH:
                break
            error = psycopg.errors.error_from_result(result) if result is not None else \
                psycopg.OperationalError('the source closed the replication connection')
            while pgconn.get_result() is not None:
                pass
            if pgconn.status != psycopg.pq.ConnStatus.OK:
                raise error
            text = error_text(error)
            if self.plugin == 'wal2json' and self.numeric_as_string and 'numeric-data-types-as-string' in text:
                self.numeric_as_string = False    # an older wal2json: NULLs in numeric columns are refused instead
                self._parser = Wal2JsonParser(False, self.tables)
                continue
            if getattr(error, 'sqlstate', None) == _OBJECT_IN_USE and time.monotonic() < deadline:
                # the slot is held by a walsender of a worker that died (this worker holds the task's lock)
                self._end_stale_walsender()
                time.sleep(0.2)
                continue
            raise DecodeError('cannot stream replication slot "%s": %s' % (self.slot_name, text)) from error

    def _end_stale_walsender(self):
        row = self.conn.execute('SELECT active_pid FROM pg_catalog.pg_replication_slots WHERE slot_name = %s',
                                (self.slot_name,)).fetchone()
        if row and row[0]:
            self.conn.execute('SELECT pg_catalog.pg_terminate_backend(%s)', (row[0],))

    # -- the receiver thread
    def _receive(self):
        try:
            self._receive_loop()
        except BaseException as exc:  # pylint: disable=broad-except
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def _receive_loop(self):
        import select
        pgconn = self.repl_conn.pgconn
        sock = pgconn.socket
        while not self._stop:
            if self._queued_changes >= self.queue_changes:
                with self._cond:
                    if self._queued_changes >= self.queue_changes and not self._stop:
                        self._cond.wait(0.1)
                self._maybe_feedback(pgconn)
                continue
            with gc_paused():
                received = self._receive_burst(pgconn)
            if not received:
                self._maybe_feedback(pgconn)
                select.select([sock], [], [], 0.1)
                pgconn.consume_input()

    def _receive_burst(self, pgconn, limit=20000):
        """Handle the messages already received, up to `limit` or a full queue. Returns how many."""
        parser = self._parser
        wanted = self._wanted
        cond = self._cond
        count = 0
        while count < limit and self._queued_changes < self.queue_changes and not self._stop:
            nbytes, data = pgconn.get_copy_data(1)
            if nbytes == 0:
                break
            count += 1
            if nbytes == -1:
                result = pgconn.get_result()
                if result is not None and result.status == psycopg.pq.ExecStatus.FATAL_ERROR:
                    raise psycopg.errors.error_from_result(result)
                raise psycopg.OperationalError('the source ended the replication stream')
            if nbytes < 0:
                raise psycopg.OperationalError('replication stream: %s' % pgconn.get_error_message())
            tag = data[0]
            if tag == 119:  # 'w' XLogData
                self.stats['rows'] += 1
                payload = bytes(data[25:])
                txn = parser.feed(payload if self.plugin == 'pgoutput' else payload.decode('utf-8'))
                if txn is not None:
                    if wanted is not None:
                        txn.changes = [c for c in txn.changes if self._keep(c)]
                    with cond:
                        self._queue.append(txn)
                        self._queued_changes += len(txn.changes) + 1
                        end = txn.end_lsn or txn.commit_lsn
                        if end > self._sent_lsn:
                            self._sent_lsn = end
                        cond.notify_all()
            elif tag == 107:  # 'k' keepalive
                wal_end, _sent, reply = _KEEPALIVE(data, 1)
                if parser.txn is None:
                    with cond:
                        if wal_end > self._sent_lsn:
                            self._sent_lsn = wal_end
                        cond.notify_all()
                if reply:
                    self._feedback_now = True
                self._maybe_feedback(pgconn)
        return count

    def _maybe_feedback(self, pgconn):
        now = time.monotonic()
        confirmed = self.confirmed_lsn
        due = self._feedback_now or now - self._last_feedback >= self.KEEPALIVE_SECONDS or (
            confirmed != self._reported and now - self._last_feedback >= self.feedback_interval)
        if not due:
            return
        written = max(self._sent_lsn, confirmed)
        started = time.monotonic()
        pgconn.put_copy_data(_STATUS_UPDATE(b'r', written, confirmed, confirmed, _pg_now_micros(), 0))
        pgconn.flush()
        self._feedback_now = False
        self._last_feedback = now
        if confirmed != self._reported:
            self._reported = confirmed
            self.slot_confirmed_lsn = confirmed
            self.stats['advances'] += 1
            self.stats['advance_seconds'] += time.monotonic() - started

    # -- the API (as SlotReader)
    def read(self, upto_lsn=None, max_changes=10000, wait=0.2):
        """Return (transactions, done): whole transactions in commit order, at most about `max_changes` changes (one
        transaction is never split). Waits up to `wait` seconds for the first transaction. `done` is True when
        everything committed before `upto_lsn` has been handed out."""
        upto_lsn = lsn_to_int(upto_lsn)
        started = time.monotonic()
        deadline = started + wait
        with self._cond:
            while True:
                if self._error is not None:
                    raise self._error
                if self._queue or (upto_lsn is not None and self._sent_lsn >= upto_lsn):
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            taken, count = 0, 0
            for txn in self._queue:
                if count and count + len(txn.changes) > max_changes:
                    break
                taken += 1
                count += len(txn.changes)
                if count >= max_changes:
                    break
            transactions = self._queue[:taken]
            del self._queue[:taken]
            self._queued_changes -= count + taken
            done = not self._queue and upto_lsn is not None and self._sent_lsn >= upto_lsn
            if done:
                self.end_lsn = self._sent_lsn
            self._cond.notify_all()
        self.stats['wait_seconds'] += time.monotonic() - started
        return transactions, done

    def confirm(self, lsn, force=False):
        """Record that the destination committed everything up to `lsn` (only ever pass what it durably committed);
        the walsender hears of it with the next status update."""
        lsn = lsn_to_int(lsn)
        if lsn is None:
            return
        if lsn > self.confirmed_lsn:
            self.confirmed_lsn = lsn
        if force:
            self._feedback_now = True

    def flush(self, timeout=5.0):
        """Report the confirmed position to the walsender now (waits up to `timeout` for the status update)."""
        self._feedback_now = True
        deadline = time.monotonic() + timeout
        while self._feedback_now and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)

    def reset(self):
        raise DecodeError('StreamReader cannot rewind: start a new reader (a new session) instead')

    def close(self):
        """Stop the receiver thread, report the confirmed position one last time and end the stream."""
        if self._thread.is_alive():
            self.flush(timeout=2.0)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(5.0)
        try:
            self.repl_conn.close()
        except Exception:  # pylint: disable=broad-except
            pass
