# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The proof of pg_dts_finish: the destination holds what the task's scope holds on the source.

prove() takes the scopes read from the source catalog (scope.read_scope) and compares, per database:

- rows: every table, partition and materialized view (compare.compare_tables: checksums or counts); a relation on
  one side only is 'missing' (on the destination) or 'extra' (on the destination, among the tables the task's
  selection matches there);
- sequences: last_value and is_called;
- large objects (whole-database tasks): the set of oids, their owners (when roles are migrated) and an md5 of each
  object's data (lo_get; checksum mode only);
- definitions, read on both sides with the catalog's own functions and compared as whitespace-normalised text:
  columns (type, NOT NULL through attnotnull, default, generated, identity), indexes (pg_get_indexdef, validity),
  constraints (pg_get_constraintdef; NOT NULL constraints, kind 'n' of PostgreSQL 18, are left to attnotnull),
  triggers (pg_get_triggerdef and enabled state; clones on partitions come with their parent's), views and
  materialized views (pg_get_viewdef), functions (pg_get_functiondef), sequence parameters, extensions.

Between servers of different major versions the text of a view or function can differ for equal objects (the
deparser changes); then a view is compared by its columns and the columns it reads, and a function by its language,
arguments, result, attributes and source text, and the result notes it. Every reading connection uses
search_path = pg_catalog, so names are schema-qualified the same way on both sides.

The result: a list of items (every relation, every sequence, one item for the large objects of a database, and each
definition that differs) and a summary with counts per kind and what was not compared, and why.
"""

from __future__ import annotations

import json

from ansible_collections.pgdts.migration.plugins.module_utils import catalog, compare as compare_mod, schema
from ansible_collections.pgdts.migration.plugins.module_utils import scope as scope_mod
from ansible_collections.pgdts.migration.plugins.module_utils.connection import connect, error_text, query_all

APPLICATION_NAME = 'pgdts-compare'

# kind of an item -> key of the summary's counts, in the order they are reported
KINDS = (('table', 'tables'), ('partition', 'partitions'), ('partitioned_table', 'partitioned_tables'),
         ('matview', 'matviews'), ('sequence', 'sequences'), ('large_object', 'large_objects'),
         ('column', 'columns'), ('index', 'indexes'), ('constraint', 'constraints'), ('trigger', 'triggers'),
         ('view', 'views'), ('function', 'functions'), ('sequence_parameters', 'sequence_parameters'),
         ('extension', 'extensions'))
PLURAL = dict(KINDS)
FAILED = ('mismatch', 'missing', 'extra', 'error')
MAX_LISTED = 10
MAX_TEXT = 500

_USER_NS = ("n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') "
            "AND n.nspname NOT LIKE 'pg\\_temp\\_%%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%%'")


def _not_member(classid, alias):
    return ("NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e WHERE e.classid = 'pg_catalog.%s'::regclass "
            "AND e.objid = %s.oid AND e.deptype = 'e')" % (classid, alias))


# -- definitions, read the same way on both sides -----------------------------------------------------------------
_RELS = """
  FROM ROWS FROM (pg_catalog.unnest(%(s)s::text[]), pg_catalog.unnest(%(n)s::text[])) AS w(s, n)
  JOIN pg_catalog.pg_namespace n ON n.nspname = w.s
  JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = w.n"""

_COLUMNS_SQL = """
SELECT n.nspname, c.relname, a.attname::text,
       pg_catalog.concat_ws(' ', pg_catalog.format_type(a.atttypid, a.atttypmod),
                            CASE WHEN a.attnotnull THEN 'not null' END,
                            CASE WHEN pg_catalog.to_jsonb(a)->>'attidentity' IN ('a', 'd')
                                 THEN 'identity ' || (pg_catalog.to_jsonb(a)->>'attidentity') END,
                            CASE WHEN pg_catalog.to_jsonb(a)->>'attgenerated' = 's'
                                 THEN 'generated as ' ELSE CASE WHEN ad.adbin IS NOT NULL THEN 'default ' END END
                              || pg_catalog.pg_get_expr(ad.adbin, ad.adrelid))""" + _RELS + """
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
"""

_INDEXES_SQL = """
SELECT n.nspname, c.relname, ic.relname::text,
       pg_catalog.pg_get_indexdef(i.indexrelid) || CASE WHEN i.indisvalid THEN '' ELSE ' (INVALID)' END""" + _RELS + """
  JOIN pg_catalog.pg_index i ON i.indrelid = c.oid
  JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
"""

_CONSTRAINTS_SQL = """
SELECT n.nspname, c.relname, co.conname::text, co.contype::text || ': ' || pg_catalog.pg_get_constraintdef(co.oid)""" + _RELS + """
  JOIN pg_catalog.pg_constraint co ON co.conrelid = c.oid
 WHERE co.contype <> 'n'
"""

_TRIGGERS_SQL = """
SELECT n.nspname, c.relname, t.tgname::text,
       pg_catalog.pg_get_triggerdef(t.oid) || CASE t.tgenabled WHEN 'O' THEN '' WHEN 'D' THEN ' (DISABLED)'
            WHEN 'R' THEN ' (ENABLE REPLICA)' WHEN 'A' THEN ' (ENABLE ALWAYS)' END""" + _RELS + """
  JOIN pg_catalog.pg_trigger t ON t.tgrelid = c.oid
 WHERE NOT t.tgisinternal AND COALESCE((pg_catalog.to_jsonb(t)->>'tgparentid')::oid, 0) = 0
"""

_VIEWS_SQL = """
SELECT n.nspname, c.relname, c.relkind::text, pg_catalog.pg_get_viewdef(c.oid),
       COALESCE((SELECT pg_catalog.string_agg(a.attname || ' ' || pg_catalog.format_type(a.atttypid, a.atttypmod), ', '
                                              ORDER BY a.attnum)
                   FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '')
       || ' <- ' ||
       COALESCE((SELECT pg_catalog.string_agg(DISTINCT x.ref, ', ' ORDER BY x.ref) FROM (
                   SELECT rn.nspname || '.' || rc.relname || COALESCE('.' || ra.attname, '') AS ref
                     FROM pg_catalog.pg_rewrite r
                     JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
                      AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid <> c.oid
                     JOIN pg_catalog.pg_class rc ON rc.oid = d.refobjid
                     JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace
                     LEFT JOIN pg_catalog.pg_attribute ra ON ra.attrelid = d.refobjid AND ra.attnum = d.refobjsubid
                      AND d.refobjsubid > 0
                    WHERE r.ev_class = c.oid) x), '')
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('v', 'm') AND """ + _USER_NS + ' AND ' + _not_member('pg_class', 'c')

_FUNCTIONS_SQL = """
SELECT n.nspname, p.proname || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid) || ')',
       CASE WHEN COALESCE(pg_catalog.to_jsonb(p)->>'prokind', 'f') IN ('f', 'p', 'w')
                 AND NOT COALESCE((pg_catalog.to_jsonb(p)->>'proisagg')::boolean, false)
            THEN pg_catalog.pg_get_functiondef(p.oid)
            ELSE 'aggregate ' || pg_catalog.pg_get_function_result(p.oid) || ' ' ||
                 (SELECT pg_catalog.concat_ws(' ', ag.aggtransfn::regproc::text, ag.aggfinalfn::regproc::text,
                                              pg_catalog.format_type(ag.aggtranstype, NULL), ag.agginitval)
                    FROM pg_catalog.pg_aggregate ag WHERE ag.aggfnoid = p.oid) END,
       pg_catalog.concat_ws(' | ', l.lanname, pg_catalog.pg_get_function_result(p.oid), p.provolatile, p.proisstrict,
                            p.prosecdef, p.proretset, p.proconfig::text,
                            CASE WHEN pg_catalog.to_jsonb(p)->>'prosqlbody' IS NULL THEN pg_catalog.md5(p.prosrc) END),
       pg_catalog.to_jsonb(pg_catalog.pg_identify_object_as_address('pg_catalog.pg_proc'::regclass, p.oid, 0))::text
  FROM pg_catalog.pg_proc p
  JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
  JOIN pg_catalog.pg_language l ON l.oid = p.prolang
 WHERE """ + _USER_NS + ' AND ' + _not_member('pg_proc', 'p')

_SEQUENCE_PARAMETERS_SQL = """
SELECT n.nspname, c.relname,
       pg_catalog.concat_ws(' ', pg_catalog.format_type(s.seqtypid, NULL), 'start', s.seqstart, 'increment',
                            s.seqincrement, 'minvalue', s.seqmin, 'maxvalue', s.seqmax,
                            CASE WHEN s.seqcycle THEN 'cycle' ELSE 'no cycle' END)
  FROM pg_catalog.pg_sequence s
  JOIN pg_catalog.pg_class c ON c.oid = s.seqrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE """ + _USER_NS + ' AND ' + _not_member('pg_class', 'c')

_EXTENSIONS_SQL = """
SELECT e.extname::text, n.nspname::text, e.extversion
  FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
"""

_LARGE_OBJECTS_SQL = """
SELECT m.oid::bigint, pg_catalog.pg_get_userbyid(m.lomowner)::text, pg_catalog.md5(x.d), pg_catalog.octet_length(x.d)
  FROM pg_catalog.pg_largeobject_metadata m CROSS JOIN LATERAL (SELECT pg_catalog.lo_get(m.oid) AS d) x
 ORDER BY 1
"""

_LARGE_OBJECTS_LIST_SQL = """
SELECT m.oid::bigint, pg_catalog.pg_get_userbyid(m.lomowner)::text, NULL::text, NULL::bigint
  FROM pg_catalog.pg_largeobject_metadata m ORDER BY 1
"""


def normalise(text):
    """Definition text with every run of white space made one blank (layout is not part of a definition)."""
    return ' '.join((text or '').split())


def _connect(spec, dbname):
    conn = connect(spec, dbname, application_name=APPLICATION_NAME)
    try:
        for name, value in (('search_path', 'pg_catalog'), ('row_security', 'off'), ('statement_timeout', '0'),
                            ('bytea_output', 'hex')):
            conn.execute('SELECT pg_catalog.set_config(%s, %s, false)', (name, value))
    except Exception:
        conn.close()
        raise
    return conn


class _Side:
    """What one server holds of a scope: relation names, definitions, sequence values, large objects."""

    def __init__(self, conn, scope_, rel_names, mode):
        self.major = conn.info.server_version // 10000
        schemas = None if scope_.whole else set(scope_.schemas)

        def in_scope(schema_name):
            return schemas is None or schema_name in schemas

        names = {'s': [r[0] for r in rel_names], 'n': [r[1] for r in rel_names]}
        self.defs = {}
        for kind, query in (('column', _COLUMNS_SQL), ('index', _INDEXES_SQL), ('constraint', _CONSTRAINTS_SQL),
                            ('trigger', _TRIGGERS_SQL)):
            self.defs[kind] = {(s, t, o): (normalise(d), None) for s, t, o, d in query_all(conn, query, names)}
        self.defs['view'] = {(s, v, None): (normalise(d), normalise(f)) for s, v, _k, d, f in query_all(conn, _VIEWS_SQL)
                             if in_scope(s)}
        self.function_addresses = {}
        self.defs['function'] = {}
        for s, f, d, fallback, address in query_all(conn, _FUNCTIONS_SQL):
            if in_scope(s):
                self.defs['function'][(s, f, None)] = (normalise(d), normalise(fallback))
                self.function_addresses[(s, f, None)] = address
        used = set(scope_.sequences)
        self.defs['sequence_parameters'] = {(s, q, None): (d, None) for s, q, d in query_all(conn, _SEQUENCE_PARAMETERS_SQL)
                                            if in_scope(s) or (s, q) in used}
        self.extensions = {name: (nsp, version) for name, nsp, version in query_all(conn, _EXTENSIONS_SQL)}
        self.sequence_names = {(s, q) for s, q, _n in self.defs['sequence_parameters']}
        self.large_objects = None
        self.large_object_error = None
        if scope_.large_objects is not None:
            try:
                with conn.transaction():
                    rows = query_all(conn, _LARGE_OBJECTS_SQL if mode == 'checksum' else _LARGE_OBJECTS_LIST_SQL)
                self.large_objects = {oid: (owner, digest, size) for oid, owner, digest, size in rows}
            except Exception as exc:  # pylint: disable=broad-except
                self.large_object_error = error_text(exc)

    def sequence_values(self, conn, names):
        present = [n for n in names if n in self.sequence_names]
        return schema.read_sequences(conn, present)


def _relation_names(tables):
    return {(t.schema, t.name): t for t in tables}


def _address(kind, schema_name, name):
    return json.dumps([kind, [schema_name, name], []])


def _item(dbname, kind, schema_name, name, result, message, table=None, **extra):
    item = {'database': dbname, 'kind': kind, 'schema': schema_name, 'table': table if table is not None else name,
            'name': name, 'result': result, 'message': message}
    item.update(extra)
    return item


def _short(text):
    if text is None or len(text) <= MAX_TEXT:
        return text
    return text[:MAX_TEXT] + '...'


class _Database:
    """The proof of one database."""

    def __init__(self, source, destination, scope_, mode, jobs, existing, compare_owners):
        self.source = source
        self.destination = destination
        self.scope = scope_
        self.dbname = scope_.dbname
        self.mode = mode
        self.jobs = jobs
        self.existing = {json.dumps(a) for a in (existing or [])}
        self.compare_owners = compare_owners
        self.items = []
        self.counts = {}
        self.notes = []

    def count(self, kind, result, n=1):
        entry = self.counts.setdefault(kind, {'compared': 0, 'match': 0, 'mismatch': 0, 'error': 0})
        entry['compared'] += n
        entry['error' if result == 'error' else 'match' if result == 'match' else 'mismatch'] += n

    def add(self, item, listed=True):
        self.count(item['kind'], item['result'])
        if listed or item['result'] != 'match':
            self.items.append(item)

    def preexisting(self, address):
        return address in self.existing

    def run(self):
        scope_ = self.scope
        source_rel = _relation_names(scope_.all_tables)
        source_mv = _relation_names(scope_.matviews)
        with _connect(self.destination, self.dbname) as dst:
            dst_all = catalog.select_tables(catalog.load_tables(dst, self.dbname), scope_.include or None,
                                            scope_.exclude or None)
            dst_mv = _relation_names(scope_mod.load_matviews(dst, self.dbname, None if scope_.whole else set(scope_.schemas)))
        dst_rel = _relation_names(dst_all)
        for key in scope_.left_out:
            source_rel.pop(key, None)
            dst_rel.pop(key, None)
        both = sorted((set(source_rel) & set(dst_rel)) | (set(source_mv) & set(dst_mv)))
        rows_items = self.relations(source_rel, dst_rel, source_mv, dst_mv)
        with _connect(self.source, self.dbname) as src, _connect(self.destination, self.dbname) as dst:
            src_side = _Side(src, scope_, both, self.mode)
            dst_side = _Side(dst, scope_, both, self.mode)
            self.definitions(src_side, dst_side)
            self.sequences(src_side, dst_side, src, dst)
            self.large_objects(src_side, dst_side)
            self.extensions(src_side, dst_side)
        self.items = rows_items + self.items
        return self.items

    # -- rows ----------------------------------------------------------------------------------------------------
    def relations(self, source_rel, dst_rel, source_mv, dst_mv):
        dbname = self.dbname
        out = []

        def kind_of(table):
            if table.relkind == 'm':
                return 'matview'
            if table.relkind == 'p':
                return 'partitioned_table'
            return 'partition' if table.is_partition else 'table'

        compared = []
        for names, dst_names, label in ((source_rel, dst_rel, 'table'), (source_mv, dst_mv, 'materialized view')):
            for key, table in sorted(names.items()):
                kind = kind_of(table)
                if key not in dst_names:
                    item = _item(dbname, kind, key[0], key[1], 'missing',
                                 '%s %s.%s exists on the source but not on the destination' % (label, *key))
                elif kind == 'partitioned_table':
                    # its rows are the partitions' rows; its definition is compared below
                    self.count(kind, 'match')
                    continue
                elif kind == 'matview' and not (table.populated and dst_names[key].populated):
                    if table.populated:
                        item = _item(dbname, kind, key[0], key[1], 'error',
                                     'materialized view %s.%s has not been populated on the destination (it needs '
                                     'REFRESH MATERIALIZED VIEW); its rows cannot be compared' % key)
                    elif dst_names[key].populated:
                        item = _item(dbname, kind, key[0], key[1], 'mismatch',
                                     'materialized view %s.%s is populated on the destination but not on the source'
                                     % key)
                    else:
                        item = _item(dbname, kind, key[0], key[1], 'match',
                                     'materialized view %s.%s is not populated on either side' % key)
                else:
                    compared.append((table, kind))
                    continue
                self.count(kind, item['result'])
                out.append(item)
            for key, table in sorted(dst_names.items()):
                if key in names:
                    continue
                kind = kind_of(table)
                relation = 'materialized view' if kind == 'matview' else 'table'
                if self.preexisting(_address(relation, *key)):
                    self.notes.append('%s.%s.%s: on the destination only, where it was before the task started (the '
                                      "destination's own); not compared" % (dbname, *key))
                    continue
                item = _item(dbname, kind, key[0], key[1], 'extra',
                             '%s %s.%s exists on the destination but not on the source' % (relation, *key))
                self.count(kind, 'extra')
                out.append(item)
        if compared:
            tables = [t for t, _k in compared]
            kinds = {id(t): k for t, k in compared}
            results = compare_mod.compare_tables(self.source, self.destination, dbname, tables, mode=self.mode,
                                                 jobs=self.jobs)
            for table, result in zip(tables, results):
                result['kind'] = kinds[id(table)]
                result['name'] = table.name
                self.count(result['kind'], result['result'])
                out.append(result)
        return out

    # -- definitions ---------------------------------------------------------------------------------------------
    def definitions(self, src, dst):
        dbname = self.dbname
        cross_major = src.major != dst.major
        for kind in ('column', 'index', 'constraint', 'trigger', 'view', 'function', 'sequence_parameters'):
            ours, theirs = src.defs[kind], dst.defs[kind]
            for key in sorted(set(ours) | set(theirs), key=lambda k: tuple(x or '' for x in k)):
                schema_name, first, second = key
                table, name = (first, second) if second is not None else (None, first)
                label = '%s.%s' % (schema_name, first) + ('.%s' % second if second is not None else '')
                if key not in theirs:
                    self.add(_item(dbname, kind, schema_name, name, 'missing', '%s %s is missing on the destination'
                                   % (kind.replace('_', ' '), label), table=table, source=_short(ours[key][0])))
                    continue
                if key not in ours:
                    if kind in ('view', 'function', 'sequence_parameters'):
                        address = (src.function_addresses.get(key) or dst.function_addresses.get(key)
                                   if kind == 'function' else None)
                        if address is None:
                            relkind = {'view': 'view', 'sequence_parameters': 'sequence'}[kind]
                            address = _address(relkind, schema_name, first)
                        if self.preexisting(address) or (kind == 'view' and self.preexisting(
                                _address('materialized view', schema_name, first))):
                            continue
                    self.add(_item(dbname, kind, schema_name, name, 'extra', '%s %s exists on the destination only'
                                   % (kind.replace('_', ' '), label), table=table, destination=_short(theirs[key][0])))
                    continue
                (src_text, src_fallback), (dst_text, dst_fallback) = ours[key], theirs[key]
                if src_text == dst_text:
                    self.add(_item(dbname, kind, schema_name, name, 'match', '', table=table), listed=False)
                elif cross_major and src_fallback is not None and src_fallback == dst_fallback:
                    self.add(_item(dbname, kind, schema_name, name, 'match', '', table=table), listed=False)
                    self.notes.append('%s.%s %s: definition text differs between PostgreSQL %d and %d; compared by '
                                      'structure (%s), which is equal' % (
                                          dbname, label, kind, src.major, dst.major,
                                          'columns and the columns it reads' if kind == 'view' else
                                          'language, arguments, result, attributes and source text'))
                else:
                    self.add(_item(dbname, kind, schema_name, name, 'mismatch', '%s %s differs' % (
                        kind.replace('_', ' '), label), table=table, source=_short(src_text),
                        destination=_short(dst_text)))

    # -- sequences -----------------------------------------------------------------------------------------------
    def sequences(self, src_side, dst_side, src, dst):
        dbname = self.dbname
        names = list(self.scope.sequences)
        ours = src_side.sequence_values(src, names)
        theirs = dst_side.sequence_values(dst, names)
        for key in names:
            if key not in ours:
                continue        # dropped on the source since the scope was read
            if key not in theirs:
                item = _item(dbname, 'sequence', key[0], key[1], 'missing',
                             'sequence %s.%s exists on the source but not on the destination' % key)
            elif ours[key] != theirs[key]:
                item = _item(dbname, 'sequence', key[0], key[1], 'mismatch',
                             'sequence %s.%s differs: last_value %s, is_called %s on the source; last_value %s, '
                             'is_called %s on the destination' % (key + ours[key] + theirs[key]),
                             source={'last_value': ours[key][0], 'is_called': ours[key][1]},
                             destination={'last_value': theirs[key][0], 'is_called': theirs[key][1]})
            else:
                item = _item(dbname, 'sequence', key[0], key[1], 'match',
                             'last_value %s, is_called %s' % ours[key],
                             source={'last_value': ours[key][0], 'is_called': ours[key][1]})
            self.add(item)

    # -- large objects -------------------------------------------------------------------------------------------
    def large_objects(self, src, dst):
        if self.scope.large_objects is None:
            return
        dbname = self.dbname
        error = src.large_object_error and 'on the source: %s' % src.large_object_error or \
            dst.large_object_error and 'on the destination: %s' % dst.large_object_error
        if error:
            item = _item(dbname, 'large_object', None, 'large objects', 'error',
                         'large objects cannot be read %s' % error)
            self.count('large_object', 'error', max(1, len(self.scope.large_objects)))
            self.items.append(item)
            return
        ours, theirs = src.large_objects, dst.large_objects
        missing = sorted(set(ours) - set(theirs))
        extra = sorted(set(theirs) - set(ours))
        owners, data = [], []
        for oid in sorted(set(ours) & set(theirs)):
            if self.compare_owners and ours[oid][0] != theirs[oid][0]:
                owners.append(oid)
            if ours[oid][1:] != theirs[oid][1:]:
                data.append(oid)
        problems = []
        for what, oids in (('missing on the destination', missing), ('extra on the destination', extra),
                           ('with another owner', owners), ('with different data', data)):
            if oids:
                problems.append('%d %s (oid %s%s)' % (len(oids), what, ', '.join(str(o) for o in oids[:MAX_LISTED]),
                                                      ', ...' if len(oids) > MAX_LISTED else ''))
        bad = set(missing) | set(extra) | set(owners) | set(data)
        result = 'mismatch' if bad else 'match'
        checked = ['oids'] + (['owners'] if self.compare_owners else []) + (
            ['md5 of the data'] if self.mode == 'checksum' else [])
        message = ('%d large object(s) on the source, %d on the destination; %s' % (
            len(ours), len(theirs), '; '.join(problems) if problems else '%s match' % ', '.join(checked)))
        item = _item(dbname, 'large_object', None, 'large objects', result, message, source_count=len(ours),
                     destination_count=len(theirs), missing=missing[:MAX_LISTED], extra=extra[:MAX_LISTED],
                     different=sorted(set(owners) | set(data))[:MAX_LISTED])
        self.count('large_object', 'match', len(set(ours) - bad))
        self.count('large_object', 'mismatch', len(bad))
        self.items.append(item)

    # -- extensions ----------------------------------------------------------------------------------------------
    def extensions(self, src, dst):
        dbname = self.dbname
        for name in sorted(src.extensions):
            nsp, version = src.extensions[name]
            if name not in dst.extensions:
                self.add(_item(dbname, 'extension', nsp, name, 'missing',
                               'extension %s is missing on the destination' % name))
            elif dst.extensions[name][0] != nsp:
                self.add(_item(dbname, 'extension', nsp, name, 'mismatch', 'extension %s is in schema %s on the '
                               'source and %s on the destination' % (name, nsp, dst.extensions[name][0])))
            else:
                self.add(_item(dbname, 'extension', nsp, name, 'match', ''), listed=False)
                if dst.extensions[name][1] != version:
                    self.notes.append('%s: extension %s is version %s on the source and %s on the destination (each '
                                      'server installs its own default version)'
                                      % (dbname, name, version, dst.extensions[name][1]))
        for name in sorted(set(dst.extensions) - set(src.extensions)):
            self.notes.append('%s: extension %s exists on the destination only (not a difference of the data)'
                              % (dbname, name))


def _not_compared(scopes, mode, compare_owners):
    out = []
    if mode == 'count':
        out.append({'kind': 'rows', 'reason': 'compare: count compares row counts, not row contents (no checksum); '
                                              'use compare: checksum for a proof of every value'})
        if any(s.large_objects for s in scopes):
            out.append({'kind': 'large object data', 'reason': 'compare: count does not checksum large objects; '
                                                               'their oids and owners are compared'})
    if any(s.large_objects is None for s in scopes):
        out.append({'kind': 'large objects', 'reason': 'not in the scope of a task that selects tables (they belong '
                                                       'to the database, not to a table)'})
    if not compare_owners:
        out.append({'kind': 'owners', 'reason': 'roles are not migrated (migrate_roles is off): objects belong to '
                                                'the destination login'})
    left_out = ['%s.%s.%s' % ((s.dbname,) + tuple(t)) for s in scopes for t in s.left_out]
    if left_out:
        reason = 'without a replica identity, left out of the sync by replica_identity: exclude: %s' % ', '.join(left_out)
        out.append({'kind': 'tables left out', 'reason': reason})
    foreign = ['%s.%s.%s' % ((s.dbname,) + f) for s in scopes for f in s.foreign_tables]
    if foreign:
        out.append({'kind': 'foreign tables', 'reason': 'their rows live on another server: %s' % ', '.join(foreign)})
    out.append({'kind': 'other objects', 'reason': 'privileges, row security policies, rules other than views, '
                                                   'types and domains, comments, statistics objects and roles are '
                                                   'not compared'})
    return out


def summarize(items, counts, notes, not_compared):
    """The summary of a proof: totals over every kind (match, mismatch, error), the rows compared, counts per kind,
    what was not compared and why, notes, and one line of text saying all of it."""
    summary = {'tables': 0, 'match': 0, 'mismatch': 0, 'error': 0, 'rows': 0, 'kinds': {}, 'not_compared': not_compared,
               'notes': notes}
    for kind, plural in KINDS:
        entry = counts.get(kind, {'compared': 0, 'match': 0, 'mismatch': 0, 'error': 0})
        summary['kinds'][plural] = entry
        for key in ('match', 'mismatch', 'error'):
            summary[key] += entry[key]
    for item in items:
        if item.get('kind') in ('table', 'partition', 'matview'):
            summary['tables'] += 1
            summary['rows'] += item.get('source_rows') or 0
    parts = []
    for kind, plural in KINDS:
        entry = summary['kinds'][plural]
        if entry['compared']:
            bad = entry['mismatch'] + entry['error']
            parts.append('%d %s%s' % (entry['compared'], plural.replace('_', ' '), ' (%d differ)' % bad if bad else ''))
    verdict = 'all match' if not (summary['mismatch'] or summary['error']) else '%d differ, %d failed' % (
        summary['mismatch'], summary['error'])
    summary['text'] = '%s: %s (%d rows)' % (verdict, ', '.join(parts) or 'nothing in scope', summary['rows'])
    if not_compared:
        summary['text'] += '; not compared: %s' % ', '.join(n['kind'] for n in not_compared)
    return summary


def prove(source, destination, scopes, mode='checksum', jobs=4, existing=None, compare_owners=False):
    """Compare everything in `scopes` (scope.Scope, one per database) on source and destination.

    existing: {dbname: own_objects() addresses of a destination database that existed before the task, or None}
    (objects on the destination only that were there before are noted, not reported as differences).
    compare_owners: compare the owners of large objects (roles were migrated). Returns (items, summary): items are
    dicts with database, kind, schema, name, table, result ('match', 'mismatch', 'missing', 'extra', 'error'),
    message (and for relations the fields of compare.compare_tables); summary as summarize()."""
    if mode not in compare_mod.MODES:
        raise compare_mod.CompareError('mode must be one of %s, got %r' % (', '.join(compare_mod.MODES), mode))
    items, counts, notes = [], {}, []
    for scope_ in scopes:
        proof = _Database(source, destination, scope_, mode, jobs, (existing or {}).get(scope_.dbname), compare_owners)
        items.extend(proof.run())
        notes.extend(proof.notes)
        for kind, entry in proof.counts.items():
            total = counts.setdefault(kind, {'compared': 0, 'match': 0, 'mismatch': 0, 'error': 0})
            for key, value in entry.items():
                total[key] += value
    return items, summarize(items, counts, notes, _not_compared(scopes, mode, compare_owners))


def failed_items(items):
    """The items that make a proof fail."""
    return [i for i in items if i.get('result') in FAILED]


def describe(item):
    """One item as 'database kind schema.name' for a message."""
    name = item.get('name') or item.get('table')
    if item.get('kind') in ('column', 'index', 'constraint', 'trigger') and item.get('table'):
        name = '%s.%s' % (item['table'], name)
    qualified = '%s.%s' % (item['schema'], name) if item.get('schema') else name
    return '%s %s.%s (%s)' % (item.get('kind', 'table').replace('_', ' '), item['database'], qualified, item['result'])


def failure_message(items, summary):
    """The message of a proof that found differences: how many, and the first differing objects by name."""
    failed = failed_items(items)
    listed = ', '.join(describe(i) for i in failed[:MAX_LISTED * 2])
    if len(failed) > MAX_LISTED * 2:
        listed += ', and %d more' % (len(failed) - MAX_LISTED * 2)
    return 'data comparison found %d mismatch(es) and %d error(s): %s' % (summary['mismatch'], summary['error'], listed)
