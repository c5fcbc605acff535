# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The full copy: tables streamed with COPY from one exported snapshot, largest first, by parallel jobs.

Tables larger than DEFAULT_SPLIT_BYTES are split into ranges of heap blocks (TID range scans) that are copied in
parallel; smaller ones are one COPY (FREEZE) stream each. Data flows source -> psql child -> this process ->
destination; nothing is written to disk on the way. IndexBuilder builds each table's own indexes and constraints
and analyzes it as soon as its data is complete, while the other tables are still being copied.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import subprocess
import threading
import time

from ansible_collections.pgdts.migration.plugins.module_utils.connection import WRITER_OPTIONS, connect, error_text, sql

FIRST_USER_OID = 16384
# Tables larger than this are split into block ranges of about this size, copied in parallel. Below it a table is one
# COPY stream, which can TRUNCATE and COPY FREEZE in one transaction (no hint-bit writes or freezing vacuum of the
# table later), and uses less CPU in all than parallel parts: measured on pgbench scale 50 (a 640 MB table) on
# 2 CPUs, one stream took the same time as 2, 4 or 10 parts and 12 % less CPU on the servers.
DEFAULT_SPLIT_BYTES = 1024 * 1024 * 1024
# Tables at least this large are recorded as being copied when they start (the status shows them); smaller ones are
# done in a moment and only recorded once copied.
STREAM_READER_BYTES = 8 * 1024 * 1024
READ_CHUNK = 1 << 20
# Reads from the psql child: below the allocator's mmap threshold (128 kB), so buffers are reused instead of every
# read mapping and faulting in fresh pages (that cost more CPU than the copying itself).
PIPE_CHUNK = 1 << 16
# With fresh=True (tables just created by the schema restore), tables below this size are copied without TRUNCATE
# and FREEZE.
FREEZE_MIN_BYTES = 8 * 1024 * 1024
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
                 on_table_done=None, stop_event=None, log=None, psql=None, fresh=False):
        self.psql = psql
        self.fresh = fresh      # every table was created empty by this run's schema restore
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
            with contextlib.ExitStack() as stack:
                dst = stack.enter_context(connect(self.destination, self.dbname, autocommit=False,
                                                  application_name='pgdts-copy', options=WRITER_OPTIONS))
                reader = src = None
                if self.psql:
                    try:
                        reader = stack.enter_context(_PsqlReader(self.psql, self.source.libpq_env(self.dbname, 'pgdts-copy'),
                                                                 self.snapshot, dst))
                    except SourceReadError as exc:
                        # e.g. a psql older than 13 (no \\warn): read through psycopg instead
                        self.log('psql reader not usable (%s); reading rows through psycopg' % exc)
                if reader is None:
                    src = stack.enter_context(connect(self.source, self.dbname, autocommit=False,
                                                      application_name='pgdts-copy'))
                    src.execute('SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY')
                    if self.snapshot:
                        src.execute(sql.SQL('SET TRANSACTION SNAPSHOT {}').format(sql.Literal(self.snapshot)))
                    src.execute("SET LOCAL statement_timeout = 0")
                    src.execute("SET LOCAL row_security = off")     # all rows or an error, never filtered
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
                    rows, nbytes = self._copy_item(src, reader, dst, current)
                    self._part_done(current.table, rows, nbytes)
                    current = None
                if src is not None:
                    src.rollback()
        except Exception as exc:  # pylint: disable=broad-except
            with self._lock:
                self._errors.append((current.table.qualified if current else self.dbname, str(exc).strip()))
            # stop the other jobs, not the caller: its stop_event means "stop requested" (a cancel), not "failed"
            self._abort.set()
        finally:
            self._mark_imported()

    def _copy_item(self, src, reader, dst, item):
        dst.execute("SET LOCAL synchronous_commit = off")
        # TRUNCATE empties what an interrupted earlier attempt may have committed, and lets COPY write frozen rows
        # (no hint-bit writes and no anti-wraparound vacuum of the whole table later). A table the schema restore has
        # just created is empty: small ones skip it (a TRUNCATE creates and unlinks files, slow next to a small COPY).
        freeze = item.whole and not (self.fresh and item.est_bytes < FREEZE_MIN_BYTES)
        if freeze:
            dst.execute(truncate_statement(item.table))
        progress = _Progress(self, item.table)
        with dst.cursor() as dcur:
            with dcur.copy(_insert_statement(item, freeze)) as writer:
                if reader is not None:
                    def sink(data):
                        writer.write(data)
                        progress.add(len(data))
                    reader.copy(_select_statement(item).as_string(dst), sink)
                else:
                    with src.cursor() as scur, scur.copy(_select_statement(item)) as copy_reader:
                        for data in copy_reader:
                            writer.write(data)
                            progress.add(len(data))
            rows = dcur.rowcount
        dst.commit()
        progress.flush()
        return max(rows, 0), progress.total


class SourceReadError(Exception):
    """The psql reader of a job failed."""


class _PsqlReader:
    """A job's source session: one psql child inside the exported snapshot, reading every item of the job.

    COPY ... TO STDOUT data comes on psql's stdout in large writes (no per-row work in Python). After each command
    psql writes a numbered marker line to stderr (\\warn); psql flushes the COPY data before it runs the next
    command, so once the marker is seen, what is left in the stdout pipe is the rest of that item: the end of an item
    is known without looking into the data.
    """

    def __init__(self, psql, env, snapshot, quoting_conn):
        merged = dict(os.environ)
        merged.update(env)
        self.proc = subprocess.Popen([psql, '--no-psqlrc', '--quiet', '--tuples-only', '--set', 'ON_ERROR_STOP=1'],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=merged)
        self._out = self.proc.stdout.fileno()
        self._err = self.proc.stderr.fileno()
        for fd in (self._out, self._err):
            os.set_blocking(fd, False)
        self._marker = 0
        self._stderr = b''
        setup = 'BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\n'
        if snapshot:
            setup += sql.SQL('SET TRANSACTION SNAPSHOT {};\n').format(sql.Literal(snapshot)).as_string(quoting_conn)
        # every row or an error: a login that row-level security would filter fails instead of copying fewer rows
        setup += 'SET statement_timeout = 0;\nSET row_security = off;\n'
        try:
            self._run(setup, None)
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b'\\q\n')
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except Exception:  # pylint: disable=broad-except
                self.proc.kill()
                self.proc.wait()
        for handle in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                handle.close()
            except Exception:  # pylint: disable=broad-except
                pass

    def copy(self, statement, sink):
        """Run one COPY ... TO STDOUT; sink(bytes) gets its data."""
        try:
            self._run(statement + ';\n', sink)
        except BaseException:
            self.proc.kill()    # its session is mid-command: useless now
            raise

    def _run(self, commands, sink):
        self._marker += 1
        marker = b'pgdts-reader-done-%d\n' % self._marker
        try:
            self.proc.stdin.write(commands.encode('utf-8') + b'\\warn pgdts-reader-done-%d\n' % self._marker)
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise SourceReadError('reading from the source failed: %s' % self._error_text()) from None
        done = False
        while True:
            ready = select.select([self._out, self._err], [], [], 1.0)[0]
            if self._err in ready:
                chunk = os.read(self._err, PIPE_CHUNK)
                if chunk:
                    self._stderr += chunk
                    if marker in self._stderr:
                        self._stderr = self._stderr.split(marker, 1)[1]
                        done = True
                elif not done:
                    raise SourceReadError('reading from the source failed: %s' % self._error_text())
            if self._out in ready or done:
                while True:
                    try:
                        data = os.read(self._out, PIPE_CHUNK)
                    except BlockingIOError:
                        break
                    if not data:
                        break
                    if sink is None:
                        raise SourceReadError('unexpected output from psql')
                    sink(data)
                    if not done:
                        break
            if done:
                return
            if not ready and self.proc.poll() is not None:
                raise SourceReadError('reading from the source failed: %s' % self._error_text())

    def _error_text(self):
        self.proc.wait()
        try:
            rest = self.proc.stderr.read() or b''
        except Exception:  # pylint: disable=broad-except
            rest = b''
        text = (self._stderr + rest).decode('utf-8', 'replace').strip()
        return text or 'psql exited with code %s' % self.proc.returncode


class IndexBuilder:
    """Builds each table's own post-data objects as soon as its data is complete, while other tables are still being
    copied, then ANALYZEs it.

    plan: {table oid: [TOC lines]} (indexes, key/unique/exclusion constraints, statistics objects of that table).
    build(lines, started): restores the lines (pg_restore; `started(proc)` receives the process), raises on failure.
    open_destination(): a destination connection for ANALYZE.
    Tables come from the copy jobs through table_done(); close() waits for the work left (or stops it). A failed
    build only leaves its objects to the post-data step at the end, which builds whatever is missing.
    """

    def __init__(self, plan, build, open_destination, stop_event=None, log=None):
        self.plan = plan
        self._build = build
        self._open = open_destination
        self.stop_event = stop_event or threading.Event()
        self._abort = threading.Event()
        self.log = log or (lambda msg: None)
        self._cond = threading.Condition()
        self._pending = []
        self._closing = False
        self._proc = None
        self._analyze = queue.Queue()
        self.analyzed = set()       # qualified names of the tables analyzed here
        self.built = 0
        self.batches = 0
        self._threads = [threading.Thread(target=self._builder, name='index-builder', daemon=True),
                         threading.Thread(target=self._analyzer, name='analyzer', daemon=True)]
        for thread in self._threads:
            thread.start()

    def stopping(self):
        return self.stop_event.is_set() or self._abort.is_set()

    def table_done(self, table):
        """A table's data is complete and committed (any thread)."""
        if table.relkind != 'r' or table.is_partition:
            return      # partitions and their indexes are left to the end (attached indexes)
        with self._cond:
            self._pending.append(table)
            self._cond.notify()

    def close(self, abort=False):
        if abort:
            self._abort.set()
            proc = self._proc
            if proc is not None and proc.poll() is None:
                proc.kill()
        with self._cond:
            self._closing = True
            self._cond.notify()
        for thread in self._threads:
            while thread.is_alive():
                thread.join(0.2)
                if self.stop_event.is_set():    # a stop or cancel does not wait for a long index build
                    proc = self._proc
                    if proc is not None and proc.poll() is None:
                        proc.kill()

    def _started(self, proc):
        self._proc = proc
        if self.stopping():
            proc.kill()

    def _builder(self):
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._closing and not self.stopping():
                        self._cond.wait(0.5)
                    if self.stopping() or not self._pending:
                        return
                    batch, self._pending = self._pending, []
                lines = [line for table in batch for line in self.plan.get(table.oid, ())]
                if lines:
                    try:
                        self.batches += 1
                        self._build(lines, self._started)
                        self.built += len(lines)
                    except Exception as exc:  # pylint: disable=broad-except
                        if not self.stopping():
                            self.log('indexes of %d table(s) left for the post-data step: %s' % (
                                len(batch), error_text(exc)))
                        continue
                    finally:
                        self._proc = None
                for table in batch:
                    self._analyze.put(table)
        finally:
            self._analyze.put(None)

    def _analyzer(self):
        conn = None
        try:
            while True:
                table = self._analyze.get()
                if table is None or self.stopping():
                    return
                if conn is None:
                    conn = self._open()
                conn.execute(sql.SQL('ANALYZE {}').format(sql.Identifier(table.schema, table.name)))
                self.analyzed.add(table.qualified)
        except Exception as exc:  # pylint: disable=broad-except
            if not self.stopping():
                self.log('ANALYZE left for the post-data step: %s' % (str(exc).strip().splitlines() or [exc])[0])
            while self._analyze.get() is not None:
                pass
        finally:
            if conn is not None:
                conn.close()


class CopiedBatch:
    """Collects copied tables and records them `max_items` at a time or at least every `max_seconds` (one state write
    for many small tables instead of one each). record([(table, rows, bytes)]) does the writing; flush() at the end.
    A table copied but not yet recorded when the worker dies is copied again (TRUNCATE first): nothing is lost."""

    def __init__(self, record, max_items=100, max_seconds=1.0):
        self._record = record
        self.max_items = max_items
        self.max_seconds = max_seconds
        self._lock = threading.Lock()
        self._items = []
        self._last = time.monotonic()

    def add(self, table, rows, nbytes):
        with self._lock:
            self._items.append((table, rows, nbytes))
            if len(self._items) >= self.max_items or time.monotonic() - self._last >= self.max_seconds:
                self._flush_locked()

    def flush(self):
        with self._lock:
            self._flush_locked()

    def _flush_locked(self):
        items, self._items = self._items, []
        self._last = time.monotonic()
        if items:
            try:
                self._record(items)
            except BaseException:
                self._items = items + self._items
                raise


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
