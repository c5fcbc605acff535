# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The full copy: tables streamed with COPY from one exported snapshot, largest first, by parallel jobs.

Large tables are split into ranges of heap blocks (TID range scans) that are copied in parallel. Data flows
source -> this process -> destination; nothing is written to disk on the way.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time

from ansible_collections.pgdts.migration.plugins.module_utils.connection import WRITER_OPTIONS, connect, sql

FIRST_USER_OID = 16384
DEFAULT_SPLIT_BYTES = 64 * 1024 * 1024
# Items at least this large are read through a psql child process (C speed, large chunks) instead of row by row.
STREAM_READER_BYTES = 8 * 1024 * 1024
READ_CHUNK = 1 << 20
PROGRESS_INTERVAL = 1.0


class CopyError(Exception):
    def __init__(self, table, message):
        super().__init__('copying %s failed: %s' % (table, message))
        self.table = table
        self.message = message


class CopyItem:
    """One unit of copy work: a whole table, or one block range of a split table."""

    __slots__ = ('table', 'part', 'parts', 'first_block', 'last_block', 'est_bytes')

    def __init__(self, table, part=0, parts=1, first_block=None, last_block=None, est_bytes=0):
        self.table = table
        self.part = part
        self.parts = parts
        self.first_block = first_block
        self.last_block = last_block     # exclusive; None = to the end
        self.est_bytes = est_bytes

    @property
    def whole(self):
        return self.parts == 1


def table_pages(conn, tables):
    """relpages per table (for splitting); 0 when unknown."""
    if not tables:
        return {}
    rows = conn.execute('SELECT oid, GREATEST(relpages, (pg_catalog.pg_relation_size(oid) / 8192)::int) '
                        'FROM pg_catalog.pg_class WHERE oid = ANY(%s)', ([t.oid for t in tables],)).fetchall()
    return dict(rows)


def plan_items(tables, pages, jobs, split_bytes=DEFAULT_SPLIT_BYTES):
    """Work items, largest first. A table larger than split_bytes (and than a fair share) is split by blocks."""
    items = []
    for table in tables:
        if not table.has_storage:
            continue
        size = table.size_bytes or 0
        npages = pages.get(table.oid, 0)
        parts = 1
        if jobs > 1 and size > split_bytes and npages > 1:
            parts = min(max(2, int(size // split_bytes)), jobs * 4, npages)
        if parts == 1:
            items.append(CopyItem(table, est_bytes=size))
            continue
        step = max(1, npages // parts)
        for part in range(parts):
            first = part * step
            last = None if part == parts - 1 else (part + 1) * step
            items.append(CopyItem(table, part, parts, first, last, size // parts))
    items.sort(key=lambda item: (-item.est_bytes, item.table.qualified, item.part))
    return items


def copy_format(table):
    """Binary when every column has a built-in type (binary arrays/composites embed type OIDs), else text."""
    return 'binary' if all(c.type_oid < FIRST_USER_OID for c in table.copy_columns) else 'text'


def _select_statement(item):
    table = item.table
    cols = sql.SQL(', ').join(sql.Identifier(c.name) for c in table.copy_columns)
    target = sql.Identifier(table.schema, table.name)
    fmt = sql.SQL(copy_format(table))
    if item.whole:
        return sql.SQL('COPY {} ({}) TO STDOUT (FORMAT {})').format(target, cols, fmt)
    cond = sql.SQL('ctid >= {}::tid').format(sql.Literal('(%d,0)' % item.first_block))
    if item.last_block is not None:
        cond = sql.SQL('{} AND ctid < {}::tid').format(cond, sql.Literal('(%d,0)' % item.last_block))
    return sql.SQL('COPY (SELECT {} FROM ONLY {} WHERE {}) TO STDOUT (FORMAT {})').format(cols, target, cond, fmt)


def _insert_statement(item, freeze):
    table = item.table
    cols = sql.SQL(', ').join(sql.Identifier(c.name) for c in table.copy_columns)
    options = 'FORMAT %s%s' % (copy_format(table), ', FREEZE' if freeze else '')
    target = sql.Identifier(table.schema, table.name)
    return sql.SQL('COPY {} ({}) FROM STDIN ({})').format(target, cols, sql.SQL(options))


def truncate_statement(table):
    return sql.SQL('TRUNCATE ONLY {}').format(sql.Identifier(table.schema, table.name))


class ParallelCopy:
    """Copies items with `jobs` threads, each holding one source session inside the exported snapshot.

    Callbacks (called from worker threads, must be thread-safe):
      on_table_start(table), on_progress(table, bytes_delta), on_table_done(table, rows, bytes)
    `imported` is set once every job has imported the snapshot (the exporting session may then close).
    """

    def __init__(self, source, destination, dbname, snapshot, jobs, on_table_start=None, on_progress=None,
                 on_table_done=None, stop_event=None, log=None, psql=None):
        self.psql = psql
        self.source = source
        self.destination = destination
        self.dbname = dbname
        self.snapshot = snapshot
        self.jobs = max(1, int(jobs))
        self.on_table_start = on_table_start or (lambda table: None)
        self.on_progress = on_progress or (lambda table, delta: None)
        self.on_table_done = on_table_done or (lambda table, rows, nbytes: None)
        self.stop_event = stop_event or threading.Event()   # set by the caller: stop copying
        self._abort = threading.Event()                     # set by a failed job: the other jobs stop too
        self.log = log or (lambda msg: None)
        self.imported = threading.Event()
        self._imported_count = 0
        self._lock = threading.Lock()
        self._errors = []
        self._parts_left = {}
        self._table_rows = {}
        self._table_bytes = {}

    def _part_done(self, table, rows, nbytes):
        with self._lock:
            key = table.qualified
            self._parts_left[key] -= 1
            self._table_rows[key] = self._table_rows.get(key, 0) + rows
            self._table_bytes[key] = self._table_bytes.get(key, 0) + nbytes
            finished = self._parts_left[key] == 0
            total_rows, total_bytes = self._table_rows[key], self._table_bytes[key]
        if finished:
            self.on_table_done(table, total_rows, total_bytes)

    def run(self, items):
        """Copy everything; raises CopyError for the first failure (other jobs stop at their next item)."""
        work = queue.Queue()
        started = set()
        for item in items:
            work.put(item)
            self._parts_left[item.table.qualified] = self._parts_left.get(item.table.qualified, 0) + 1
        split_tables = {item.table.qualified: item.table for item in items if not item.whole}
        if split_tables:
            with connect(self.destination, self.dbname, autocommit=False, application_name='pgdts-copy',
                         options=WRITER_OPTIONS) as conn:
                for table in split_tables.values():
                    conn.execute(truncate_statement(table))
                conn.commit()
        threads = [threading.Thread(target=self._job, args=(work, started), name='copy-%d' % n, daemon=True)
                   for n in range(min(self.jobs, max(1, len(items))))]
        self._expected_imports = len(threads)
        if not items:
            self.imported.set()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.imported.set()
        if self._errors:
            table, message = self._errors[0]
            raise CopyError(table, message)

    def stopping(self):
        return self.stop_event.is_set() or self._abort.is_set()

    def _mark_imported(self):
        with self._lock:
            self._imported_count += 1
            if self._imported_count >= self._expected_imports:
                self.imported.set()

    def _job(self, work, started):
        current = None
        try:
            with connect(self.source, self.dbname, autocommit=False, application_name='pgdts-copy') as src, \
                    connect(self.destination, self.dbname, autocommit=False, application_name='pgdts-copy',
                            options=WRITER_OPTIONS) as dst:
                src.execute('SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY')
                if self.snapshot:
                    src.execute(sql.SQL('SET TRANSACTION SNAPSHOT {}').format(sql.Literal(self.snapshot)))
                src.execute("SET LOCAL statement_timeout = 0")
                self._mark_imported()
                while not self.stopping():
                    try:
                        current = work.get_nowait()
                    except queue.Empty:
                        break
                    with self._lock:
                        first = current.table.qualified not in started
                        started.add(current.table.qualified)
                    if first:
                        self.on_table_start(current.table)
                    rows, nbytes = self._copy_item(src, dst, current)
                    self._part_done(current.table, rows, nbytes)
                    current = None
                src.rollback()
        except Exception as exc:  # pylint: disable=broad-except
            with self._lock:
                self._errors.append((current.table.qualified if current else self.dbname, str(exc).strip()))
            # stop the other jobs, not the caller: its stop_event means "stop requested" (a cancel), not "failed"
            self._abort.set()
        finally:
            self._mark_imported()

    def _copy_item(self, src, dst, item):
        dst.execute("SET LOCAL synchronous_commit = off")
        freeze = item.whole
        if item.whole:
            dst.execute(truncate_statement(item.table))
        progress = _Progress(self, item.table)
        with dst.cursor() as dcur:
            with dcur.copy(_insert_statement(item, freeze)) as writer:
                if self.psql and item.est_bytes >= STREAM_READER_BYTES:
                    self._stream_with_psql(src, item, writer, progress)
                else:
                    with src.cursor() as scur, scur.copy(_select_statement(item)) as reader:
                        for data in reader:
                            writer.write(data)
                            progress.add(len(data))
            rows = dcur.rowcount
        dst.commit()
        progress.flush()
        return max(rows, 0), progress.total

    def _stream_with_psql(self, src, item, writer, progress):
        """Read the item with a psql child inside the same snapshot: large chunks instead of one call per row."""
        argv = [self.psql, '--no-psqlrc', '--quiet', '--set', 'ON_ERROR_STOP=1',
                '--command', 'BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY']
        if self.snapshot:
            argv += ['--command', sql.SQL('SET TRANSACTION SNAPSHOT {}').format(sql.Literal(self.snapshot)).as_string(src)]
        argv += ['--command', 'SET statement_timeout = 0',
                 '--command', _select_statement(item).as_string(src), '--command', 'COMMIT']
        env = dict(os.environ)
        env.update(self.source.libpq_env(self.dbname, 'pgdts-copy'))
        with open(os.devnull, 'rb') as devnull:
            proc = subprocess.Popen(argv, stdin=devnull, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            fd = proc.stdout.fileno()
            while True:
                data = os.read(fd, READ_CHUNK)
                if not data:
                    break
                writer.write(data)
                progress.add(len(data))
        except BaseException:
            proc.kill()
            raise
        finally:
            proc.stdout.close()
            err = proc.stderr.read().decode('utf-8', 'replace').strip()
            proc.stderr.close()
            proc.wait()
        if proc.returncode != 0:
            raise CopyError(item.table.qualified, 'reading from the source failed: %s' % (err or proc.returncode))


class _Progress:
    """Counts bytes of one item and reports them at most once a second; stops the item when asked."""

    def __init__(self, copier, table):
        self.copier = copier
        self.table = table
        self.total = 0
        self.pending = 0
        self.last = time.monotonic()

    def add(self, nbytes):
        self.pending += nbytes
        if self.pending > READ_CHUNK:
            now = time.monotonic()
            if now - self.last >= PROGRESS_INTERVAL:
                self.flush()
                self.last = now
            if self.copier.stopping():
                raise CopyError(self.table.qualified, 'stopped')

    def flush(self):
        if self.pending:
            self.copier.on_progress(self.table, self.pending)
            self.total += self.pending
            self.pending = 0
