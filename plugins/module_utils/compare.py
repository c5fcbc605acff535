# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Data comparison of source and destination: row counts, or checksums of key-ordered chunks.

How a checksum comparison works:

- Each side gets ``jobs`` worker threads, each with its own connection. The first connection of a side opens a
  REPEATABLE READ READ ONLY transaction and exports its snapshot; the others import it, so every query of a side sees
  one consistent state of the database (falls back to one snapshot per connection where export is impossible).
- Every session uses the same output settings (TimeZone UTC, DateStyle ISO, extra_float_digits 3, bytea_output hex,
  IntervalStyle postgres, lc_monetary C), so the same value prints the same text on both servers.
- A row hash is computed on the server from the text output of every column (``col::text``), with one explicit
  column list taken from the source table and used on both sides. A chunk aggregate is ``count(*)`` and the sum of
  the 64-bit row hashes, which does not depend on row order. Rows are never shipped to Python for hashing.
- Tables with a key are cut into key ranges on the source (every ``chunk_rows``-th key, found with keyset
  ``ORDER BY key OFFSET n LIMIT 1`` index scans while the first chunks are already being compared); each range is
  aggregated on both sides in parallel. Rows whose nullable key columns hold NULL form one extra chunk. Chunks that
  differ are drilled into: both sides stream key and row hash in the same order and a merge names the keys that are
  missing on the destination, extra on the destination, or different.
- Tables without a usable key are compared by a whole-table order-independent checksum (count plus sum of row
  hashes), split into block ranges (``ctid``) on servers that can scan TID ranges; a mismatch cannot name keys.
- When a text-like key column has a different collation on the two servers, key ranges could hold different rows on
  each side, and without a btree index on the key every range would scan the whole table; such a table is compared
  as one chunk (still exact; drill-down orders keys by their UTF-8 bytes, the same on both sides).

The row hash is ``hashtextextended`` per column, combined by XOR with a per-column seed; when the two servers
disagree on that function (different byte order, PostgreSQL before 11) or use different database encodings, the
portable ``md5`` of the UTF-8 row text is used instead.

Known limit: floating point text differs between PostgreSQL before 12 and 12 or later (shortest-exact output), so
``real``/``double precision`` values compared across that version boundary can report differences.
"""

from __future__ import annotations

import itertools
import queue
import threading
from concurrent.futures import Future, wait

from ansible_collections.pgdts.migration.plugins.module_utils.connection import (
    VALUE_TEXT_SETTINGS, connect, error_text, psycopg, query_value, require_psycopg, sql)

MODES = ('count', 'checksum')
HASH_METHODS = ('auto', 'hashtext', 'md5')
MAX_REPORTED_CHUNKS = 20
APPLICATION_NAME = 'pgdts-compare'

# Settings that make the text output of a value identical on both servers (and keep idle workers alive).
SESSION_SETTINGS = VALUE_TEXT_SETTINGS + (
    ('client_encoding', 'UTF8'),
    ('statement_timeout', '0'),
    ('idle_in_transaction_session_timeout', '0'),
    ('row_security', 'off'),     # every row or an error: a login that row-level security filters cannot prove a match
)

_HASH_PROBE = 'pgdts compare probe \u00e9\u00df'
_STREAM_BATCH = 20000
_TID_SPLIT_MIN_PAGES = 2048          # split a keyless table into block ranges from 16 MB (8 kB pages) on
_TID_RANGE_MIN_VERSION = 140000      # TID range scans exist from PostgreSQL 14

_PRIORITY_CATALOG, _PRIORITY_BOUNDARY, _PRIORITY_DRILL, _PRIORITY_CHUNK, _PRIORITY_STOP = 0, 1, 2, 3, 9


class CompareError(Exception):
    """The comparison cannot run at all (bad arguments, unreadable catalog). Unreachable servers raise ConnectionFailure."""


# ----------------------------------------------------------------------------------------------------------------
# worker pools: one per side, each thread owns one connection inside the side's snapshot
# ----------------------------------------------------------------------------------------------------------------

class _Side:
    """The worker threads and connections of one server."""

    def __init__(self, label, spec, dbname, jobs):
        self.label = label
        self.spec = spec
        self.dbname = dbname
        self.jobs = jobs
        self.queue = queue.PriorityQueue()
        self.counter = itertools.count()
        self.threads = []
        self.conns = []
        self.lock = threading.Lock()
        self.snapshot = None
        self.version = None
        self.encoding = None
        self.probe = None
        self.open_errors = []

    def _open(self):
        conn = connect(self.spec, dbname=self.dbname, autocommit=True, application_name=APPLICATION_NAME)
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL('SELECT {}').format(sql.SQL(', ').join(
                    sql.SQL('pg_catalog.set_config({}, {}, false)').format(sql.Placeholder(), sql.Placeholder())
                    for _item in SESSION_SETTINGS)), [v for item in SESSION_SETTINGS for v in item])
        except Exception:
            conn.close()
            raise
        return conn

    @staticmethod
    def _begin(conn):
        conn.autocommit = False
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True

    def start(self):
        """Open the first connection (errors propagate), export its snapshot, then start the workers."""
        conn = self._open()
        with self.lock:
            self.conns.append(conn)
        self.version = conn.info.server_version
        self.encoding = query_value(conn, 'SELECT pg_catalog.pg_encoding_to_char(encoding) FROM pg_catalog.pg_database '
                                          'WHERE datname = pg_catalog.current_database()')
        try:
            self.probe = query_value(conn, 'SELECT pg_catalog.hashtextextended(%s, 7)', (_HASH_PROBE,))
        except psycopg.Error:
            self.probe = None
        self._begin(conn)
        try:
            self.snapshot = query_value(conn, 'SELECT pg_catalog.pg_export_snapshot()')
        except psycopg.Error:
            conn.rollback()
            self.snapshot = None
        for index in range(self.jobs):
            thread = threading.Thread(target=self._run, args=(conn if index == 0 else None,),
                                      name='pgdts-compare-%s-%d' % (self.label, index), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _run(self, conn):
        if conn is None:
            try:
                conn = self._open()
            except Exception as exc:  # a worker that cannot connect leaves its share to the others
                self.open_errors.append(error_text(exc))
                return
            with self.lock:
                self.conns.append(conn)
            try:
                self._begin(conn)
                if self.snapshot:
                    conn.execute(sql.SQL('SET TRANSACTION SNAPSHOT {}').format(sql.Literal(self.snapshot)))
            except Exception as exc:
                self.open_errors.append(error_text(exc))
                return
        while True:
            _priority, _seq, task = self.queue.get()
            if task is None:
                return
            func, args, future = task
            if not future.set_running_or_notify_cancel():
                continue
            try:
                with conn.transaction():
                    result = func(conn, *args)
            except BaseException as exc:  # pylint: disable=broad-except
                future.set_exception(exc)
            else:
                future.set_result(result)

    def submit(self, func, *args, priority=_PRIORITY_CHUNK):
        future = Future()
        self.queue.put((priority, next(self.counter), (func, args, future)))
        return future

    def close(self, abort=False):
        if abort:
            while True:
                try:
                    _priority, _seq, task = self.queue.get_nowait()
                except queue.Empty:
                    break
                if task is not None:
                    task[2].cancel()
            with self.lock:
                conns = list(self.conns)
            for conn in conns:
                try:
                    conn.cancel_safe(timeout=5)
                except Exception:  # pylint: disable=broad-except
                    pass
        for _thread in self.threads:
            self.queue.put((_PRIORITY_STOP, next(self.counter), None))
        for thread in self.threads:
            thread.join(timeout=60)
        with self.lock:
            conns, self.conns = list(self.conns), []
        for conn in conns:
            try:
                conn.close()
            except Exception:  # pylint: disable=broad-except
                pass


# ----------------------------------------------------------------------------------------------------------------
# SQL pieces
# ----------------------------------------------------------------------------------------------------------------

_ALIAS = '_pgdts_t'


def _col(name):
    return sql.Identifier(_ALIAS, name)


def _from(table):
    return sql.SQL('{} AS {}').format(sql.Identifier(table.schema, table.name), sql.Identifier(_ALIAS))


def _hash_columns(table):
    """The source's non-generated columns, then its generated ones: one explicit list for both sides."""
    plain = [c.name for c in table.columns if not c.generated]
    generated = [c.name for c in table.columns if c.generated]
    return plain + generated


def _row_hash(columns, method):
    """A signed 64-bit hash of the row's text output (same value -> same hash on both sides)."""
    if not columns:
        return sql.SQL('0::pg_catalog.int8')
    if method == 'md5':
        row_text = sql.SQL('ROW({})::pg_catalog.text').format(sql.SQL(', ').join(_col(c) for c in columns))
        return sql.SQL("('x' OPERATOR(pg_catalog.||) pg_catalog.left(pg_catalog.md5(pg_catalog.convert_to({}, 'UTF8')), 16))"
                       "::pg_catalog.bit(64)::pg_catalog.int8").format(row_text)
    parts = []
    for seed, name in enumerate(columns, start=1):
        parts.append(sql.SQL('COALESCE(pg_catalog.hashtextextended(({}::pg_catalog.text) COLLATE "C", {}), {})').format(
            _col(name), sql.Literal(seed), sql.Literal(-seed)))
    return sql.SQL(' OPERATOR(pg_catalog.#) ').join(parts)


def _key_list(keys):
    return sql.SQL(', ').join(_col(k) for k in keys)


def _key_compare(keys, operator):
    """(k1, k2) >= (%s, %s): boundaries travel as text of unknown type, read by each side's input function."""
    return sql.SQL('({}) {} ({})').format(_key_list(keys), sql.SQL(operator),
                                          sql.SQL(', ').join(sql.Placeholder() for _k in keys))


def _chunk_filter(plan, chunk):
    """WHERE clause and parameters selecting the rows of a chunk."""
    keys = plan.table.key_columns
    conds, params = [], []
    if chunk.kind == 'nulls':
        any_null = [sql.SQL('{} IS NULL').format(_col(k)) for k in plan.nullable_keys]
        conds.append(sql.SQL('({})').format(sql.SQL(' OR ').join(any_null)))
    elif chunk.kind == 'range':
        conds.extend(sql.SQL('{} IS NOT NULL').format(_col(k)) for k in plan.nullable_keys)
        if chunk.lo is not None:
            conds.append(_key_compare(keys, '>='))
            params.extend(chunk.lo)
        if chunk.hi is not None:
            conds.append(_key_compare(keys, '<'))
            params.extend(chunk.hi)
    if not conds:
        return sql.SQL(''), params
    return sql.SQL(' WHERE ') + sql.SQL(' AND ').join(conds), params


def _tid_filter(lo_page, hi_page):
    conds, params = [], []
    if lo_page is not None:
        conds.append(sql.SQL('ctid >= %s::pg_catalog.tid'))
        params.append('(%d,0)' % lo_page)
    if hi_page is not None:
        conds.append(sql.SQL('ctid < %s::pg_catalog.tid'))
        params.append('(%d,0)' % hi_page)
    if not conds:
        return sql.SQL(''), params
    return sql.SQL(' WHERE ') + sql.SQL(' AND ').join(conds), params


# ----------------------------------------------------------------------------------------------------------------
# task bodies (run in worker threads, each gets its connection first)
# ----------------------------------------------------------------------------------------------------------------

_CATALOG_QUERY = """
SELECT w.ord, c.oid IS NOT NULL,
       COALESCE(pg_catalog.pg_relation_size(c.oid) / pg_catalog.current_setting('block_size')::int, 0),
       COALESCE(pg_catalog.array_agg(a.attname::text ORDER BY a.attnum) FILTER (WHERE a.attnum IS NOT NULL), '{}'),
       COALESCE(pg_catalog.array_agg(
         CASE WHEN a.attcollation = 0 THEN ''
              WHEN co.collprovider = 'd' THEN pg_catalog.concat_ws('/', COALESCE(dj->>'datlocprovider', 'c'),
                   dj->>'datcollate', COALESCE(dj->>'daticulocale', dj->>'datlocale'), 'true')
              ELSE pg_catalog.concat_ws('/', co.collprovider, to_jsonb(co)->>'collcollate',
                   COALESCE(to_jsonb(co)->>'colliculocale', to_jsonb(co)->>'colllocale'),
                   COALESCE(to_jsonb(co)->>'collisdeterministic', 'true')) END
         ORDER BY a.attnum) FILTER (WHERE a.attnum IS NOT NULL), '{}'),
       (SELECT pg_catalog.json_agg(ix.cols) FROM (
          SELECT (SELECT pg_catalog.array_agg(ka.attname::text ORDER BY k.ord)
                    FROM pg_catalog.unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                    LEFT JOIN pg_catalog.pg_attribute ka ON ka.attrelid = i.indrelid AND ka.attnum = k.attnum
                   WHERE k.ord <= COALESCE((pg_catalog.to_jsonb(i)->>'indnkeyatts')::int, i.indnatts)) AS cols
            FROM pg_catalog.pg_index i
            JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
            JOIN pg_catalog.pg_am am ON am.oid = ic.relam
           WHERE i.indrelid = c.oid AND i.indisvalid AND i.indpred IS NULL AND am.amname = 'btree') ix)
  FROM ROWS FROM (pg_catalog.unnest(%s::text[]), pg_catalog.unnest(%s::text[])) WITH ORDINALITY AS w(s, n, ord)
  CROSS JOIN (SELECT pg_catalog.to_jsonb(d) AS dj FROM pg_catalog.pg_database d
               WHERE d.datname = pg_catalog.current_database()) db
  LEFT JOIN pg_catalog.pg_namespace ns ON ns.nspname = w.s
  LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = ns.oid AND c.relname = w.n AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
 GROUP BY w.ord, c.oid
 ORDER BY w.ord
"""


def _task_catalog(conn, schemas, names):
    """Per requested table: exists, pages, {column: collation descriptor}, [leading columns of each btree index]."""
    with conn.cursor() as cur:
        cur.execute(_CATALOG_QUERY, (schemas, names))
        rows = cur.fetchall()
    return [(exists, pages, dict(zip(columns, collations)), indexes or [])
            for _ord, exists, pages, columns, collations, indexes in rows]


def _task_aggregate(conn, query, params):
    with conn.cursor() as cur:
        cur.execute(query, params)
        count, total = cur.fetchone()
    return int(count), int(total or 0)


def _task_boundaries(conn, plan):
    """Walk the key order on the source and hand every chunk to both sides as soon as its end is known."""
    keys = plan.table.key_columns
    select = sql.SQL('SELECT {} FROM {}').format(
        sql.SQL(', ').join(sql.SQL('{}::pg_catalog.text').format(_col(k)) for k in keys), _from(plan.table))
    order = sql.SQL(' ORDER BY {} OFFSET %s LIMIT 1').format(_key_list(keys))
    not_null = [sql.SQL('{} IS NOT NULL').format(_col(k)) for k in plan.nullable_keys]
    first = select + (sql.SQL(' WHERE ') + sql.SQL(' AND ').join(not_null) if not_null else sql.SQL('')) + order
    after = select + sql.SQL(' WHERE ') + sql.SQL(' AND ').join(not_null + [_key_compare(keys, '>=')]) + order
    lo = None
    with conn.cursor() as cur:
        while True:
            if lo is None:
                cur.execute(first, (plan.chunk_rows,))
            else:
                cur.execute(after, list(lo) + [plan.chunk_rows])
            row = cur.fetchone()
            if row is None:
                break
            plan.add_chunk('range', lo, tuple(row))
            lo = tuple(row)
    plan.add_chunk('range', lo, None)
    if plan.nullable_keys:
        plan.add_chunk('nulls', None, None)


class _Stream:
    """Rows handed from a worker thread to the merging thread in batches (bounded, stoppable)."""

    def __init__(self, stop):
        self.queue = queue.Queue(maxsize=4)
        self.stop = stop

    def put(self, item):
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def rows(self):
        while True:
            item = self.queue.get()
            if isinstance(item, BaseException):
                raise item
            if not item:
                return
            yield from item


_cursor_ids = itertools.count(1)


def _task_stream(conn, query, params, stream):
    try:
        with conn.cursor(name='pgdts_compare_%d' % next(_cursor_ids)) as cur:
            cur.execute(query, params)
            while not stream.stop.is_set():
                rows = cur.fetchmany(_STREAM_BATCH)
                if not stream.put(rows) or not rows:
                    return
    except BaseException as exc:
        stream.put(exc)
        raise


# ----------------------------------------------------------------------------------------------------------------
# per-table plans
# ----------------------------------------------------------------------------------------------------------------

class _Chunk:
    __slots__ = ('index', 'kind', 'lo', 'hi', 'futures', 'counts', 'sums')

    def __init__(self, index, kind, lo, hi):
        self.index = index
        self.kind = kind            # 'range', 'nulls' (rows with a NULL in a nullable key column), 'table'
        self.lo = lo
        self.hi = hi
        self.futures = []
        self.counts = [0, 0]
        self.sums = [0, 0]


class _Plan:
    """What is compared for one table and the results gathered so far."""

    def __init__(self, comparison, table):
        self.comparison = comparison
        self.table = table
        self.chunk_rows = comparison.chunk_rows
        self.strategy = None        # 'count', 'whole', 'keyed', 'keyed_single'
        self.error = None
        self.notes = []
        self.columns = _hash_columns(table)
        self.hash_expr = None
        self.nullable_keys = []
        self.chunks = []
        self.lock = threading.Lock()
        self.boundary_future = None
        self.side_futures = [[], []]     # whole-table parts / counts per side
        self.samples = []
        self.mismatched = []

    def fail(self, message):
        if self.error is None:
            self.error = message

    def prepare(self, src_info, dst_info):
        """Check both catalogs and choose how to compare; returns False when the table is an error already."""
        table = self.table
        for label, info in (('source', src_info), ('destination', dst_info)):
            exists, _pages, columns, _indexes = info
            if not exists:
                self.fail('table %s does not exist on the %s' % (table.qualified, label))
                return False
            missing = [c for c in self.columns + list(table.key_columns) if c not in columns]
            if missing:
                self.fail('column%s %s missing on the %s' % ('s' if len(missing) > 1 else '',
                                                             ', '.join(sorted(set(missing))), label))
                return False
        if self.comparison.mode == 'count':
            self.strategy = 'count'
            return True
        self.hash_expr = _row_hash(self.columns, self.comparison.hash_method)
        if not table.key_columns:
            self.strategy = 'whole'
            return True
        by_name = {c.name: c for c in table.columns}
        self.nullable_keys = [k for k in table.key_columns if not getattr(by_name.get(k), 'not_null', False)]
        keys = list(table.key_columns)
        differing = [k for k in keys if src_info[2].get(k) != dst_info[2].get(k)]
        unindexed = [label for label, info in (('source', src_info), ('destination', dst_info))
                     if not any(list(index[:len(keys)]) == keys for index in info[3])]
        self.strategy = 'keyed_single' if differing or unindexed else 'keyed'
        if differing:
            self.notes.append('key column collation differs between the servers (%s): compared as one chunk'
                              % ', '.join(differing))
        elif unindexed:
            self.notes.append('no btree index on the key on the %s: compared as one chunk' % ' and the '.join(unindexed))
        return True

    # -- task submission -----------------------------------------------------------------------------------------
    def submit(self, src_info, dst_info):
        comp = self.comparison
        if self.strategy == 'count':
            query = sql.SQL('SELECT pg_catalog.count(*), 0 FROM {}').format(_from(self.table))
            for side_no, side in enumerate(comp.sides):
                self.side_futures[side_no].append(side.submit(_task_aggregate, query, []))
        elif self.strategy == 'whole':
            for side_no, (side, info) in enumerate(zip(comp.sides, (src_info, dst_info))):
                for lo, hi in self._page_ranges(side, info[1]):
                    where, params = _tid_filter(lo, hi)
                    query = self._aggregate_query(where)
                    self.side_futures[side_no].append(side.submit(_task_aggregate, query, params))
        elif self.strategy == 'keyed_single':
            self.add_chunk('table', None, None)
        else:
            self.boundary_future = comp.sides[0].submit(_task_boundaries, self, priority=_PRIORITY_BOUNDARY)

    def _page_ranges(self, side, pages):
        jobs = self.comparison.jobs
        if side.version < _TID_RANGE_MIN_VERSION or pages < _TID_SPLIT_MIN_PAGES or jobs < 2:
            return [(None, None)]
        parts = min(jobs * 2, max(2, pages // 1024))
        step = -(-pages // parts)
        cuts = list(range(step, pages, step))
        return list(zip([None] + cuts, cuts + [None]))

    def _aggregate_query(self, where):
        return sql.SQL('SELECT pg_catalog.count(*), pg_catalog.sum({}) FROM {}{}').format(
            self.hash_expr, _from(self.table), where)

    def add_chunk(self, kind, lo, hi):
        with self.lock:
            chunk = _Chunk(len(self.chunks), kind, lo, hi)
            self.chunks.append(chunk)
        where, params = _chunk_filter(self, chunk)
        query = self._aggregate_query(where)
        chunk.futures = [side.submit(_task_aggregate, query, params) for side in self.comparison.sides]

    def pending(self):
        futures = [f for side in self.side_futures for f in side]
        with self.lock:
            for chunk in self.chunks:
                futures.extend(chunk.futures)
        return futures

    # -- evaluation ----------------------------------------------------------------------------------------------
    def _outcome(self, future, label):
        try:
            return future.result()
        except Exception as exc:  # pylint: disable=broad-except
            self.fail('on the %s: %s' % (label, error_text(exc)))
            return None

    def evaluate(self):
        labels = ('source', 'destination')
        if self.error:
            return
        if self.boundary_future is not None:
            self._outcome(self.boundary_future, 'source')
        if self.strategy in ('count', 'whole'):
            totals = []
            for side_no in (0, 1):
                outs = [self._outcome(f, labels[side_no]) for f in self.side_futures[side_no]]
                if self.error:
                    return
                totals.append((sum(o[0] for o in outs), sum(o[1] for o in outs)))
            chunk = _Chunk(0, 'table', None, None)
            chunk.counts = [totals[0][0], totals[1][0]]
            chunk.sums = [totals[0][1], totals[1][1]]
            self.chunks = [chunk]
        else:
            for chunk in self.chunks:
                for side_no in (0, 1):
                    out = self._outcome(chunk.futures[side_no], labels[side_no])
                    if out is not None:
                        chunk.counts[side_no], chunk.sums[side_no] = out
                if self.error:
                    return
        self.mismatched = [c for c in self.chunks if c.counts[0] != c.counts[1] or c.sums[0] != c.sums[1]]

    # -- drill-down ----------------------------------------------------------------------------------------------
    def drill_query(self, chunk):
        keys = self.table.key_columns
        where, params = _chunk_filter(self, chunk)
        query = sql.SQL('SELECT {}, {} FROM {}{} ORDER BY {}').format(
            sql.SQL(', ').join(sql.SQL('{}::pg_catalog.text').format(_col(k)) for k in keys), self.hash_expr,
            _from(self.table), where,
            sql.SQL(', ').join(sql.SQL("pg_catalog.convert_to({}::pg_catalog.text, 'UTF8') NULLS LAST").format(_col(k))
                               for k in keys))
        return query, params

    # -- result --------------------------------------------------------------------------------------------------
    def key_dict(self, values):
        if values is None:
            return None
        return dict(zip(self.table.key_columns, values))

    def result(self):
        comp = self.comparison
        table = self.table
        out = {'database': comp.dbname, 'schema': table.schema, 'table': table.name, 'source_rows': None,
               'destination_rows': None, 'result': 'error', 'mode': comp.mode, 'chunks': 0, 'mismatched_chunks': [],
               'mismatched_chunk_count': 0, 'sample_keys': [], 'samples': [], 'message': ''}
        if self.error:
            out['message'] = self.error
            return out
        src_rows = sum(c.counts[0] for c in self.chunks)
        dst_rows = sum(c.counts[1] for c in self.chunks)
        out.update(source_rows=src_rows, destination_rows=dst_rows, chunks=len(self.chunks),
                   mismatched_chunk_count=len(self.mismatched))
        if self.strategy == 'count':
            out['result'] = 'match' if src_rows == dst_rows else 'mismatch'
            out['message'] = ('row counts match (%d rows)' % src_rows if src_rows == dst_rows else
                              'row counts differ: %d on the source, %d on the destination' % (src_rows, dst_rows))
            return out
        out['mismatched_chunks'] = [
            {'from': self.key_dict(c.lo), 'to': self.key_dict(c.hi), 'kind': c.kind,
             'source_rows': c.counts[0], 'destination_rows': c.counts[1]} for c in self.mismatched[:MAX_REPORTED_CHUNKS]]
        out['samples'] = list(self.samples)
        out['sample_keys'] = [s['key'] for s in self.samples]
        notes = list(self.notes)
        if not self.mismatched:
            out['result'] = 'match'
            plural = '' if len(self.chunks) == 1 else 's'
            message = '%d rows match (checksums of %d chunk%s)' % (src_rows, len(self.chunks), plural)
        else:
            out['result'] = 'mismatch'
            if self.strategy == 'whole':
                message = ('whole-table checksum differs (%d rows on the source, %d on the destination); '
                           'the table has no key, so the differing rows cannot be named' % (src_rows, dst_rows))
            else:
                kinds = {}
                for sample in self.samples:
                    kinds[sample['problem']] = kinds.get(sample['problem'], 0) + 1
                message = '%d of %d chunks differ (%d rows on the source, %d on the destination)' % (
                    len(self.mismatched), len(self.chunks), src_rows, dst_rows)
                if kinds:
                    message += '; sample keys: ' + ', '.join('%d %s' % (n, _PROBLEM_TEXT[k]) for k, n in sorted(kinds.items()))
        out['message'] = '; '.join([message] + notes)
        return out


_PROBLEM_TEXT = {'missing': 'missing on the destination', 'extra': 'extra on the destination',
                 'different': 'with different values'}


# ----------------------------------------------------------------------------------------------------------------
# merge of two key-ordered streams
# ----------------------------------------------------------------------------------------------------------------

def _sort_key(key):
    """The drill-down order: each key column's UTF-8 text as bytes, NULLs last."""
    return tuple((1, b'') if v is None else (0, v.encode('utf-8')) for v in key)


def _groups(rows, nkeys):
    """Consecutive rows with the same key -> (key, [row hashes]); keys repeat only where NULLs or no unique key."""
    current, hashes = None, None
    for row in rows:
        key = tuple(row[:nkeys])
        if hashes is not None and key == current:
            hashes.append(row[nkeys])
            continue
        if hashes is not None:
            yield current, hashes
        current, hashes = key, [row[nkeys]]
    if hashes is not None:
        yield current, hashes


def merge_differences(source_rows, destination_rows, nkeys, limit):
    """Rows (key texts..., row hash) in the same key order from both sides -> up to `limit` (key, problem)."""
    found = []
    src, dst = _groups(source_rows, nkeys), _groups(destination_rows, nkeys)
    a, b = next(src, None), next(dst, None)
    while (a is not None or b is not None) and len(found) < limit:
        if a is not None and b is not None and a[0] == b[0]:
            same = a[1] == b[1] if len(a[1]) == 1 == len(b[1]) else sorted(a[1]) == sorted(b[1])
            if not same:
                found.append((a[0], 'different'))
            a, b = next(src, None), next(dst, None)
        elif b is None or (a is not None and _sort_key(a[0]) < _sort_key(b[0])):
            found.append((a[0], 'missing'))
            a = next(src, None)
        else:
            found.append((b[0], 'extra'))
            b = next(dst, None)
    return found


# ----------------------------------------------------------------------------------------------------------------
# the comparison
# ----------------------------------------------------------------------------------------------------------------

class _Comparison:
    def __init__(self, source, destination, dbname, mode, jobs, chunk_rows, sample_limit, dest_dbname, hash_method):
        self.dbname = dbname
        self.mode = mode
        self.jobs = jobs
        self.chunk_rows = chunk_rows
        self.sample_limit = sample_limit
        self.requested_hash = hash_method
        self.hash_method = None
        self.sides = [_Side('source', source, dbname, jobs), _Side('destination', destination, dest_dbname or dbname, jobs)]

    def choose_hash(self):
        src, dst = self.sides
        if self.requested_hash != 'auto':
            self.hash_method = self.requested_hash
        elif src.probe is not None and src.probe == dst.probe and src.encoding == dst.encoding:
            self.hash_method = 'hashtext'
        else:
            self.hash_method = 'md5'
        if self.hash_method == 'hashtext' and (src.probe is None or dst.probe is None):
            raise CompareError('hash_method hashtext needs hashtextextended() (PostgreSQL 11 or later) on both servers')

    def run(self, tables):
        for side in self.sides:
            side.start()
        self.choose_hash()
        # Biggest tables first, so that they do not end up alone at the end.
        ordered = sorted(tables, key=lambda t: -(t.size_bytes or 0))
        plans = {id(t): _Plan(self, t) for t in ordered}
        schemas = [t.schema for t in ordered]
        names = [t.name for t in ordered]
        infos = [side.submit(_task_catalog, schemas, names, priority=_PRIORITY_CATALOG) for side in self.sides]
        wait(infos)
        for side, future in zip(self.sides, infos):
            if future.exception() is not None:
                raise CompareError('cannot read the catalog of database %s on the %s: %s'
                                   % (side.dbname, side.label, error_text(future.exception())))
        src_infos, dst_infos = [f.result() for f in infos]
        for table, src_info, dst_info in zip(ordered, src_infos, dst_infos):
            plan = plans[id(table)]
            if plan.prepare(src_info, dst_info):
                plan.submit(src_info, dst_info)
        boundary = [p.boundary_future for p in plans.values() if p.boundary_future is not None]
        wait(boundary)
        wait([f for p in plans.values() for f in p.pending()])
        for plan in plans.values():
            plan.evaluate()
        for table in ordered:
            plan = plans[id(table)]
            if plan.error is None and plan.mismatched and plan.strategy in ('keyed', 'keyed_single'):
                self.drill(plan)
        return [plans[id(t)].result() for t in tables]

    def drill(self, plan):
        nkeys = len(plan.table.key_columns)
        for chunk in plan.mismatched:
            limit = self.sample_limit - len(plan.samples)
            if limit <= 0:
                break
            query, params = plan.drill_query(chunk)
            stop = threading.Event()
            streams = [_Stream(stop), _Stream(stop)]
            futures = [side.submit(_task_stream, query, params, stream, priority=_PRIORITY_DRILL)
                       for side, stream in zip(self.sides, streams)]
            try:
                found = merge_differences(streams[0].rows(), streams[1].rows(), nkeys, limit)
            except Exception as exc:  # pylint: disable=broad-except
                plan.notes.append('drill-down failed: %s' % error_text(exc))
                found = []
            finally:
                stop.set()
                wait(futures)
            for key, problem in found:
                plan.samples.append({'key': plan.key_dict(key), 'problem': problem})

    def close(self, abort=False):
        for side in self.sides:
            side.close(abort=abort)


def _validate(mode, jobs, chunk_rows, sample_limit, hash_method):
    if mode not in MODES:
        raise CompareError('mode must be one of %s, got %r' % (', '.join(MODES), mode))
    if hash_method not in HASH_METHODS:
        raise CompareError('hash_method must be one of %s, got %r' % (', '.join(HASH_METHODS), hash_method))
    for name, value, minimum in (('jobs', jobs, 1), ('chunk_rows', chunk_rows, 1), ('sample_limit', sample_limit, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise CompareError('%s must be a whole number of at least %d, got %r' % (name, minimum, value))


def compare_tables(source, destination, dbname, tables, mode='checksum', jobs=4, chunk_rows=100000,
                   sample_limit=10, dest_dbname=None, hash_method='auto'):
    """Compare tables of database `dbname` on source and destination (`dest_dbname` on the destination if given).

    source/destination: connection.ServerSpec; tables: catalog.Table objects of the source (tables, relkind 'r', and
    materialized views, relkind 'm', read with SELECT; others are skipped). mode: 'count' | 'checksum'. One dict per compared table, in the given order:
    {'database', 'schema', 'table', 'source_rows', 'destination_rows', 'result': 'match'|'mismatch'|'error', 'mode',
     'chunks': n, 'mismatched_chunks': [{'from': key|None, 'to': key|None, 'kind', 'source_rows',
     'destination_rows'}] (at most 20; a chunk holds keys >= from and < to), 'mismatched_chunk_count': n,
     'sample_keys': [{column: value}] (at most sample_limit), 'samples': [{'key': {...}, 'problem':
     'missing'|'extra'|'different'}], 'message': str}. Key values are PostgreSQL text output (None for NULL).
    A table key is its key_columns (primary key or replica identity index); tables without one get a whole-table
    checksum. hash_method 'auto' picks hashtextextended when both servers agree on it, else md5.
    Raises CompareError for bad arguments and connection.ConnectionFailure when a server cannot be reached.
    """
    require_psycopg()
    _validate(mode, jobs, chunk_rows, sample_limit, hash_method)
    if not dbname:
        raise CompareError('dbname is required')
    tables = [t for t in tables if t.relkind in ('r', 'm')]
    if not tables:
        return []
    comparison = _Comparison(source, destination, dbname, mode, jobs, chunk_rows, sample_limit, dest_dbname, hash_method)
    aborted = True
    try:
        results = comparison.run(tables)
        aborted = False
    finally:
        comparison.close(abort=aborted)
    return results


def summarize(results):
    """Totals over compare_tables() results: tables, match, mismatch, error and rows (source rows compared)."""
    summary = {'tables': 0, 'match': 0, 'mismatch': 0, 'error': 0, 'rows': 0}
    for item in results:
        summary['tables'] += 1
        if item.get('result') in ('match', 'mismatch', 'error'):
            summary[item['result']] += 1
        summary['rows'] += item.get('source_rows') or 0
    return summary
