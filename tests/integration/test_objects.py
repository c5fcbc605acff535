"""Objects beyond table rows that a task must carry: materialized views (populated, in dependency order), sequences
that the selected tables use wherever they live, and large objects (copied with their oids, owners and ACLs, and
brought up to date under the write fence at finish)."""

from __future__ import annotations

import pytest

from tests.harness.data import assert_same_contents


@pytest.fixture(scope='module')
def servers(module_pg_factory):
    return module_pg_factory('osrc'), module_pg_factory('odst')


def common(servers, tmp_path, name):
    """The arguments pg_dts_migrate and pg_dts_finish share."""
    src, dst = servers
    return {'name': name, 'source': src.spec(), 'destination': dst.spec(), 'worker_dir': str(tmp_path / 'workers'),
            'jobs': 2}


def migrate(ansible, args, databases, **extra):
    status, result = ansible.module('pgdts.migration.pg_dts_migrate',
                                    dict(args, databases=databases, wait='synced', wait_timeout=300, **extra))
    assert status == 'changed', result
    assert result['task']['stage'] == 'sync', result['task']
    return result


def finish(ansible, args):
    status, result = ansible.module('pgdts.migration.pg_dts_finish', args)
    assert status == 'changed', result
    assert result['task']['stage'] == 'finished'
    assert result['comparison_summary']['mismatch'] == 0, result['comparison']
    return result


def unfence(src, dbname):
    src.execute('ALTER DATABASE %s RESET default_transaction_read_only' % dbname)


def rows(cluster, dbname, query):
    with cluster.connect(dbname) as conn:
        return [tuple(r) for r in conn.execute(query).fetchall()]


# ---------------------------------------------------------------------------------------------------------------
# 1. materialized views

MATVIEW_SCHEMA = '''
CREATE TABLE sales (id int PRIMARY KEY, region text NOT NULL, amount numeric NOT NULL);
INSERT INTO sales SELECT g, 'r' || (g % 5), g * 1.5 FROM generate_series(1, 2000) g;
CREATE SCHEMA "Rep Ü";
CREATE MATERIALIZED VIEW "Rep Ü"."totals %" AS SELECT region, sum(amount) AS total, count(*) AS n FROM sales GROUP BY region;
CREATE UNIQUE INDEX totals_region ON "Rep Ü"."totals %" (region);
-- a view over a matview, and a matview over that view (its refresh must come after the first one)
CREATE VIEW big_regions AS SELECT region, total FROM "Rep Ü"."totals %" WHERE n > 10;
CREATE MATERIALIZED VIEW a_top AS SELECT region, total FROM big_regions ORDER BY total DESC LIMIT 3;
-- a matview on a matview directly (its name sorts before the one it reads)
CREATE MATERIALIZED VIEW a_grand AS SELECT sum(total) AS grand FROM "Rep Ü"."totals %";
-- never populated on the source: it stays so
CREATE MATERIALIZED VIEW never_filled AS SELECT count(*) AS n FROM sales WITH NO DATA;
'''

MATVIEWS = (('Rep Ü', 'totals %'), ('public', 'a_top'), ('public', 'a_grand'))


def matview_rows(cluster, dbname):
    out = {}
    with cluster.connect(dbname) as conn:
        for schema, name in MATVIEWS:
            out[(schema, name)] = [r[0] for r in conn.execute(
                'SELECT m::text FROM "%s"."%s" m ORDER BY 1' % (schema, name.replace('"', '""'))).fetchall()]
    return out


def populated(cluster, dbname):
    return dict(rows(cluster, dbname, "SELECT relname, relispopulated FROM pg_class WHERE relkind = 'm' ORDER BY 1"))


@pytest.mark.parametrize('plugin', ['pgoutput', 'wal2json'])
def test_materialized_views_are_populated_after_copy_and_refreshed_at_finish(servers, ansible, tmp_path, plugin):
    src, dst = servers
    dbname = 'mv_%s' % plugin
    src.create_database(dbname)
    with src.connect(dbname) as conn:
        conn.execute(MATVIEW_SCHEMA)
    args = common(servers, tmp_path, 'mv_%s' % plugin)
    migrate(ansible, args, [dbname], plugin=plugin)
    # after the copy: every matview that is populated on the source can be read on the destination
    assert matview_rows(dst, dbname) == matview_rows(src, dbname)
    assert populated(dst, dbname) == populated(src, dbname) == {
        'a_grand': True, 'a_top': True, 'never_filled': False, 'totals %': True}
    # rows change during the sync, and the application refreshes its matviews on the source
    with src.connect(dbname) as conn:
        conn.execute("INSERT INTO sales SELECT g, 'r9', g FROM generate_series(2001, 2100) g")
        conn.execute("UPDATE sales SET amount = amount * 2 WHERE region = 'r1'")
        conn.execute("DELETE FROM sales WHERE region = 'r2'")
        conn.execute('REFRESH MATERIALIZED VIEW "Rep Ü"."totals %"')
        conn.execute('REFRESH MATERIALIZED VIEW a_top')
        conn.execute('REFRESH MATERIALIZED VIEW a_grand')
    before = matview_rows(src, dbname)
    assert before != matview_rows(dst, dbname)          # the sync itself does not carry matview contents
    result = finish(ansible, args)
    try:
        assert matview_rows(dst, dbname) == before
        assert populated(dst, dbname)['never_filled'] is False
        assert_same_contents(src, dst, dbname)
        refreshed = [(m['schema'], m['name']) for m in result['materialized_views'] if m['database'] == dbname]
        # in dependency order: "totals %" before what reads it, directly or through the view
        assert refreshed.index(('Rep Ü', 'totals %')) < refreshed.index(('public', 'a_top'))
        assert refreshed.index(('Rep Ü', 'totals %')) < refreshed.index(('public', 'a_grand'))
        assert ('public', 'never_filled') not in refreshed
        # the destination's application can read and refresh them
        dst.execute('REFRESH MATERIALIZED VIEW CONCURRENTLY "Rep Ü"."totals %"', dbname=dbname)
    finally:
        unfence(src, dbname)


# ---------------------------------------------------------------------------------------------------------------
# 4. sequences in a schema that holds no selected table

SEQUENCE_SCHEMA = '''
CREATE SCHEMA ids;
CREATE SEQUENCE ids.order_seq START 1000;
CREATE SEQUENCE ids.line_seq;
CREATE SEQUENCE ids.unused_seq START 7;
CREATE TABLE public.orders (id bigint PRIMARY KEY DEFAULT nextval('ids.order_seq'), line bigint, note text,
                            extra bigint);
ALTER TABLE public.orders ALTER COLUMN line SET DEFAULT nextval('ids.line_seq');
-- OWNED BY only (a sequence can be owned by a table of its own schema only)
CREATE SEQUENCE public.extra_seq OWNED BY public.orders.extra;
SELECT setval('public.extra_seq', 33);
CREATE TABLE public.ident (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, v text);
CREATE TABLE public.other (id serial PRIMARY KEY);
INSERT INTO public.orders (note) SELECT 'o' || g FROM generate_series(1, 300) g;
INSERT INTO public.ident (v) SELECT 'i' || g FROM generate_series(1, 30) g;
SELECT setval('ids.unused_seq', 77);
'''


def next_values(cluster, dbname, names):
    with cluster.connect(dbname) as conn:
        return {n: conn.execute("SELECT last_value FROM %s" % n).fetchone()[0] for n in names}


@pytest.mark.parametrize('selection', ['tables', 'whole'])
def test_sequences_of_the_selected_tables_are_set_wherever_they_live(servers, ansible, tmp_path, selection):
    src, dst = servers
    dbname = 'seq_%s' % selection
    src.create_database(dbname)
    with src.connect(dbname) as conn:
        conn.execute(SEQUENCE_SCHEMA)
    extra = {'tables': ['public.orders', 'public.ident']} if selection == 'tables' else {}
    args = common(servers, tmp_path, 'seq_%s' % selection)
    migrate(ansible, args, [dbname], **extra)
    used = ['ids.order_seq', 'ids.line_seq', 'public.ident_id_seq', 'public.extra_seq']
    # at the copy: already set
    assert next_values(dst, dbname, used) == next_values(src, dbname, used)
    with src.connect(dbname) as conn:
        conn.execute("INSERT INTO public.orders (note) SELECT 'late' || g FROM generate_series(1, 50) g")
        conn.execute("INSERT INTO public.ident (v) VALUES ('late')")
        conn.execute("SELECT nextval('ids.order_seq') FROM generate_series(1, 25)")
        conn.execute("SELECT setval('ids.unused_seq', 500)")
        conn.execute("SELECT setval('public.extra_seq', 66)")
    result = finish(ansible, args)
    try:
        assert next_values(dst, dbname, used) == next_values(src, dbname, used)
        set_names = {'%s.%s' % (s['schema'], s['sequence']) for s in result['sequences'] if s['database'] == dbname}
        assert set(used) <= set_names
        # what the application does next on the destination does not collide with copied rows
        with dst.connect(dbname) as conn:
            conn.execute("INSERT INTO public.orders (note) VALUES ('after cutover')")
            conn.execute("INSERT INTO public.ident (v) VALUES ('after cutover')")
            assert conn.execute("SELECT nextval('ids.order_seq')").fetchone()[0] > \
                src.value("SELECT last_value FROM ids.order_seq", dbname=dbname)
        if selection == 'whole':
            # every sequence of the database
            assert {'ids.unused_seq', 'public.other_id_seq'} <= set_names
            assert next_values(dst, dbname, ['ids.unused_seq']) == {'ids.unused_seq': 500}
        else:
            # a sequence no selected table uses is not part of a table selection, not even in a schema that has one
            assert not set_names & {'ids.unused_seq', 'public.other_id_seq'}
            assert dst.value("SELECT count(*) FROM pg_class WHERE relname = 'unused_seq'", dbname=dbname) == 0
    finally:
        unfence(src, dbname)


# ---------------------------------------------------------------------------------------------------------------
# 5. large objects

LO_SCHEMA = '''
CREATE TABLE docs (id int PRIMARY KEY, title text, content oid);
INSERT INTO docs VALUES
  (1, 'one', lo_from_bytea(50001, 'first document')),
  (2, 'two', lo_from_bytea(50002, decode(repeat('00ff7f', 100000), 'hex'))),
  (3, 'three', lo_from_bytea(50003, 'third')),
  (4, 'four', lo_from_bytea(50004, '')),
  (5, 'five', lo_from_bytea(50005, 'fifth'));
ALTER LARGE OBJECT 50002 OWNER TO lo_owner;
GRANT SELECT ON LARGE OBJECT 50002 TO lo_reader;
GRANT SELECT, UPDATE ON LARGE OBJECT 50005 TO lo_reader;
'''

LO_STATE = '''
SELECT m.oid::bigint, pg_get_userbyid(m.lomowner), m.lomacl::text, md5(lo_get(m.oid))
  FROM pg_largeobject_metadata m ORDER BY 1
'''


@pytest.mark.parametrize('plugin', ['wal2json'])
def test_large_objects_are_copied_and_brought_up_to_date_at_finish(servers, ansible, tmp_path, plugin):
    src, dst = servers
    dbname = 'lo_%s' % plugin
    for role in ('lo_owner', 'lo_reader'):
        src.execute('DO $$BEGIN CREATE ROLE %s; EXCEPTION WHEN duplicate_object THEN NULL; END$$' % role)
    src.create_database(dbname)
    with src.connect(dbname) as conn:
        conn.execute(LO_SCHEMA)
    args = common(servers, tmp_path, 'lo_%s' % plugin)
    migrate(ansible, args, [dbname], plugin=plugin, migrate_roles=True)
    # the copy: same oids, data, owners and privileges
    assert len(rows(src, dbname, LO_STATE)) == 5
    assert rows(dst, dbname, LO_STATE) == rows(src, dbname, LO_STATE)
    # during the sync: one changed, one created, one unlinked, one given another grant
    with src.connect(dbname) as conn:
        conn.execute("SELECT lo_put(50001, 6, 'DOCUMENT changed')")
        conn.execute("INSERT INTO docs VALUES (6, 'six', lo_from_bytea(50006, 'created during the sync'))")
        conn.execute('SELECT lo_unlink(50003)')
        conn.execute('UPDATE docs SET content = NULL WHERE id = 3')
        conn.execute('GRANT UPDATE ON LARGE OBJECT 50002 TO lo_reader')
    expected = rows(src, dbname, LO_STATE)
    assert [r[0] for r in expected] == [50001, 50002, 50004, 50005, 50006]
    assert rows(dst, dbname, LO_STATE) != expected
    result = finish(ansible, args)
    try:
        assert rows(dst, dbname, LO_STATE) == expected
        assert_same_contents(src, dst, dbname)
        [summary] = [lo for lo in result['large_objects'] if lo['database'] == dbname]
        assert summary == {'database': dbname, 'source': 5, 'created': 1, 'dropped': 1, 'rewritten': 1,
                           'privileges_set': 1, 'kept': 0}
        # the application reads them on the destination through the references of docs
        assert dst.value("SELECT convert_from(lo_get(content), 'UTF8') FROM docs WHERE id = 6", dbname=dbname) == \
            'created during the sync'
    finally:
        unfence(src, dbname)


def test_large_object_pass_completes_a_partial_copy_and_a_second_pass_changes_nothing(servers):
    """The pass that a resumed copy and finish run: it completes what an interrupted copy left (missing, cut short),
    leaves the destination's own objects in a database the task did not create, and is idempotent."""
    from ansible_collections.pgdts.migration.plugins.module_utils import large_objects
    from ansible_collections.pgdts.migration.plugins.module_utils.connection import ServerSpec
    src, dst = servers
    dbname = 'lo_pass'
    for cluster in servers:
        cluster.create_database(dbname)
    with src.connect(dbname) as conn:
        conn.execute("SELECT lo_from_bytea(60000 + g, convert_to(repeat('x' || g, 1000 * g), 'UTF8')) "
                     "FROM generate_series(1, 20) g")
    with dst.connect(dbname) as conn:
        # an interrupted copy: some objects there, one cut short; and one of the destination's own
        conn.execute("SELECT lo_from_bytea(60000 + g, convert_to(repeat('x' || g, 1000 * g), 'UTF8')) "
                     "FROM generate_series(1, 8) g")
        conn.execute("SELECT lo_from_bytea(60009, 'cut')")
        conn.execute("SELECT lo_from_bytea(70000, 'the destination''s own')")
    source, destination = ServerSpec.from_dict(src.spec()), ServerSpec.from_dict(dst.spec())
    first = large_objects.sync_large_objects(source, destination, dbname, drop_extra=False)
    assert first == {'source': 20, 'created': 11, 'rewritten': 1, 'dropped': 0, 'privileges_set': 0, 'kept': 1}
    state = 'SELECT oid::bigint, md5(lo_get(oid)) FROM pg_largeobject_metadata WHERE oid < 70000 ORDER BY 1'
    assert rows(dst, dbname, state) == rows(src, dbname, state)
    assert dst.value('SELECT count(*) FROM pg_largeobject_metadata WHERE oid = 70000', dbname=dbname) == 1
    again = large_objects.sync_large_objects(source, destination, dbname, drop_extra=False)
    assert again == {'source': 20, 'created': 0, 'rewritten': 0, 'dropped': 0, 'privileges_set': 0, 'kept': 1}
    # in a database the task created, what the source does not have goes
    third = large_objects.sync_large_objects(source, destination, dbname, drop_extra=True)
    assert third['dropped'] == 1
    assert rows(dst, dbname, 'SELECT oid::bigint FROM pg_largeobject_metadata ORDER BY 1') == \
        rows(src, dbname, 'SELECT oid::bigint FROM pg_largeobject_metadata ORDER BY 1')
