# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a task's scope holds on the source, read from the source's catalog (never from the task's own records).

One function, read_scope(), answers "what must the destination hold for this database?": every table and partition
the task's databases / tables / exclude_tables select (the same rules as the worker: catalog.select_tables), the
materialized views and sequences in scope, and, for a whole-database task, the large objects. pg_dts_finish proves the
destination against it (proof.py); an online comparison can use the same list.

What is in scope, per database:

- tables, partitions and partitioned parents: catalog.select_tables() over every user table of the database;
- schemas: every user schema (whole-database task) or the schemas of the selected tables (what pg_dump brings with
  ``--schema``); views, materialized views and functions of these schemas are in scope;
- sequences: catalog.SEQUENCES_IN_SCOPE: every sequence of the database (whole-database task), else every sequence a
  selected table uses wherever it lives (column default ``nextval()``, identity, OWNED BY);
- large objects: every large object of the database, for a whole-database task only (they belong to the database,
  not to a table).

A whole-database task is one with neither ``tables`` nor ``exclude_tables`` (as for the worker's schema dump).
Objects that belong to an extension are the extension's, and not listed.
"""

from __future__ import annotations

from ansible_collections.pgdts.migration.plugins.module_utils import catalog
from ansible_collections.pgdts.migration.plugins.module_utils.connection import query_all

_USER_SCHEMA = ("n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') "
                "AND n.nspname NOT LIKE 'pg\\_temp\\_%%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%%'")
_NOT_EXTENSION_MEMBER = ("NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::regclass "
                         "AND d.objid = c.oid AND d.deptype = 'e')")

_SCHEMAS_QUERY = 'SELECT n.nspname FROM pg_catalog.pg_namespace n WHERE ' + _USER_SCHEMA + ' ORDER BY 1'

_MATVIEWS_QUERY = """
SELECT c.oid, n.nspname, c.relname, c.relkind, c.relpersistence, c.relreplident, GREATEST(c.reltuples, 0)::bigint,
       pg_catalog.pg_table_size(c.oid), c.relispopulated
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'm' AND """ + _USER_SCHEMA + ' AND ' + _NOT_EXTENSION_MEMBER + """
 ORDER BY n.nspname, c.relname
"""

_FOREIGN_TABLES_QUERY = """
SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'f' AND """ + _USER_SCHEMA + ' AND ' + _NOT_EXTENSION_MEMBER + """
 ORDER BY 1, 2
"""

_LARGE_OBJECTS_QUERY = ('SELECT m.oid::bigint, pg_catalog.pg_get_userbyid(m.lomowner)::text '
                        'FROM pg_catalog.pg_largeobject_metadata m ORDER BY 1')


class Scope:
    """Everything one database of a task must carry, as the source's catalog shows it.

    dbname: str; whole: bool (a whole-database task); tables / partitions / partitioned: [catalog.Table] (plain
    tables, partitions with storage, partitioned parents); matviews: [catalog.Table] (relkind 'm', columns loaded,
    .populated set); schemas: [str] (schemas whose views, matviews, functions and sequences are in scope);
    sequences: [(schema, name)]; include / exclude: the task's table patterns; large_objects: [(oid, owner)] or None when large objects are not in scope (a task
    that selects tables); foreign_tables: [(schema, name)] (in scope schemas; their rows live on another server);
    left_out: [(schema, name)] tables left out on purpose (not compared, listed as such)."""

    def __init__(self, dbname, whole, include=None, exclude=None):
        self.dbname = dbname
        self.whole = whole
        self.include = list(include or [])
        self.exclude = list(exclude or [])
        self.tables = []
        self.partitions = []
        self.partitioned = []
        self.matviews = []
        self.schemas = []
        self.sequences = []
        self.large_objects = None
        self.foreign_tables = []
        self.left_out = []   # [(schema, name)] tables the task leaves out on purpose (replica_identity: exclude)

    @property
    def relations(self):
        """The relations whose rows are compared: tables, partitions and materialized views."""
        return self.tables + self.partitions + self.matviews

    @property
    def all_tables(self):
        """Every selected table: plain tables, partitions and partitioned parents."""
        return self.tables + self.partitions + self.partitioned

    def to_dict(self):
        def names(items):
            return ['%s.%s' % (t.schema, t.name) for t in items]
        return {'database': self.dbname, 'whole_database': self.whole, 'tables': names(self.tables),
                'partitions': names(self.partitions), 'partitioned_tables': names(self.partitioned),
                'matviews': names(self.matviews), 'schemas': list(self.schemas),
                'sequences': ['%s.%s' % s for s in self.sequences],
                'large_objects': None if self.large_objects is None else len(self.large_objects),
                'foreign_tables': ['%s.%s' % s for s in self.foreign_tables]}


def load_matviews(conn, dbname, schemas=None):
    """Materialized views of the connected database (in `schemas` when given) as catalog.Table objects with their
    columns; `.populated` says whether a REFRESH has filled them."""
    views = []
    for oid, schema, name, relkind, persistence, replident, est_rows, size, populated in query_all(conn, _MATVIEWS_QUERY):
        if schemas is not None and schema not in schemas:
            continue
        view = catalog.Table(dbname, schema, name, oid, relkind, persistence, replident, est_rows, size)
        view.populated = populated
        views.append(view)
    by_oid = {v.oid: v for v in views}
    if by_oid:
        # pylint: disable=protected-access
        for relid, name, type_name, type_oid, not_null, generated, identity, position in query_all(
                conn, catalog._columns_query(conn), (list(by_oid),)):
            by_oid[relid].columns.append(catalog.Column(name, type_name, type_oid, not_null, generated, identity,
                                                        position))
    return views


def read_scope(conn, dbname, tables=None, exclude_tables=None):
    """The scope of one database of a task, read from the source catalog through `conn` (connected to `dbname`).

    tables / exclude_tables: the task's patterns (catalog.select_tables). Returns a Scope. Read it inside one
    transaction (REPEATABLE READ) for one consistent view; at the cutover the source is fenced anyway."""
    whole = catalog.whole_database({'tables': tables, 'exclude_tables': exclude_tables})
    scope = Scope(dbname, whole, tables, exclude_tables)
    chosen = catalog.select_tables(catalog.load_tables(conn, dbname), tables, exclude_tables)
    for table in chosen:
        if table.relkind == 'p':
            scope.partitioned.append(table)
        elif table.is_partition:
            scope.partitions.append(table)
        else:
            scope.tables.append(table)
    if whole:
        scope.schemas = [r[0] for r in query_all(conn, _SCHEMAS_QUERY)]
    else:
        scope.schemas = sorted({t.schema for t in chosen})
    wanted = set(scope.schemas)
    scope.matviews = load_matviews(conn, dbname, wanted)
    scope.foreign_tables = [(s, n) for s, n in query_all(conn, _FOREIGN_TABLES_QUERY) if s in wanted]
    # the sequences the task carries, as verify counts them and the copy and the cutover set them
    scope.sequences = sorted({(r[0], r[1]) for r in query_all(
        conn, catalog.SEQUENCES_IN_SCOPE, catalog.sequence_scope_params(whole, [t.oid for t in chosen]))})
    if whole:
        scope.large_objects = [tuple(row) for row in query_all(conn, _LARGE_OBJECTS_QUERY)]
    return scope


def read_task_scope(conn, dbname, spec):
    """read_scope() with the selection of a task's spec (its `tables` and `exclude_tables`)."""
    return read_scope(conn, dbname, spec.get('tables'), spec.get('exclude_tables'))
