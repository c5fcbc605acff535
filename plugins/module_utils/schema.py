# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Schema migration: destination databases, pre-data and post-data objects (pg_dump / pg_restore), sequences."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import tempfile
import time

from ansible_collections.pgdts.migration.plugins.module_utils.connection import (
    WRITER_OPTIONS, connect, dbname_conninfo, query_all, query_one, query_value, sql,
)


class SchemaError(Exception):
    """A schema step failed; the message names the step and carries the client program's error."""


_VERSION_CACHE = {}


def client_major(path):
    """Major version of a client program (`pg_dump --version` -> 18), None when it does not run."""
    try:
        key = (os.path.realpath(path), os.stat(path).st_mtime)
    except OSError:
        return None
    if key not in _VERSION_CACHE:
        try:
            out = subprocess.run([path, '--version'], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False,
                                 timeout=30).stdout.decode('utf-8', 'replace')
        except (OSError, subprocess.SubprocessError):
            out = ''
        match = re.search(r'\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?', out)
        major = None
        if match:
            major = int(match.group(1))
            if major < 10:
                major = major * 10000 + int(match.group(2) or 0)    # 9.6 -> 90006, older than any 10+
        _VERSION_CACHE[key] = major
    return _VERSION_CACHE[key]


def client_candidates(name, bindir=None):
    """[(major, path)] of every `name` program found: `bindir`, /usr/lib/postgresql/*/bin, /usr/pgsql-*/bin, PATH."""
    paths = []
    if bindir:
        paths.append(os.path.join(bindir, name))
    paths += sorted(glob.glob('/usr/lib/postgresql/*/bin/%s' % name)) + sorted(glob.glob('/usr/pgsql-*/bin/%s' % name))
    for directory in os.environ.get('PATH', os.defpath).split(os.pathsep):
        if directory:
            paths.append(os.path.join(directory, name))
    found, seen = [], set()
    for path in paths:
        if not os.path.isfile(path) or not os.access(path, os.X_OK) or os.path.realpath(path) in seen:
            continue
        seen.add(os.path.realpath(path))
        major = client_major(path)
        if major is not None:
            found.append((major, path))
    return found


# pg_restore 17 and newer start every session with SET transaction_timeout, which servers before 17 reject
TRANSACTION_TIMEOUT_MAJOR = 17


def client_bounds(source_version, dest_version):
    """(minimum, maximum or None) major of the pg_dump/pg_restore/psql a task between these servers can use.

    pg_dump refuses a server newer than itself and pg_restore an archive of a newer pg_dump: at least the newer of
    the two servers. pg_restore of 17+ sends SET transaction_timeout, unknown before 17: at most 16 for such a
    destination."""
    low = max(source_version, dest_version) // 10000
    high = TRANSACTION_TIMEOUT_MAJOR - 1 if dest_version // 10000 < TRANSACTION_TIMEOUT_MAJOR else None
    return low, high


def _fits(major, minimum_major, maximum_major):
    return (minimum_major is None or major >= minimum_major) and (maximum_major is None or major <= maximum_major)


def _wanted(minimum_major, maximum_major):
    if maximum_major is None:
        return 'PostgreSQL %d or newer' % minimum_major
    if minimum_major == maximum_major:
        return 'PostgreSQL %d' % minimum_major
    return 'PostgreSQL %d to %d' % (minimum_major, maximum_major)


def client_program(name, bindir=None, minimum_major=None, maximum_major=None):
    """Path of a PostgreSQL client program of a major between `minimum_major` and `maximum_major` (client_bounds).

    `bindir` (the pg_bindir option) is used when its program fits; otherwise the newest that fits among Debian's
    /usr/lib/postgresql/*/bin, /usr/pgsql-*/bin and PATH. Raises SchemaError naming what was found when none fits."""
    if bindir and not os.path.isfile(os.path.join(bindir, name)):
        raise SchemaError('%s not found in %s (pg_bindir)' % (name, bindir))
    candidates = client_candidates(name, bindir)
    if bindir and candidates and candidates[0][1] == os.path.join(bindir, name):
        if _fits(candidates[0][0], minimum_major, maximum_major):
            return candidates[0][1]
    best = None
    for major, path in candidates:
        if _fits(major, minimum_major, maximum_major) and (best is None or major > best[0]):
            best = (major, path)
    if best is None and not candidates:
        raise SchemaError('%s is not installed on the worker host (install the PostgreSQL client package)' % name)
    if best is None:
        need = _wanted(minimum_major, maximum_major)
        raise SchemaError('%s of %s is needed, found only %s' % (
            name, need, ', '.join('%s (%s)' % (p, m) for m, p in candidates)))
    return best[1]


def client_bindir(bindir, source_version, dest_version):
    """The directory whose pg_dump and pg_restore (and psql, when there) a task between these servers runs: one
    directory, so that pg_restore reads what pg_dump wrote. Raises SchemaError."""
    low, high = client_bounds(source_version, dest_version)
    pg_dump = client_program('pg_dump', bindir, low, high)
    found = os.path.dirname(pg_dump)
    if not os.path.isfile(os.path.join(found, 'pg_restore')):
        raise SchemaError('pg_restore is missing next to %s' % pg_dump)
    return found


def _run(argv, env, what, stdin=None):
    merged = dict(os.environ)
    merged.update(env)
    proc = subprocess.run(argv, env=merged, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode('utf-8', 'replace').strip().splitlines()
        errors = [line for line in err if 'error' in line.lower()] or err
        raise SchemaError('%s failed: %s' % (what, ' | '.join(errors[:5]) or 'exit code %d' % proc.returncode))
    return proc


def database_properties(conn, dbname):
    """Encoding and locale of a source database, to create its destination twin alike."""
    row = query_one(conn, "SELECT pg_catalog.pg_encoding_to_char(encoding), datcollate, datctype "
                          "FROM pg_catalog.pg_database WHERE datname = %s", (dbname,))
    if not row:
        raise SchemaError('database "%s" does not exist on the source' % dbname)
    return {'encoding': row[0], 'lc_collate': row[1], 'lc_ctype': row[2]}


def database_exists(conn, dbname):
    return bool(query_value(conn, 'SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s', (dbname,)))


def ensure_database(dest_admin_conn, dbname, properties):
    """Create `dbname` on the destination like the source's; returns True when created."""
    if database_exists(dest_admin_conn, dbname):
        return False
    dest_admin_conn.execute(sql.SQL('CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}').format(
        sql.Identifier(dbname), sql.Literal(properties['encoding']), sql.Literal(properties['lc_collate']),
        sql.Literal(properties['lc_ctype'])))
    return True


def drop_database(dest_admin_conn, dbname):
    if dest_admin_conn.info.server_version >= 130000:
        dest_admin_conn.execute(sql.SQL('DROP DATABASE IF EXISTS {} WITH (FORCE)').format(sql.Identifier(dbname)))
        return
    # before 13 there is no FORCE: keep new sessions out, end the ones connected, then drop
    import psycopg
    if not database_exists(dest_admin_conn, dbname):
        return
    dest_admin_conn.execute(sql.SQL('ALTER DATABASE {} ALLOW_CONNECTIONS false').format(sql.Identifier(dbname)))
    dest_admin_conn.execute('SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity '
                            'WHERE datname = %s AND pid <> pg_catalog.pg_backend_pid()', (dbname,))
    for _attempt in range(50):
        try:
            dest_admin_conn.execute(sql.SQL('DROP DATABASE IF EXISTS {}').format(sql.Identifier(dbname)))
            return
        except psycopg.errors.ObjectInUse:
            time.sleep(0.1)
    raise SchemaError('database "%s" is still in use on the destination: it could not be dropped' % dbname)


def quote_pattern(name):
    """A name as a pg_dump pattern that matches exactly that name."""
    return '"%s"' % name.replace('"', '""')


def dump_arguments(all_tables, selected, whole_database):
    """pg_dump selection arguments: whole database, or the schemas of the selected tables minus unselected tables."""
    if whole_database:
        return []
    chosen = {t.qualified for t in selected}
    schemas = sorted({t.schema for t in selected})
    args = ['--extension=*']
    for schema in schemas:
        args.append('--schema=%s' % quote_pattern(schema))
    for table in all_tables:
        if table.schema in schemas and table.qualified not in chosen:
            args.append('--exclude-table=%s.%s' % (quote_pattern(table.schema), quote_pattern(table.name)))
    return args


def dump_schema(source, dbname, snapshot, selection_args, out_path, keep_owners=False, bindir=None, server_major=None):
    """Dump pre-data and post-data (custom format, one file) under the exported snapshot."""
    argv = [client_program('pg_dump', bindir, server_major), '--schema-only', '--format=custom', '--file', out_path,
            '--no-subscriptions', '--no-publications']
    if snapshot:
        argv += ['--snapshot', snapshot]
    if not keep_owners:
        argv += ['--no-owner', '--no-privileges']
    argv += selection_args
    _run(argv, source.libpq_env(dbname, 'pgdts-schema'), 'pg_dump of "%s"' % dbname)


_SCHEMA_ENTRY = re.compile(r'^\d+; \d+ \d+ SCHEMA - ')
_CREATE_SCHEMA = re.compile(r'CREATE SCHEMA ("(?:[^"]|"")+"|[^\s;]+);')


def _unquote(name):
    return name[1:-1].replace('""', '"') if name.startswith('"') else name


def schema_entries(dump_path, bindir=None):
    """[(TOC line, schema name)] of the CREATE SCHEMA entries of a custom-format dump.

    The TOC listing shows names unquoted (ambiguous with spaces), so the entries' statements are asked for, where the
    name is quoted exactly: all entries at once (they come out in listing order), else one entry at a time."""
    pg_restore = client_program('pg_restore', bindir)
    listing = _run([pg_restore, '--list', dump_path], {}, 'pg_restore --list').stdout.decode('utf-8', 'replace')
    lines = [line for line in listing.splitlines() if _SCHEMA_ENTRY.match(line)]
    if not lines:
        return []
    names = _CREATE_SCHEMA.findall(_entries_sql(pg_restore, dump_path, lines))
    if len(names) == len(lines):
        return [(line, _unquote(name)) for line, name in zip(lines, names)]
    entries = []
    for line in lines:
        found = _CREATE_SCHEMA.search(_entries_sql(pg_restore, dump_path, [line]))
        if found:
            entries.append((line, _unquote(found.group(1))))
    return entries


def _entries_sql(pg_restore, dump_path, lines):
    """The SQL text pg_restore emits for these TOC lines."""
    fd, list_path = tempfile.mkstemp(suffix='.list', dir=os.path.dirname(os.path.abspath(dump_path)))
    try:
        with os.fdopen(fd, 'w') as handle:
            handle.write(''.join(line + '\n' for line in lines))
        return _run([pg_restore, '--use-list', list_path, '--file', '-', dump_path], {},
                    'pg_restore of schema entries').stdout.decode('utf-8', 'replace')
    finally:
        os.unlink(list_path)


def _skip_existing_schemas(destination, dbname, dump_path, bindir=None):
    """A TOC list without the CREATE SCHEMA entries of schemas the destination database already has (`public` of a
    new database, when the dump selects tables by schema), or None when nothing needs skipping."""
    entries = schema_entries(dump_path, bindir)
    if not entries:
        return None
    with connect(destination, dbname, application_name='pgdts-schema') as conn:
        existing = {r[0] for r in query_all(conn, 'SELECT nspname FROM pg_catalog.pg_namespace')}
    skip = {line for line, name in entries if name in existing}
    if not skip:
        return None
    listing = _run([client_program('pg_restore', bindir), '--list', dump_path], {},
                   'pg_restore --list').stdout.decode('utf-8', 'replace')
    fd, list_path = tempfile.mkstemp(suffix='.list', dir=os.path.dirname(os.path.abspath(dump_path)))
    with os.fdopen(fd, 'w') as handle:
        for line in listing.splitlines():
            handle.write((';' + line if line in skip else line) + '\n')
    return list_path


def restore_section(destination, dbname, dump_path, section, jobs=1, clean=False, keep_owners=False, bindir=None,
                    skip=None, maintenance_work_mem=None):
    """pg_restore one section of the dump into the destination database.

    pre-data leaves out CREATE SCHEMA of schemas that already exist there (pg_dump --schema=public emits one).
    `skip`: TOC lines (of toc_entries) to leave out, e.g. post-data objects already built.
    `maintenance_work_mem`: for the restore's sessions (index builds), e.g. '512MB'; None = the server's."""
    if section == 'pre-data':
        list_path = _skip_existing_schemas(destination, dbname, dump_path, bindir)
    elif skip:
        list_path = _write_list(dump_path, [(';' + e.line if e.line in skip else e.line)
                                            for e in toc_entries(dump_path, bindir)])
    else:
        list_path = None
    try:
        _restore_section(destination, dbname, dump_path, section, jobs, clean, keep_owners, bindir, list_path,
                         maintenance_work_mem)
    finally:
        if list_path:
            os.unlink(list_path)


def _restore_section(destination, dbname, dump_path, section, jobs, clean, keep_owners, bindir, list_path,
                     maintenance_work_mem=None):
    argv = [client_program('pg_restore', bindir), '--section', section, '--dbname', dbname_conninfo(dbname),
            '--exit-on-error']
    if list_path:
        argv += ['--use-list', list_path]
    if jobs and jobs > 1 and section == 'post-data':
        argv += ['--jobs', str(jobs)]
    if clean:
        argv += ['--clean', '--if-exists']
    if not keep_owners:
        argv += ['--no-owner', '--no-privileges']
    argv.append(dump_path)
    _run(argv, _restore_env(destination, dbname, maintenance_work_mem), 'restoring %s of "%s"' % (section, dbname))


# Sessions of pg_restore: commits need not wait for their WAL flush (thousands of small DDL transactions). Nothing is
# lost by a crash: the step is recorded done in the state database on the same server afterwards, by a synchronous
# commit, which flushes the WAL of everything before it.
RESTORE_OPTIONS = WRITER_OPTIONS + ' -c synchronous_commit=off'


_MEMORY_SETTING = re.compile(r'^([1-9][0-9]*)(kB|MB|GB|TB)?$')


def size_kilobytes(value):
    """A size as PostgreSQL memory settings write it ('512MB', '2GB', '65536' = kB) -> (kilobytes, normalized text);
    None stays (None, None). Raises ValueError with the reason."""
    if value is None:
        return None, None
    text = str(value).strip().replace(' ', '')
    found = _MEMORY_SETTING.match(text)
    if not found:
        raise ValueError('"%s" is not a memory size: a whole number with kB, MB, GB or TB (e.g. 512MB)' % value)
    number, unit = int(found.group(1)), found.group(2) or 'kB'
    return number * {'kB': 1, 'MB': 1024, 'GB': 1024 ** 2, 'TB': 1024 ** 3}[unit], '%d%s' % (number, unit)


def memory_setting(value):
    """A PostgreSQL memory setting as the task accepts it ('512MB', '2GB', '65536' = kB), normalized; None stays
    None. Raises ValueError with the reason."""
    kilobytes, text = size_kilobytes(value)
    if kilobytes is None:
        return None
    # the server's limits for maintenance_work_mem: 1 MB .. 2 TB - 1 kB (64-bit)
    if kilobytes < 1024 or kilobytes > 2147483647:
        raise ValueError('"%s" is out of range for maintenance_work_mem (1MB to 2TB)' % value)
    return text


def _restore_env(destination, dbname, maintenance_work_mem=None):
    env = destination.libpq_env(dbname, 'pgdts-schema')
    env.pop('PGDATABASE', None)
    env['PGOPTIONS'] = RESTORE_OPTIONS
    if maintenance_work_mem:
        # normalized by memory_setting(): no spaces, nothing PGOPTIONS would split or escape
        env['PGOPTIONS'] += ' -c maintenance_work_mem=%s' % memory_setting(maintenance_work_mem)
    return env


def _write_list(dump_path, lines):
    fd, list_path = tempfile.mkstemp(suffix='.list', dir=os.path.dirname(os.path.abspath(dump_path)))
    with os.fdopen(fd, 'w') as handle:
        handle.write(''.join(line + '\n' for line in lines))
    return list_path


# -- post-data objects of one table, built as soon as the table's data is complete -----------------------------

class TocEntry:
    __slots__ = ('dump_id', 'classoid', 'objoid', 'line')

    def __init__(self, dump_id, classoid, objoid, line):
        self.dump_id = dump_id
        self.classoid = classoid
        self.objoid = objoid
        self.line = line


_TOC_LINE = re.compile(r'^(\d+); (\d+) (\d+) ')


def toc_entries(dump_path, bindir=None, section=None):
    """Every entry of the dump's table of contents (pg_restore --list), in order; only those of `section` if given."""
    argv = [client_program('pg_restore', bindir), '--list', dump_path]
    if section:
        argv[2:2] = ['--section', section]
    listing = _run(argv, {}, 'pg_restore --list').stdout.decode('utf-8', 'replace')
    entries = []
    for line in listing.splitlines():
        found = _TOC_LINE.match(line)
        if found:
            entries.append(TocEntry(int(found.group(1)), int(found.group(2)), int(found.group(3)), line))
    return entries


# Indexes, primary key / unique / exclusion constraints and extended statistics of plain tables (not partitions):
# each belongs to its table alone. (catalog, object oid) -> table oid, schema, object name (the index's name for a
# constraint), table name. Triggers, rules, policies and foreign keys are left for the end: a trigger would fire on a
# table copied again after a restart, a foreign key needs two tables.
_TABLE_OBJECTS = """
SELECT 'pg_catalog.pg_class'::regclass::oid, i.indexrelid, i.indrelid, n.nspname, ic.relname, tc.relname
  FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
  JOIN pg_catalog.pg_class tc ON tc.oid = i.indrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = ic.relnamespace
 WHERE tc.oid >= 16384 AND tc.relkind = 'r' AND NOT tc.relispartition
UNION ALL
SELECT 'pg_catalog.pg_constraint'::regclass::oid, k.oid, k.conrelid, n.nspname, ic.relname, tc.relname
  FROM pg_catalog.pg_constraint k
  JOIN pg_catalog.pg_class ic ON ic.oid = k.conindid
  JOIN pg_catalog.pg_class tc ON tc.oid = k.conrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = ic.relnamespace
 WHERE k.contype IN ('p', 'u', 'x') AND tc.oid >= 16384 AND tc.relkind = 'r' AND NOT tc.relispartition
UNION ALL
SELECT 'pg_catalog.pg_statistic_ext'::regclass::oid, s.oid, s.stxrelid, n.nspname, s.stxname, tc.relname
  FROM pg_catalog.pg_statistic_ext s
  JOIN pg_catalog.pg_class tc ON tc.oid = s.stxrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = s.stxnamespace
 WHERE tc.oid >= 16384 AND tc.relkind = 'r' AND NOT tc.relispartition
"""

_EXISTING_OBJECTS = """
SELECT n.nspname, ic.relname, tc.relname
  FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
  JOIN pg_catalog.pg_class tc ON tc.oid = i.indrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = ic.relnamespace
 WHERE tc.oid >= 16384
UNION ALL
SELECT n.nspname, s.stxname, tc.relname
  FROM pg_catalog.pg_statistic_ext s
  JOIN pg_catalog.pg_class tc ON tc.oid = s.stxrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = s.stxnamespace
"""


def table_post_data(src_conn, dst_conn, entries):
    """({table oid: [TOC lines]}, {TOC lines already on the destination}) for the post-data entries that belong
    to one plain table (indexes, primary key / unique / exclusion constraints, statistics objects).

    Entries are matched to catalog objects of the source by their (catalog oid, object oid) from the TOC; an object
    counts as already built when the destination has it by schema, name and table."""
    objects = {(r[0], r[1]): r[2:] for r in query_all(src_conn, _TABLE_OBJECTS)}
    existing = {tuple(r) for r in query_all(dst_conn, _EXISTING_OBJECTS)}
    by_table, built = {}, set()
    for entry in entries:
        found = objects.get((entry.classoid, entry.objoid))
        if found is None:
            continue
        table_oid, nspname, name, table_name = found
        if (nspname, name, table_name) in existing:
            built.add(entry.line)
        else:
            by_table.setdefault(table_oid, []).append(entry.line)
    return by_table, built


def restore_entries(destination, dbname, dump_path, lines, jobs=1, keep_owners=False, bindir=None, started=None,
                    maintenance_work_mem=None):
    """pg_restore just these TOC lines of the dump (in dump order). `started(proc)` gets the running process (so
    that a caller may stop it). Raises SchemaError."""
    list_path = _write_list(dump_path, lines)
    try:
        argv = [client_program('pg_restore', bindir), '--dbname', dbname_conninfo(dbname), '--exit-on-error',
                '--use-list', list_path]
        if jobs and jobs > 1 and len(lines) > 1:
            argv += ['--jobs', str(min(jobs, len(lines)))]
        if not keep_owners:
            argv += ['--no-owner', '--no-privileges']
        argv.append(dump_path)
        merged = dict(os.environ)
        merged.update(_restore_env(destination, dbname, maintenance_work_mem))
        proc = subprocess.Popen(argv, env=merged, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        if started:
            started(proc)
        err = proc.communicate()[1].decode('utf-8', 'replace').strip().splitlines()
        if proc.returncode != 0:
            errors = [line for line in err if 'error' in line.lower()] or err
            raise SchemaError('restoring indexes failed: %s' % (' | '.join(errors[:5]) or 'exit code %d' % proc.returncode))
    finally:
        os.unlink(list_path)


SEQUENCE_BATCH = 200


def read_sequences(conn, sequences):
    """(schema, name) -> (last_value, is_called) read in the connection's current snapshot (one query per
    SEQUENCE_BATCH sequences)."""
    values = {}
    sequences = list(sequences)
    for start in range(0, len(sequences), SEQUENCE_BATCH):
        batch = sequences[start:start + SEQUENCE_BATCH]
        query = sql.SQL(' UNION ALL ').join(
            sql.SQL('SELECT {}::int, last_value, is_called FROM {}').format(sql.Literal(n), sql.Identifier(schema, name))
            for n, (schema, name) in enumerate(batch))
        for n, last_value, is_called in query_all(conn, query):
            values[batch[n]] = (last_value, is_called)
    return values


def write_sequences(conn, values):
    """Set destination sequences (pipelined); returns the list of what was set."""
    done = []
    with conn.pipeline():
        for (schema, name), (last_value, is_called) in sorted(values.items()):
            conn.execute('SELECT pg_catalog.setval(%s::regclass, %s, %s)',
                         (sql.Identifier(schema, name).as_string(conn), last_value, is_called))
            done.append({'schema': schema, 'sequence': name, 'last_value': last_value, 'is_called': is_called})
    return done


def sync_sequences(source, destination, dbname, tables=None, keep_owners=False, bindir=None):
    """Set every sequence the task carries (catalog.sequences_in_scope: `tables` None = the whole database, else the
    task's [(schema, table)]) to the source's value. A sequence in scope that the destination lacks (created on the
    source during the sync) is created there first from the source's definition, never skipped."""
    from ansible_collections.pgdts.migration.plugins.module_utils.catalog import sequences_in_scope
    with connect(source, dbname, application_name='pgdts-sequences') as src:
        scope = sequences_in_scope(src, tables)
    seqs = [(s, n) for s, n, _oid in scope]
    with connect(destination, dbname, application_name='pgdts-sequences', options=WRITER_OPTIONS) as dst:
        existing = {(r[0], r[1]) for r in query_all(dst, "SELECT schemaname, sequencename FROM pg_catalog.pg_sequences")}
    missing = [s for s in seqs if s not in existing]
    if missing:
        create_sequences(source, destination, dbname, missing, keep_owners=keep_owners, bindir=bindir)
    with connect(source, dbname, application_name='pgdts-sequences') as src:
        values = read_sequences(src, seqs)
    with connect(destination, dbname, application_name='pgdts-sequences', options=WRITER_OPTIONS) as dst:
        return write_sequences(dst, values)


def missing_sequences(source, destination, dbname, tables, dump_path, bindir=None):
    """[(schema, name)] of the sequences in the task's scope that neither the dump holds nor the destination has: a
    table selection dumps the schemas of its tables, so a sequence of another schema that a selected table's default
    names (DEFAULT nextval('ids.order_seq')) is not in it, and the restore of that default would fail."""
    from ansible_collections.pgdts.migration.plugins.module_utils.catalog import sequences_in_scope
    dumped = {e.objoid for e in toc_entries(dump_path, bindir) if ' SEQUENCE ' in e.line}
    with connect(source, dbname, application_name='pgdts-schema') as src:
        scope = [(s, n) for s, n, oid in sequences_in_scope(src, tables) if oid not in dumped]
    if not scope:
        return []
    with connect(destination, dbname, application_name='pgdts-schema') as dst:
        existing = {(r[0], r[1]) for r in query_all(dst, "SELECT schemaname, sequencename FROM pg_catalog.pg_sequences")}
    return [s for s in scope if s not in existing]


def create_sequences(source, destination, dbname, sequences, snapshot=None, keep_owners=False, bindir=None,
                     server_major=None):
    """Create these source sequences [(schema, name)] on the destination as pg_dump defines them (type, start,
    increment, bounds, cache, cycle; owner and privileges when keep_owners), with their schema when the destination
    lacks it. One pg_dump --table per call (under `snapshot` when given); the values are set by sync_sequences."""
    if not sequences:
        return
    with connect(source, dbname, application_name='pgdts-schema') as src, \
            connect(destination, dbname, application_name='pgdts-schema', options=WRITER_OPTIONS) as dst:
        have = {r[0] for r in query_all(dst, 'SELECT nspname FROM pg_catalog.pg_namespace')}
        for schema in sorted({s for s, _n in sequences} - have):
            dst.execute(sql.SQL('CREATE SCHEMA IF NOT EXISTS {}').format(sql.Identifier(schema)))
            owner = query_value(src, 'SELECT pg_catalog.pg_get_userbyid(nspowner) FROM pg_catalog.pg_namespace '
                                     'WHERE nspname = %s', (schema,))
            if keep_owners and owner and query_value(dst, 'SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s',
                                                     (owner,)):
                dst.execute(sql.SQL('ALTER SCHEMA {} OWNER TO {}').format(sql.Identifier(schema),
                                                                          sql.Identifier(owner)))
    fd, dump_path = tempfile.mkstemp(prefix='sequences-', suffix='.dump')
    os.close(fd)
    try:
        selection = ['--table=%s.%s' % (quote_pattern(s), quote_pattern(n)) for s, n in sequences]
        dump_schema(source, dbname, snapshot, selection, dump_path, keep_owners=keep_owners, bindir=bindir,
                    server_major=server_major)
        restore_section(destination, dbname, dump_path, 'pre-data', keep_owners=keep_owners, bindir=bindir)
    finally:
        os.unlink(dump_path)


def refresh_materialized_views(source, destination, dbname, schemas=None):
    """REFRESH every materialized view of the scope (`schemas` None = the whole database) on the destination, in
    dependency order (catalog.materialized_views), from the destination's data. A matview that is not populated on
    the source stays as it is. Returns [{'schema', 'name'}] of those refreshed."""
    from ansible_collections.pgdts.migration.plugins.module_utils.catalog import materialized_views
    with connect(source, dbname, application_name='pgdts-matviews') as src:
        matviews = materialized_views(src, schemas)
    done = []
    with connect(destination, dbname, application_name='pgdts-matviews', options=WRITER_OPTIONS) as dst:
        dst.execute('SET statement_timeout = 0')
        for schema, name, populated in matviews:
            if not populated:
                continue
            dst.execute(sql.SQL('REFRESH MATERIALIZED VIEW {}').format(sql.Identifier(schema, name)))
            done.append({'schema': schema, 'name': name})
    return done


def analyze_database(destination, dbname):
    with connect(destination, dbname, application_name='pgdts-analyze', options=WRITER_OPTIONS) as conn:
        conn.execute('ANALYZE')


def temp_dump_path(directory, dbname_tag):
    fd, path = tempfile.mkstemp(prefix='schema-%s-' % dbname_tag, suffix='.dump', dir=directory)
    os.close(fd)
    return path


# -- objects the task creates in a destination database that existed before -----------------------------------
# A task that copies into an existing database records which objects were there before its schema restore; what is
# there afterwards and was not before is the task's, and `drop_destination` removes exactly that (tables, sequences,
# views, types, functions, schemas, extensions, ...), never an object of the database's owner.

# User objects that can be dropped on their own, as (classid, objid). Left out: objects that go with another one
# (indexes, TOAST tables, row types of tables, array and multirange types, constraints, defaults, triggers), objects
# that belong to an extension (they go with it), and the system's own (oid < 16384).
# catalogs whose every row is one droppable object (the query then keeps the user's own, as for the others)
_WHOLE_CATALOGS = ('pg_proc', 'pg_extension', 'pg_collation', 'pg_conversion', 'pg_operator', 'pg_opfamily', 'pg_cast',
                   'pg_ts_config', 'pg_ts_dict', 'pg_foreign_data_wrapper', 'pg_foreign_server')

_OWN_OBJECTS = """
WITH objects(classid, objid) AS (
    SELECT 'pg_catalog.pg_namespace'::regclass, oid FROM pg_catalog.pg_namespace
     WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
    UNION ALL
    SELECT 'pg_catalog.pg_class'::regclass, oid FROM pg_catalog.pg_class WHERE relkind IN ('r', 'p', 'S', 'v', 'm', 'f')
    UNION ALL
    SELECT 'pg_catalog.pg_type'::regclass, t.oid FROM pg_catalog.pg_type t
     WHERE t.typtype IN ('b', 'd', 'e', 'r')
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type e WHERE e.typarray = t.oid)
        OR t.typtype = 'c' AND (SELECT relkind FROM pg_catalog.pg_class WHERE oid = t.typrelid) = 'c'
    UNION ALL
{whole_catalogs}
)
SELECT a.type, a.object_names, a.object_args
  FROM objects o, LATERAL pg_catalog.pg_identify_object_as_address(o.classid, o.objid, 0) a
 WHERE o.objid >= 16384
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                    WHERE d.classid = o.classid AND d.objid = o.objid AND d.objsubid = 0
                      AND d.deptype IN ('e', 'i', 'a'))
"""


def _own_objects_query():
    selects = [sql.SQL('    SELECT {}::regclass, oid FROM {}').format(
        sql.Literal('pg_catalog.' + catalog), sql.Identifier('pg_catalog', catalog)) for catalog in _WHOLE_CATALOGS]
    return sql.SQL(_OWN_OBJECTS).format(whole_catalogs=sql.SQL('\n    UNION ALL\n').join(selects))


# pg_identify_object's type -> the DROP statement's object kind
_DROP_KINDS = {
    'schema': 'SCHEMA', 'table': 'TABLE', 'sequence': 'SEQUENCE', 'view': 'VIEW',
    'materialized view': 'MATERIALIZED VIEW', 'foreign table': 'FOREIGN TABLE', 'type': 'TYPE',
    'composite type': 'TYPE', 'domain': 'DOMAIN', 'function': 'FUNCTION', 'procedure': 'PROCEDURE',
    'aggregate': 'AGGREGATE', 'extension': 'EXTENSION', 'collation': 'COLLATION', 'conversion': 'CONVERSION',
    'operator': 'OPERATOR', 'operator family': 'OPERATOR FAMILY', 'cast': 'CAST',
    'text search configuration': 'TEXT SEARCH CONFIGURATION', 'text search dictionary': 'TEXT SEARCH DICTIONARY',
    'foreign-data wrapper': 'FOREIGN DATA WRAPPER', 'server': 'SERVER',
}
# dropped in this order (a later kind may be used by an earlier one; CASCADE takes care of the rest)
_DROP_ORDER = ('view', 'materialized view', 'foreign table', 'table', 'sequence', 'function', 'procedure', 'aggregate',
               'cast', 'operator', 'operator family', 'conversion', 'text search configuration',
               'text search dictionary', 'domain', 'composite type', 'type', 'collation', 'server',
               'foreign-data wrapper', 'extension', 'schema')


def own_objects(conn):
    """The database's droppable user objects as sorted [type, [names], [args]] lists (JSON-ready addresses of
    pg_identify_object_as_address)."""
    return sorted([row[0], list(row[1]), list(row[2])] for row in query_all(conn, _own_objects_query()))


def created_objects(conn, existing):
    """The addresses of the objects in the database now that are not in `existing` (an own_objects() result)."""
    before = {json.dumps(address) for address in existing}
    return [address for address in own_objects(conn) if json.dumps(address) not in before]


def drop_objects(conn, addresses, log=None):
    """Drop the objects at these addresses that still exist (CASCADE), in an order that drops users before what they
    use. Returns [(kind, identity)] of what was dropped. One transaction: all or nothing."""
    import psycopg
    found = []
    for kind, names, args in addresses:
        if kind not in _DROP_KINDS:
            continue
        try:
            with conn.transaction():
                row = query_all(conn, 'SELECT i.type, i.identity FROM pg_catalog.pg_get_object_address(%s, %s, %s) a, '
                                      'LATERAL pg_catalog.pg_identify_object(a.classid, a.objid, a.objsubid) i',
                                (kind, names, args))
        except psycopg.errors.UndefinedObject:
            continue        # gone already (dropped with another object, or by the user)
        except psycopg.Error as exc:
            if exc.sqlstate and exc.sqlstate.startswith('42'):
                continue    # its schema or a type of its arguments is gone: so is the object
            raise
        if row and row[0][0] in _DROP_KINDS:
            found.append((row[0][0], row[0][1]))
    found.sort(key=lambda item: _DROP_ORDER.index(item[0]) if item[0] in _DROP_ORDER else len(_DROP_ORDER))
    dropped = []
    with conn.transaction():
        for kind, identity in found:
            # `identity` is the server's own quoted, schema-qualified identity of an existing object
            # (pg_identify_object), not text from the user; the kind comes from the fixed map above.
            conn.execute(sql.SQL('DROP {} IF EXISTS {} CASCADE').format(sql.SQL(_DROP_KINDS[kind]), sql.SQL(identity)))
            dropped.append((kind, identity))
    if log:
        for kind, identity in dropped:
            log('dropped %s %s' % (kind, identity))
    return dropped
