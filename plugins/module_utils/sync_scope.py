# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a task's publication and sync cover on the source, and what appears in its scope while it runs.

* Tables without a usable replica identity (no primary key with REPLICA IDENTITY DEFAULT, NOTHING, or an index
  identity whose index is gone): a publication that publishes their updates makes every UPDATE and DELETE of the
  source's application on them fail. The task's ``replica_identity`` option decides, before any publication is
  created: ``fail`` (the default) refuses them, ``full`` sets REPLICA IDENTITY FULL on them, ``exclude`` leaves them
  out of the task (not copied, synced or compared).
* UNLOGGED tables write no WAL, so no decoding plugin can see their changes and a publication refuses them: they are
  copied by the full copy, left out of the publication and the sync, and copied again under the write fence at
  finish (``recopy_unlogged``).
* Tables that appear in the scope during the sync (DDL is not replicated): a partition created or attached under a
  partitioned table of the task is synced into the destination's partition of the same name (which must exist there,
  attached to the same parent); any other new table in scope stops the task with an error that names it, and
  pg_dts_finish checks again under the fence. Tables out of scope (not matching the task's patterns, or excluded)
  are ignored.
"""

from __future__ import annotations

from ansible_collections.pgdts.migration.plugins.module_utils import catalog
from ansible_collections.pgdts.migration.plugins.module_utils.connection import WRITER_OPTIONS, connect, query_all, sql

REPLICA_IDENTITY_CHOICES = ('fail', 'full', 'exclude')
IDENTITY_NAMES = {'d': 'default', 'n': 'nothing', 'i': 'index', 'f': 'full'}


class ScopeError(Exception):
    """The task's scope on the source holds something the task cannot carry; the message names it and says what to
    do. `table`: the first table named."""

    def __init__(self, message, table=None):
        super().__init__(message)
        self.message = message
        self.table = table


def _qualified(table):
    return sql.Identifier(table.schema, table.name)


def display(table):
    """schema.table, each part quoted only when it needs it (as in the verify items)."""
    def part(name):
        if name and name.replace('_', 'a').isalnum() and name == name.lower() and not name[0].isdigit() \
                and name.isascii():
            return name
        return '"%s"' % name.replace('"', '""')
    return '%s.%s' % (part(table.schema), part(table.name))


# -- replica identity ------------------------------------------------------------------------------------------------

def lacks_identity(table):
    """True when publishing the updates of this (logged, plain) table would make the source's UPDATE and DELETE on it
    fail: no REPLICA IDENTITY FULL, no primary key under DEFAULT, no identity index under USING INDEX, or NOTHING."""
    if table.relkind != 'r' or table.relpersistence == 'u':
        return False
    ident = table.replica_identity
    if ident == 'f':
        return False
    if ident == 'd':
        return table.key_kind != 'primary'
    if ident == 'i':
        return not table.key_columns
    return True


def apply_identity_option(conn, tables, mode):
    """Before the publication is created: returns (tables to keep, tables set to REPLICA IDENTITY FULL, tables left
    out) for `mode` (REPLICA_IDENTITY_CHOICES). `fail` raises ScopeError naming the tables. `full` runs ALTER TABLE
    ... REPLICA IDENTITY FULL on the source (the login must own them)."""
    mode = mode or 'fail'
    lacking = [t for t in tables if lacks_identity(t)]
    if not lacking:
        return list(tables), [], []
    names = ', '.join(display(t) for t in lacking)
    if mode == 'exclude':
        parents = {t.qualified for t in tables if t.relkind == 'p'}
        inner = [t for t in lacking if t.is_partition and t.parent in parents]
        if inner:
            raise ScopeError(
                'partition(s) without a usable replica identity under a selected partitioned table: %s. '
                'replica_identity: exclude cannot leave them out (the publication of their parent publishes them, and '
                'the source\'s UPDATE and DELETE on them would fail): add a primary key to the parent, or use '
                'replica_identity: full' % ', '.join(display(t) for t in inner), table=display(inner[0]))
        left = {id(t) for t in lacking}
        return [t for t in tables if id(t) not in left], [], lacking
    if mode == 'full':
        for table in lacking:
            conn.execute(sql.SQL('ALTER TABLE {} REPLICA IDENTITY FULL').format(_qualified(table)))
            table.replica_identity = 'f'
            table.key_kind = 'full'
            table.key_columns = []
        if not conn.autocommit:
            conn.commit()
        return list(tables), lacking, []
    raise ScopeError(
        'table(s) without a primary key or usable replica identity: %s. A publication of their updates would make '
        'every UPDATE and DELETE on them fail on the source, so the task does not publish them. Add a primary key, or '
        'run the task with replica_identity: full (sets REPLICA IDENTITY FULL on them) or replica_identity: exclude '
        '(leaves them out)' % names, table=display(lacking[0]))


def publication_tables(tables):
    """The tables the task's publication lists: every selected table but the unlogged ones (their changes are not in
    the WAL; finish copies them again under the fence), and never one without a usable replica identity (a task
    without incremental sync copies those, but its publication must not break the source's writes either)."""
    return [t for t in tables if t.relpersistence != 'u' and not lacks_identity(t)]


# -- tables appearing during the sync -------------------------------------------------------------------------------

_LIGHT_TABLES = """
SELECT c.oid, n.nspname, c.relname, c.relkind, c.relpersistence, c.relreplident, c.relispartition,
       (SELECT pn.nspname || '.' || pc.relname FROM pg_catalog.pg_inherits i
          JOIN pg_catalog.pg_class pc ON pc.oid = i.inhparent
          JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace
         WHERE i.inhrelid = c.oid AND c.relispartition LIMIT 1),
       (SELECT pn.nspname FROM pg_catalog.pg_inherits i
          JOIN pg_catalog.pg_class pc ON pc.oid = i.inhparent
          JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace
         WHERE i.inhrelid = c.oid AND c.relispartition LIMIT 1),
       (SELECT pc.relname FROM pg_catalog.pg_inherits i
          JOIN pg_catalog.pg_class pc ON pc.oid = i.inhparent
         WHERE i.inhrelid = c.oid AND c.relispartition LIMIT 1)
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
   AND n.nspname NOT LIKE 'pg\\_temp\\_%%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%%'
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                    WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
"""

_DEST_PARENT = """
SELECT pn.nspname, pc.relname FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_inherits i ON i.inhrelid = c.oid
  JOIN pg_catalog.pg_class pc ON pc.oid = i.inhparent
  JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace
 WHERE n.nspname = %s AND c.relname = %s AND c.relispartition
"""


def _light_tables(conn, dbname):
    """Every user table (plain, partitioned) of the connected database: catalog.Table objects without columns, with
    `parent_key` = (schema, table) of the partition's parent (None for a table that is not a partition)."""
    out = []
    for oid, schema, name, relkind, persistence, ident, is_partition, parent, pschema, pname in query_all(
            conn, _LIGHT_TABLES):
        table = catalog.Table(dbname, schema, name, oid, relkind, persistence, ident, 0, 0, parent=parent,
                              is_partition=is_partition)
        table.parent_key = (pschema, pname) if is_partition else None
        out.append(table)
    return out


class Scope:
    """The scope of one database of a task on the source: `include`/`exclude` are the task's table patterns (none:
    the whole database), `known` the (schema, table) pairs the task carries (its registered tables),
    `identity_mode` the replica_identity option (with `exclude`, a table without a usable replica identity is out of
    scope), `plugin` the task's decoding plugin."""

    def __init__(self, dbname, include, exclude, known, identity_mode='fail', plugin='pgoutput'):
        self.dbname = dbname
        self.plugin = plugin or 'pgoutput'
        self.include = list(include or [])
        self.exclude = list(exclude or [])
        self.known = set(tuple(k) for k in known)
        self.identity_mode = identity_mode or 'fail'

    def unknown(self, conn):
        """(tables, by_key): the tables in scope (with columns and keys) that the task does not know, and every
        table of the database by (schema, table) (light: no columns). Cheap when there is none: one catalog query."""
        tables = _light_tables(conn, self.dbname)
        by_key = {(t.schema, t.name): t for t in tables}
        in_scope = catalog.select_tables(tables, self.include, self.exclude)
        new = [t for t in in_scope if (t.schema, t.name) not in self.known]
        if not new:
            return [], by_key
        full = {(t.schema, t.name): t for t in catalog.load_tables(conn, self.dbname)}
        out = []
        for table in new:
            table = full.get((table.schema, table.name)) or table
            if self.identity_mode == 'exclude' and lacks_identity(table):
                continue        # out of the task by the replica_identity option, like at its start
            table.parent_key = by_key[(table.schema, table.name)].parent_key
            out.append(table)
        return out, by_key

    def known_ancestor(self, table, by_key):
        """The nearest ancestor of `table` (a partition) that the task knows, or None."""
        seen = set()
        key = getattr(table, 'parent_key', None)
        while key is not None and key not in seen:
            seen.add(key)
            if key in self.known:
                return key
            parent = by_key.get(key)
            key = getattr(parent, 'parent_key', None) if parent is not None else None
        return None

    def classify(self, conn, destination):
        """Read the source's catalog now: (partitions to adopt, problems). A partition (at any depth) of a table the
        task knows is adopted when the destination holds a table of the same name attached to the same parent; else
        it is a problem, as is any other table in scope that the task does not know. Problems are sentences."""
        unknown, by_key = self.unknown(conn)
        if not unknown:
            return [], []
        adopt, problems, missing_dest, new_tables, unpublished = [], [], [], [], []
        # pgoutput on a source before 13 publishes the leaf partitions the task started with (decoding.
        # create_publication): a partition created later is in no publication, its changes never reach the worker
        leaves_only = self.plugin == 'pgoutput' and conn.info.server_version < 130000
        dest_parents = {}
        if any(self.known_ancestor(t, by_key) for t in unknown):
            with connect(destination, self.dbname, application_name='pgdts-scope') as dst:
                for table in unknown:
                    rows = query_all(dst, _DEST_PARENT, (table.schema, table.name))
                    dest_parents[(table.schema, table.name)] = tuple(rows[0]) if rows else None
        for table in unknown:
            ancestor = self.known_ancestor(table, by_key)
            if ancestor is None:
                new_tables.append(table)
            elif leaves_only:
                unpublished.append(table)
            elif dest_parents.get((table.schema, table.name)) != table.parent_key:
                missing_dest.append(table)
            else:
                adopt.append(table)
        if new_tables:
            problems.append(
                '%d table(s) were created on the source in the scope of the task after its copy: %s. pgdts does not '
                'replicate DDL, so their rows would be lost: the task stops. Cancel the task and start it again to '
                'copy them (or, if they must not be migrated, drop them or leave them out with exclude_tables on a new '
                'task)' % (len(new_tables), ', '.join(display(t) for t in new_tables)))
        if unpublished:
            problems.append(
                'partition(s) were created or attached on the source under a partitioned table of the task during '
                'the sync: %s. A PostgreSQL %d source publishes the leaf partitions the task started with, so the '
                'changes of a new one are not decoded and its rows would be lost: the task stops. Cancel the task '
                'and start it again to copy it (a source of 13 or newer, or the wal2json plugin, syncs such '
                'partitions)' % (', '.join('%s (of %s)' % (display(t), '%s.%s' % t.parent_key) for t in unpublished),
                                 conn.info.server_version // 10000))
        if missing_dest:
            problems.append(
                'partition(s) were created or attached on the source under a partitioned table of the task during '
                'the sync: %s; the destination has no partition of that name attached to the same parent. Create '
                'and attach it on the destination (CREATE TABLE ... PARTITION OF ... with the same bounds, as a '
                'session with default_transaction_read_only = off), then run pg_dts_migrate again to resume'
                % ', '.join('%s (of %s)' % (display(t), '%s.%s' % t.parent_key) for t in missing_dest))
        return adopt, problems

    def check(self, conn, destination):
        """classify() that raises ScopeError for problems. Returns the partitions to adopt."""
        adopt, problems = self.classify(conn, destination)
        if problems:
            raise ScopeError('database "%s": %s' % (self.dbname, '; '.join(problems)))
        return adopt

    def adopted(self, tables):
        self.known.update((t.schema, t.name) for t in tables)

    def in_scope(self, key, by_key):
        """Whether (schema, table) is in the task's scope (a table that no longer exists is not)."""
        table = by_key.get(tuple(key))
        if table is None:
            return False
        return any(t is table for t in catalog.select_tables(list(by_key.values()), self.include, self.exclude))


# -- unlogged tables at finish ---------------------------------------------------------------------------------------

def unlogged_tables(conn, dbname, known):
    """The task's tables (`known` (schema, table) pairs) that are UNLOGGED on the source now, with columns."""
    known = set(tuple(k) for k in known)
    return [t for t in catalog.load_tables(conn, dbname)
            if t.relpersistence == 'u' and t.has_storage and (t.schema, t.name) in known]


def recopy_unlogged(source, destination, dbname, tables):
    """Copy `tables` again, under the write fence: one REPEATABLE READ read of the source, one destination
    transaction that empties them (TRUNCATE ONLY) and fills them with COPY. Returns [(table, rows)]."""
    from ansible_collections.pgdts.migration.plugins.module_utils import copy as copy_mod
    if not tables:
        return []
    out = []
    with connect(source, dbname, autocommit=False, application_name='pgdts-finish-copy') as src, \
            connect(destination, dbname, autocommit=False, application_name='pgdts-finish-copy',
                    options=WRITER_OPTIONS) as dst:
        src.execute('SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY')
        src.execute('SET LOCAL row_security = off')      # all rows or an error, never filtered (copy.py alike)
        dst.execute("SET LOCAL session_replication_role = replica")
        dst.execute(sql.SQL('TRUNCATE ONLY {}').format(sql.SQL(', ').join(_qualified(t) for t in tables)))
        for table in tables:
            item = copy_mod.CopyItem(table)
            with src.cursor() as scur, dst.cursor() as dcur:
                with dcur.copy(copy_mod._insert_statement(item, False)) as writer, \
                        scur.copy(copy_mod._select_statement(item)) as reader:
                    for data in reader:
                        writer.write(data)
                out.append((table, max(dcur.rowcount, 0)))
        dst.commit()
        src.rollback()
    return out
