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


def list_sequences(conn, schemas=None):
    """Sequences (schema, name, owning table or None) in the given schemas (all user schemas when None)."""
    rows = query_all(conn, """
        SELECT n.nspname, c.relname,
               (SELECT tn.nspname || '.' || tc.relname FROM pg_catalog.pg_depend d
                  JOIN pg_catalog.pg_class tc ON tc.oid = d.refobjid
                  JOIN pg_catalog.pg_namespace tn ON tn.oid = tc.relnamespace
                 WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
                   AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i') LIMIT 1)
          FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'S' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                            WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
         ORDER BY 1, 2""")
    return [r for r in rows if schemas is None or r[0] in schemas]
