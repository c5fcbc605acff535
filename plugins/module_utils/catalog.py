# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Catalog reads: which databases and tables a task selects, and what we need to know about each table."""

from __future__ import annotations

import fnmatch

from ansible_collections.pgdts.migration.plugins.module_utils.connection import query_all, sql

SYSTEM_SCHEMAS = ('pg_catalog', 'information_schema', 'pg_toast')


class SelectionError(Exception):
    """The selection options are malformed."""


class Column:
    __slots__ = ('name', 'type_name', 'type_oid', 'not_null', 'generated', 'identity', 'position')

    def __init__(self, name, type_name, type_oid, not_null, generated, identity, position):
        self.name = name
        self.type_name = type_name
        self.type_oid = type_oid
        self.not_null = not_null
        self.generated = generated      # '' or 's' (stored generated column) or 'v' (18: virtual)
        self.identity = identity        # '' , 'a' (always) or 'd' (by default)
        self.position = position

    def to_dict(self):
        return {k: getattr(self, k) for k in self.__slots__}


class Table:
    """One table of the source (a plain table, a partition, or a partitioned parent)."""

    def __init__(self, dbname, schema, name, oid, relkind, relpersistence, replica_identity, est_rows, size_bytes,
                 parent=None, is_partition=False):
        self.dbname = dbname
        self.schema = schema
        self.name = name
        self.oid = oid
        self.relkind = relkind
        self.relpersistence = relpersistence
        self.replica_identity = replica_identity
        self.est_rows = est_rows
        self.size_bytes = size_bytes
        self.parent = parent
        self.is_partition = is_partition
        self.columns = []
        self.key_columns = []       # primary key, else replica identity index columns; [] when neither
        self.key_kind = None        # 'primary', 'index', 'full' or None

    @property
    def qualified(self):
        return '%s.%s' % (self.schema, self.name)

    @property
    def has_storage(self):
        return self.relkind == 'r'

    @property
    def copy_columns(self):
        """Columns whose values are copied (stored generated columns are computed by the destination)."""
        return [c for c in self.columns if not c.generated]

    def to_dict(self):
        return {'database': self.dbname, 'schema': self.schema, 'table': self.name, 'relkind': self.relkind,
                'est_rows': self.est_rows, 'size_bytes': self.size_bytes, 'key_columns': list(self.key_columns),
                'key_kind': self.key_kind, 'parent': self.parent}


def list_databases(conn):
    """Non-template databases that accept connections, in name order."""
    rows = query_all(conn, "SELECT datname FROM pg_catalog.pg_database WHERE NOT datistemplate AND datallowconn "
                           "ORDER BY datname")
    return [r[0] for r in rows]


def split_pattern(pattern):
    """'schema.table' or 'db.schema.table' (globs allowed; double quotes keep dots) -> (db or None, schema, table)."""
    parts, current, quoted = [], '', False
    for char in pattern:
        if char == '"':
            quoted = not quoted
        elif char == '.' and not quoted:
            parts.append(current)
            current = ''
        else:
            current += char
    parts.append(current)
    if quoted or len(parts) not in (2, 3) or not all(parts):
        raise SelectionError('table pattern %r must be schema.table or database.schema.table '
                             '(quote names that contain dots)' % pattern)
    if len(parts) == 2:
        return None, parts[0], parts[1]
    return tuple(parts)


def _matches(table, patterns):
    for db, schema, name in patterns:
        if db is not None and not fnmatch.fnmatchcase(table.dbname, db):
            continue
        if fnmatch.fnmatchcase(table.schema, schema) and fnmatch.fnmatchcase(table.name, name):
            return True
    return False


_TABLES_QUERY = """
SELECT c.oid, n.nspname, c.relname, c.relkind, c.relpersistence, c.relreplident,
       GREATEST(c.reltuples, 0)::bigint,
       CASE WHEN c.relkind = 'r' THEN pg_catalog.pg_table_size(c.oid) ELSE 0 END,
       c.relispartition,
       (SELECT pn.nspname || '.' || pc.relname FROM pg_catalog.pg_inherits i
          JOIN pg_catalog.pg_class pc ON pc.oid = i.inhparent
          JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace
         WHERE i.inhrelid = c.oid AND c.relispartition LIMIT 1)
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
   AND n.nspname NOT LIKE 'pg\\_temp\\_%%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%%'
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                    WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
 ORDER BY n.nspname, c.relname
"""

_COLUMNS_QUERY = """
SELECT a.attrelid, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.atttypid, a.attnotnull,
       {generated}, a.attidentity, a.attnum
  FROM pg_catalog.pg_attribute a
 WHERE a.attrelid = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attrelid, a.attnum
"""


def _columns_query(conn):
    """attgenerated exists from PostgreSQL 12 on ('s' stored, 18: 'v' virtual); before, no column is generated."""
    generated = sql.SQL('a.attgenerated') if conn.info.server_version >= 120000 else sql.SQL("''::\"char\"")
    return sql.SQL(_COLUMNS_QUERY).format(generated=generated)


_KEYS_QUERY = """
SELECT i.indrelid, i.indisprimary, array_agg(a.attname ORDER BY k.ord)
  FROM pg_catalog.pg_index i
  CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
 WHERE i.indrelid = ANY(%s) AND (i.indisprimary OR i.indisreplident)
 GROUP BY i.indrelid, i.indexrelid, i.indisprimary
"""


def load_tables(conn, dbname):
    """Every user table of the connected database with columns and keys."""
    tables = []
    for row in query_all(conn, _TABLES_QUERY):
        oid, schema, name, relkind, persistence, replident, est_rows, size, is_partition, parent = row
        tables.append(Table(dbname, schema, name, oid, relkind, persistence, replident, est_rows, size,
                            parent=parent, is_partition=is_partition))
    by_oid = {t.oid: t for t in tables}
    if not by_oid:
        return tables
    oids = list(by_oid)
    for relid, name, type_name, type_oid, not_null, generated, identity, position in query_all(conn, _columns_query(conn), (oids,)):
        by_oid[relid].columns.append(Column(name, type_name, type_oid, not_null, generated, identity, position))
    for relid, primary, columns in query_all(conn, _KEYS_QUERY, (oids,)):
        table = by_oid[relid]
        if primary:
            table.key_columns, table.key_kind = list(columns), 'primary'
        elif table.replica_identity == 'i' and table.key_kind != 'primary':
            table.key_columns, table.key_kind = list(columns), 'index'
    for table in tables:
        if table.key_kind is None and table.replica_identity == 'f':
            table.key_kind = 'full'
        if table.key_kind == 'primary' and table.replica_identity in ('n', 'f'):
            # Decoding sends what the replica identity says; NOTHING means no old key at all.
            table.key_kind = 'full' if table.replica_identity == 'f' else table.key_kind
    return tables


def select_tables(tables, include=None, exclude=None):
    """Filter tables by include/exclude patterns. A selected partitioned parent brings its partitions."""
    include_p = [split_pattern(p) for p in (include or [])]
    exclude_p = [split_pattern(p) for p in (exclude or [])]
    chosen = {}
    for table in tables:
        if include_p and not _matches(table, include_p):
            continue
        chosen[table.qualified] = table
    if include_p:
        changed = True
        while changed:
            changed = False
            for table in tables:
                if table.parent and table.parent in chosen and table.qualified not in chosen:
                    chosen[table.qualified] = table
                    changed = True
    return [t for t in tables if t.qualified in chosen and not _matches(t, exclude_p)]


def unmatched_patterns(tables, include, dbname=None):
    """Include patterns that match no table (a typo, or a table that does not exist)."""
    missing = []
    for pattern in include or []:
        parsed = split_pattern(pattern)
        if parsed[0] is not None and dbname is not None and not fnmatch.fnmatchcase(dbname, parsed[0]):
            continue
        if not any(_matches(t, [parsed]) for t in tables):
            missing.append(pattern)
    return missing


def whole_database(spec):
    """True when a task (its spec) takes whole databases: no table patterns, nothing excluded."""
    return not spec.get('tables') and not spec.get('exclude_tables')


# The sequences a task carries, in one place (verify counts them, the copy and the cutover set them): every sequence of
# the database for a whole-database task (parameter 1), else the sequences the selected tables (oids, parameters 2 and
# 3) use wherever they live: OWNED BY and identity (pg_depend 'a' / 'i'), and column defaults that name them
# (nextval('ids.order_seq') records a dependency of the default on the sequence). Columns: schema, name, whether the
# connected role may read it, oid.
SEQUENCES_IN_SCOPE = """
SELECT DISTINCT sn.nspname, s.relname, pg_catalog.has_sequence_privilege(s.oid, 'SELECT'), s.oid
  FROM pg_catalog.pg_class s
  JOIN pg_catalog.pg_namespace sn ON sn.oid = s.relnamespace
 WHERE s.relkind = 'S'
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e WHERE e.classid = 'pg_catalog.pg_class'::regclass
                      AND e.objid = s.oid AND e.deptype = 'e')
   AND (%s
        OR EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                    WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = s.oid
                      AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid = ANY(%s)
                      AND d.deptype IN ('a', 'i'))
        OR EXISTS (SELECT 1 FROM pg_catalog.pg_attrdef ad
                     JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_attrdef'::regclass AND d.objid = ad.oid
                    WHERE d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid = s.oid
                      AND ad.adrelid = ANY(%s)))
   AND sn.nspname NOT IN ('pg_catalog', 'information_schema')
   AND sn.nspname NOT LIKE 'pg\\_temp\\_%%'
 ORDER BY 1, 2
"""


def sequence_scope_params(whole, table_oids):
    """The parameters of SEQUENCES_IN_SCOPE."""
    oids = list(table_oids or [])
    return (bool(whole), oids, oids)


def table_oids(conn, names):
    """Oids of the tables [(schema, name)] of the connected database (those that exist)."""
    names = list(names)
    if not names:
        return []
    rows = query_all(conn, """
        SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          JOIN unnest(%s::text[], %s::text[]) AS t(schema_name, table_name)
            ON t.schema_name = n.nspname AND t.table_name = c.relname""",
                     ([s for s, _n in names], [n for _s, n in names]))
    return [r[0] for r in rows]


def sequences_in_scope(conn, tables=None):
    """[(schema, name, oid)] of the sequences a task carries: `tables` None = the whole database, else the
    [(schema, table)] the task selected."""
    whole = tables is None
    oids = [] if whole else table_oids(conn, tables)
    return [(r[0], r[1], r[3]) for r in query_all(conn, SEQUENCES_IN_SCOPE, sequence_scope_params(whole, oids))]


# Materialized views and the relations their defining query reads (through their _RETURN rule), and the same for
# views, so that a matview reading a view over another matview is ordered after that one.
_MATVIEWS_QUERY = """
SELECT c.oid, n.nspname, c.relname, c.relispopulated
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'm' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e WHERE e.classid = 'pg_catalog.pg_class'::regclass
                      AND e.objid = c.oid AND e.deptype = 'e')
 ORDER BY 2, 3
"""

_VIEW_EDGES_QUERY = """
SELECT DISTINCT r.ev_class, d.refobjid
  FROM pg_catalog.pg_rewrite r
  JOIN pg_catalog.pg_class v ON v.oid = r.ev_class AND v.relkind IN ('v', 'm')
  JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
  JOIN pg_catalog.pg_class t ON t.oid = d.refobjid AND t.relkind IN ('v', 'm')
 WHERE d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid <> r.ev_class AND r.rulename = '_RETURN'
"""


def materialized_views(conn, schemas=None):
    """[(schema, name, populated)] of the materialized views of the connected database (those in `schemas` when
    given), in dependency order: a matview comes after every matview its query reads, directly or through views."""
    rows = query_all(conn, _MATVIEWS_QUERY)
    matviews = {r[0]: (r[1], r[2], r[3]) for r in rows}
    reads = {}
    for dependent, referenced in query_all(conn, _VIEW_EDGES_QUERY):
        reads.setdefault(dependent, set()).add(referenced)

    def matviews_read(oid):
        """The matviews that `oid`'s query reads, looking through views."""
        found, seen, todo = set(), {oid}, list(reads.get(oid, ()))
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            if current in matviews:
                found.add(current)
            else:
                todo.extend(reads.get(current, ()))
        return found

    ordered, placed = [], set()

    def place(oid, path):
        if oid in placed or oid in path:
            return
        path.add(oid)
        for before in sorted(matviews_read(oid), key=lambda o: matviews[o][:2]):
            place(before, path)
        path.discard(oid)
        placed.add(oid)
        ordered.append(oid)

    for oid in [r[0] for r in rows]:
        place(oid, set())
    return [matviews[oid] for oid in ordered if schemas is None or matviews[oid][0] in schemas]
