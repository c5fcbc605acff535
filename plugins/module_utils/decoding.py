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

import datetime
import json
import re
import struct
import time

from ansible_collections.pgdts.migration.plugins.module_utils.connection import sql

try:
    import psycopg
except ImportError:  # pragma: no cover - connection.require_psycopg() reports it
    psycopg = None

PLUGINS = ('pgoutput', 'wal2json')

# The settings of the reading session that shape the text of decoded values. apply.SESSION_SETTINGS mirrors them.
READER_SETTINGS = (
    ('client_encoding', 'UTF8'),
    ('DateStyle', 'ISO, YMD'),
    ('IntervalStyle', 'postgres'),
    ('TimeZone', 'UTC'),
    ('extra_float_digits', '3'),
    ('bytea_output', 'hex'),
    ('lc_monetary', 'C'),
    ('search_path', 'pg_catalog'),
)

_PG_EPOCH = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
_EMPTY = frozenset()


class DecodeError(Exception):
    """Decoded data cannot be turned into exact changes (or the slot cannot be read). The message names the object."""

    def __init__(self, message, lsn=None, table=None):
        super().__init__(message)
        self.message = message
        self.lsn = lsn
        self.table = table


# -- LSNs ----------------------------------------------------------------------------------------------------------

def lsn_to_int(text):
    """'16/B374D848' -> 97500059720. None stays None; an int is returned as it is."""
    if text is None or isinstance(text, int):
        return text
    text = str(text).strip()
    high, sep, low = text.partition('/')
    if not sep:
        raise ValueError('not an LSN: %r' % text)
    return (int(high, 16) << 32) | int(low, 16)


def int_to_lsn(value):
    """97500059720 -> '16/B374D848'."""
    if value is None:
        return None
    value = int(value)
    if value < 0:
        raise ValueError('an LSN cannot be negative: %r' % value)
    return '%X/%X' % (value >> 32, value & 0xFFFFFFFF)


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
        return 'Change(%s %s.%s new=%r old=%r unchanged=%s)' % (self.kind, self.schema, self.table, self.new, self.old,
                                                                  sorted(self.unchanged))

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
        return 'Transaction(xid=%s commit=%s end=%s changes=%d)' % (self.xid, int_to_lsn(self.commit_lsn),
                                                                  int_to_lsn(self.end_lsn), len(self.changes))


# -- publications and slots ----------------------------------------------------------------------------------------

def _publication_exists(conn, name):
    with conn.cursor() as cur:
        cur.execute('SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = %s', (name,))
        return cur.fetchone() is not None


def create_publication(conn, name, tables):
    """Create publication `name` FOR TABLE `tables` ((schema, table) pairs); if it exists, set its table list.

    Create it before the slot: pgoutput looks the publication up as of the decoded WAL."""
    tables = [tuple(t) for t in tables]
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
            raise DecodeError('cannot create replication slot "%s": %s' % (slot_name, _pg_message(exc))) from None
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


def _pg_message(exc):
    diag = getattr(exc, 'diag', None)
    primary = getattr(diag, 'message_primary', None) if diag is not None else None
    return primary or str(exc).strip().splitlines()[0]


# -- pgoutput --------------------------------------------------------------------------------------------------------

_BEGIN = struct.Struct('>qqI').unpack_from
_COMMIT = struct.Struct('>bqqq').unpack_from
_I32 = struct.Struct('>I').unpack_from
_I16 = struct.Struct('>H').unpack_from
_REL_HEAD = struct.Struct('>I').unpack_from
_COL_TAIL = struct.Struct('>Ii').unpack_from


def pg_timestamp(micros):
    """pgoutput timestamps are microseconds since 2000-01-01 UTC."""
    return _PG_EPOCH + datetime.timedelta(microseconds=micros)


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
    (relid,) = _REL_HEAD(buf, 1)
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
        raise DecodeError('pgoutput tuple data has %d columns, its Relation message %d' % (_I16(buf, pos)[0],
                                                                                         len(names)))
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
            (relid,) = _I32(buf, 1)
            rel = self.relations.get(relid)
            if rel is None:
                self.relation(relid)
            if tag == 85:
                sub = buf[5]
                if sub == 78:  # 'N'
                    new, unchanged, _pos = _parse_tuple(buf, 6, rel.names)
                    self.txn.changes.append(Change('U', rel.schema, rel.table, new, None, unchanged))
                    return None
                old, _old_unchanged, pos = _parse_tuple(buf, 6, rel.names)
                if sub == 75:  # 'K': only the replica identity columns carry values
                    old = {k: old[k] for k in rel.key_names if k in old}
                new, unchanged, _pos = _parse_tuple(buf, pos + 1, rel.names)
                self.txn.changes.append(Change('U', rel.schema, rel.table, new, old, unchanged))
            elif tag == 73:
                new, unchanged, _pos = _parse_tuple(buf, 6, rel.names)
                self.txn.changes.append(Change('I', rel.schema, rel.table, new, None, unchanged))
            else:
                old, _unchanged, _pos = _parse_tuple(buf, 6, rel.names)
                if buf[5] == 75:
                    old = {k: old[k] for k in rel.key_names if k in old}
                self.txn.changes.append(Change('D', rel.schema, rel.table, None, old))
            return None
        if tag == 66:  # 'B'
            final_lsn, _micros, xid = _BEGIN(buf, 1)
            self.skip = skip_before is not None and final_lsn < skip_before
            self.txn = Transaction(xid, final_lsn)
            return None
        if tag == 67:  # 'C'
            txn = self.txn
            if txn is None:
                raise DecodeError('pgoutput sent Commit without Begin')
            _flags, txn.commit_lsn, txn.end_lsn, micros = _COMMIT(buf, 1)
            txn.commit_time = _PG_EPOCH + datetime.timedelta(microseconds=micros)
            self.txn = None
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
            txn.changes.append(Change('T', None, None, None, None, _EMPTY, targets, bool(options & 1),
                                      bool(options & 2)))
        elif tag == 79:  # 'O' origin
            if txn is not None:
                txn.origin, _pos = _cstring(buf, 9)
        elif tag in (89, 77):  # 'Y' type, 'M' message
            pass
        else:
            raise DecodeError('pgoutput sent an unknown message type %r' % chr(tag))
        return None


# -- wal2json --------------------------------------------------------------------------------------------------------

_json_decode = json.JSONDecoder(parse_float=str, parse_int=str).decode
_TS_RE = re.compile(r'^(\d{4}-\d\d-\d\d)[ T](\d\d:\d\d:\d\d(?:\.\d+)?)([+-]\d\d)(?::?(\d\d))?(?::?(\d\d))?$')
BYTEA_OID = '17'
NUMERIC_TYPES = ('numeric', 'double precision', 'real', 'float4', 'float8', 'decimal')


def parse_pg_timestamptz(text):
    """'2026-11-25 03:06:13.369772+00' (ISO output of timestamptz) -> aware datetime."""
    match = _TS_RE.match(text.strip())
    if not match:
        raise DecodeError('cannot parse timestamp %r' % text)
    date, clock, hours, minutes, seconds = match.groups()
    whole, _dot, frac = clock.partition('.')
    sign = -1 if hours[0] == '-' else 1
    offset = datetime.timedelta(hours=int(hours[1:]), minutes=int(minutes or 0), seconds=int(seconds or 0)) * sign
    value = datetime.datetime.strptime('%s %s' % (date, whole), '%Y-%m-%d %H:%M:%S')
    value = value.replace(microsecond=int((frac + '000000')[:6]) if frac else 0, tzinfo=datetime.timezone(offset))
    return value.astimezone(datetime.timezone.utc)


def _json_value(value):
    if value is True:       # boolean: the text boolout prints
        return 't'
    if value is False:
        return 'f'
    if value is None or isinstance(value, str):
        return value
    # objects or arrays never come from wal2json 2 (json values arrive as strings); keep them exact anyway
    return json.dumps(value, separators=(',', ':'))


def _is_numeric_type(type_name):
    if not type_name:
        return False
    base = type_name.split('(', 1)[0].strip().lower()
    return base in NUMERIC_TYPES


class Wal2JsonParser:
    """Turns wal2json format-version 2 records into Transactions.

    `numeric_as_string`: whether the plugin honoured numeric-data-types-as-string; when it did not, a NULL in a
    numeric/float column may be a NaN or Infinity that the plugin could not print, and raises DecodeError."""

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
            if value is None and not self.numeric_as_string and _is_numeric_type(item.get('type')):
                raise DecodeError(
                    'wal2json sent NULL for numeric column "%s" of %s at %s: this wal2json does not support '
                    'numeric-data-types-as-string and prints NaN and Infinity as NULL, so the real value is unknown. '
                    'Use the pgoutput plugin or wal2json 2.6 or later' % (item.get('name'), where, int_to_lsn(lsn)),
                    lsn=lsn, table=where)
            if value is not None and item.get('typeoid') == BYTEA_OID:   # (numbers are kept as text)
                value = '\\x' + value    # wal2json prints bytea (not a domain over it) without its \x prefix
            values[item['name']] = _json_value(value)
        return values

    def feed(self, data, skip_before=None):
        record = _json_decode(data) if isinstance(data, str) else _json_decode(bytes(data).decode('utf-8'))
        action = record.get('action')
        if action == 'B':
            commit_lsn = lsn_to_int(record['lsn'])
            self.skip = skip_before is not None and commit_lsn < skip_before
            self.txn = Transaction(int(record['xid']) if record.get('xid') is not None else None, commit_lsn,
                                   lsn_to_int(record.get('nextlsn')), parse_pg_timestamptz(record['timestamp']))
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
    """Escape a schema or table name for wal2json's add-tables option."""
    return re.sub(r"([\\ ',.*])", r'\\\1', name)


# -- reading a slot ------------------------------------------------------------------------------------------------

class SlotReader:
    """Peek whole transactions from a logical slot, in commit order, without consuming them.

    `conn` is an autocommit SQL connection to the source database (the reader changes its session settings, see
    READER_SETTINGS). `publication` is required for pgoutput; `tables` ((schema, table) pairs) limits wal2json
    output (add-tables) and filters changes client-side for both plugins.

    The reader peeks a large window (`window_changes` rows) once into a server-side cursor and hands it out in
    batches, so the server decodes each part of the WAL once instead of once per batch. `read()` continues after the
    last transaction it returned as long as the caller confirmed it; otherwise it starts again from the confirmed
    position (the slot's, or what was last passed to `confirm()`), which is what a retry after a failed apply needs.

    `advance_interval` (seconds): `confirm()` always records the position, but calls pg_replication_slot_advance only
    when at least this long has passed since the last advance (0: every time; `flush()` forces it)."""

    def __init__(self, conn, slot_name, plugin='pgoutput', publication=None, tables=None, window_changes=200000,
                 fetch_size=2000, advance_interval=0.0):
        if plugin not in PLUGINS:
            raise DecodeError('unknown decoding plugin %r (expected one of %s)' % (plugin, ', '.join(PLUGINS)))
        if plugin == 'pgoutput' and not publication:
            raise DecodeError('the pgoutput plugin needs a publication name')
        if not conn.autocommit:
            raise DecodeError('SlotReader needs an autocommit connection')
        self.conn = conn
        self.slot_name = slot_name
        self.plugin = plugin
        self.publication = publication
        self.tables = [tuple(t) for t in tables] if tables is not None else None
        self.window_changes = max(int(window_changes), 1)
        self.fetch_size = max(int(fetch_size), 1)
        self.advance_interval = float(advance_interval)
        self.numeric_as_string = True
        self._setup_session()
        info = slot_info(conn, slot_name)
        if info is None:
            raise DecodeError('replication slot "%s" does not exist' % slot_name)
        if info['slot_type'] != 'logical':
            raise DecodeError('replication slot "%s" is a physical slot, not a logical one' % slot_name)
        if info['plugin'] != plugin:
            raise DecodeError('replication slot "%s" uses plugin %s, not %s' % (slot_name, info['plugin'], plugin))
        with conn.cursor() as cur:
            cur.execute('SELECT pg_catalog.current_database()')
            dbname = cur.fetchone()[0]
        if info['database'] != dbname:
            raise DecodeError('replication slot "%s" belongs to database %s, not %s' % (slot_name, info['database'],
                                                                                       dbname))
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
        self._wanted = None
        self.stats = {'windows': 0, 'rows': 0, 'peek_seconds': 0.0}

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
        self._close_window()
        self._position = None
        self._parser = None

    def close(self):
        self._close_window()

    def _peek_query(self):
        slot = sql.Literal(self.slot_name)
        if self.plugin == 'pgoutput':
            names = sql.SQL(',').join(sql.Identifier(p) for p in
                                      ([self.publication] if isinstance(self.publication, str) else self.publication))
            return sql.SQL("SELECT data FROM pg_catalog.pg_logical_slot_peek_binary_changes({}, %s::pg_lsn, %s, "
                           "'proto_version', '1', 'publication_names', {})").format(
                               slot, sql.Literal(names.as_string(self.conn)))
        options = [('format-version', '2'), ('include-xids', '1'), ('include-timestamp', '1'), ('include-lsn', '1'),
                   ('include-types', '1'), ('include-type-oids', '1'), ('include-typmod', '0'),
                   ('include-domain-data-type', '1'),
                   ('include-transaction', '1')]
        if self.numeric_as_string:
            options.append(('numeric-data-types-as-string', '1'))
        if self.tables is not None:
            options.append(('add-tables', ','.join('%s.%s' % (wal2json_escape(s), wal2json_escape(t))
                                                   for s, t in self.tables) or 'pgdts\\.no\\ tables'))
        opts = sql.SQL(', ').join(sql.SQL('{}, {}').format(sql.Literal(k), sql.Literal(v)) for k, v in options)
        return sql.SQL('SELECT data FROM pg_catalog.pg_logical_slot_peek_changes({}, %s::pg_lsn, %s, {})').format(
            slot, opts)

    def _open_window(self, upto_lsn, limit):
        self._close_window()
        with self.conn.cursor() as cur:
            cur.execute('SELECT pg_catalog.pg_current_wal_flush_lsn()::text')
            flush = lsn_to_int(cur.fetchone()[0])
        cursor = self.conn.cursor(name='pgdts_peek_%s' % id(self), binary=True, withhold=True)
        started = time.monotonic()
        try:
            cursor.execute(self._peek_query(), (int_to_lsn(upto_lsn), limit))
        except psycopg.Error as exc:
            try:
                cursor.close()
            except psycopg.Error:
                pass
            text = _pg_message(exc)
            if self.plugin == 'wal2json' and self.numeric_as_string and 'numeric-data-types-as-string' in text:
                self.numeric_as_string = False
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
        # A new decoding session re-sends Relation messages; parser state starts clean at a transaction boundary.
        if self.plugin == 'pgoutput':
            old = self._parser
            self._parser = PgOutputParser()
            if old is not None:
                self._parser.relations = old.relations
        else:
            self._parser = Wal2JsonParser(self.numeric_as_string, self.tables)
        if self.plugin == 'pgoutput' and self.tables is not None:
            self._wanted = set(self.tables)
        else:
            self._wanted = None

    def _next_row(self):
        if self._row_index >= len(self._rows):
            if self._cursor is None:
                return None
            self._rows = self._cursor.fetchmany(self.fetch_size)
            self._row_index = 0
            if not self._rows:
                self._window_limited = self._window_rows >= self._window_limit
                self._close_window()
                return None
            self._window_rows += len(self._rows)
            self.stats['rows'] += len(self._rows)
        row = self._rows[self._row_index]
        self._row_index += 1
        return row[0]

    def read(self, upto_lsn=None, max_changes=10000):
        """Return (transactions, done): whole transactions in commit order, stopping at the first transaction
        boundary at or after `max_changes` changes (one transaction is never split). `done` is True when everything
        committed before `upto_lsn` (or before the WAL end when None) has been returned."""
        upto_lsn = lsn_to_int(upto_lsn)
        if self._position is not None and (self.confirmed_lsn is None or self.confirmed_lsn < self._position):
            self.reset()   # what we returned was not confirmed: hand it out again from the confirmed position
        transactions = []
        count = 0
        opened_here = False
        skip_before = self.confirmed_lsn
        if self._position is not None:
            skip_before = max(skip_before or 0, self._position + 1)
        grow = 1
        while True:
            if self._window_exhausted:
                if opened_here and not self._window_limited:
                    break    # a whole window was read in this call: caught up with what the peek could see
                if transactions:
                    break    # the next window starts from the confirmed position: let the caller confirm first
                if opened_here:
                    grow *= 2    # a window full of already returned rows (one huge transaction): look further
                self.flush()     # a new peek starts where the server slot is: move it to the confirmed position
                self._open_window(upto_lsn, self.window_changes * grow)
                opened_here = True
            data = self._next_row()
            if data is None:
                continue
            txn = self._parser.feed(data, skip_before)
            if txn is None:
                continue
            if self._wanted is not None:
                txn.changes = [c for c in txn.changes if self._keep(c)]
            transactions.append(txn)
            self._position = txn.commit_lsn
            skip_before = txn.commit_lsn + 1
            count += len(txn.changes)
            if count >= max_changes:
                break
        done = self._window_exhausted and not self._window_limited and (
            upto_lsn is None or self._window_end >= upto_lsn)
        if done:
            self.end_lsn = self._window_end
        return transactions, done

    def _keep(self, change):
        if change.kind == 'T':
            change.truncate = [t for t in change.truncate if t in self._wanted]
            return bool(change.truncate)
        return (change.schema, change.table) in self._wanted

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
        target = self.confirmed_lsn
        if target is None or (self.slot_confirmed_lsn is not None and target <= self.slot_confirmed_lsn):
            return
        with self.conn.cursor() as cur:
            cur.execute('SELECT pg_catalog.pg_replication_slot_advance(%s, %s::pg_lsn)', (self.slot_name,
                                                                                           int_to_lsn(target)))
        self.slot_confirmed_lsn = target
        self._last_advance = time.monotonic()
