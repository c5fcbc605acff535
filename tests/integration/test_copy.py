"""Schema and full copy engine on real servers: one exported snapshot, parallel jobs, split tables."""

from __future__ import annotations

import pytest

from ansible_collections.pgdts.migration.plugins.module_utils import catalog, copy as copy_mod, schema
from ansible_collections.pgdts.migration.plugins.module_utils.connection import ServerSpec, connect
from tests.harness.data import assert_same_contents, create_tricky_database, sequence_values


@pytest.fixture(scope='module')
def pair(module_pg_factory):
    return module_pg_factory('csrc'), module_pg_factory('cdst')


def spec(cluster):
    return ServerSpec.from_options(cluster.spec(), environ={})


def export_snapshot(source, dbname, slot):
    repl = connect(source, dbname, replication='database')
    row = repl.execute('CREATE_REPLICATION_SLOT %s LOGICAL pgoutput (SNAPSHOT \'export\')' % slot).fetchone()
    return repl, row[2], row[1]


def migrate_database(src, dst, dbname, tmp_path, jobs=2, split_bytes=copy_mod.DEFAULT_SPLIT_BYTES, after_snapshot=None,
                     psql=None):
    source, destination = spec(src), spec(dst)
    repl, snapshot, _lsn = export_snapshot(source, dbname, 'copytest_%s' % dbname)
    try:
        if after_snapshot:
            after_snapshot()
        with connect(source, dbname) as conn:
            tables = catalog.load_tables(conn, dbname)
            pages = copy_mod.table_pages(conn, tables)
        with connect(destination) as admin:
            with connect(source) as src_admin:
                schema.ensure_database(admin, dbname, schema.database_properties(src_admin, dbname))
        dump = str(tmp_path / ('%s.dump' % dbname))
        schema.dump_schema(source, dbname, snapshot, [], dump)
        schema.restore_section(destination, dbname, dump, 'pre-data')
        done = []
        copier = copy_mod.ParallelCopy(source, destination, dbname, snapshot, jobs,
                                       on_table_done=lambda t, rows, nbytes: done.append((t.qualified, rows)),
                                       psql=psql)
        copier.run(copy_mod.plan_items(tables, pages, jobs, split_bytes=split_bytes))
        schema.restore_section(destination, dbname, dump, 'post-data', jobs=jobs)
        schema.sync_sequences(source, destination, dbname)
        return dict(done)
    finally:
        repl.close()
        with connect(source, dbname) as conn:
            conn.execute("SELECT pg_drop_replication_slot('copytest_%s')" % dbname)


@pytest.mark.parametrize('reader', ['psycopg', 'psql'])
def test_tricky_schema_copied_exactly(pair, tmp_path, reader, monkeypatch):
    src, dst = pair
    dbname = 'tricky_%s' % reader
    psql = None
    if reader == 'psql':
        monkeypatch.setattr(copy_mod, 'STREAM_READER_BYTES', 0)
        psql = schema.client_program('psql')
    create_tricky_database(src, dbname)
    done = migrate_database(src, dst, dbname, tmp_path, psql=psql)
    assert done['public.kinds'] == 4
    assert done['Sales Dept.Order Lines'] == 200
    assert_same_contents(src, dst, dbname)
    assert sequence_values(src, dbname) == sequence_values(dst, dbname)
    # the generated column is computed on the destination
    assert dst.value('SELECT sum(total) FROM "Sales Dept"."Order Lines"', dbname=dbname) == \
        src.value('SELECT sum(total) FROM "Sales Dept"."Order Lines"', dbname=dbname)


def test_rows_committed_after_the_snapshot_are_not_copied(pair, tmp_path):
    src, dst = pair
    src.create_database('snap')
    src.execute('CREATE TABLE t (id int PRIMARY KEY, v text)', dbname='snap')
    src.execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 1000) g", dbname='snap')

    def write_after():
        src.execute("INSERT INTO t VALUES (5000, 'late')", dbname='snap')
        src.execute('DELETE FROM t WHERE id <= 10', dbname='snap')

    migrate_database(src, dst, 'snap', tmp_path, after_snapshot=write_after)
    assert dst.value('SELECT count(*) FROM t', dbname='snap') == 1000
    assert dst.value('SELECT count(*) FROM t WHERE id = 5000', dbname='snap') == 0


@pytest.mark.parametrize('reader', ['psycopg', 'psql'])
def test_large_table_split_into_ranges(pair, tmp_path, reader, monkeypatch):
    src, dst = pair
    dbname = 'big_%s' % reader
    if reader == 'psql':
        monkeypatch.setattr(copy_mod, 'STREAM_READER_BYTES', 0)
    src.create_database(dbname)
    src.execute('CREATE TABLE wide (id bigint PRIMARY KEY, pad text)', dbname=dbname)
    src.execute("INSERT INTO wide SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 60000) g", dbname=dbname)
    src.execute('VACUUM ANALYZE wide', dbname=dbname)
    with connect(spec(src), dbname) as conn:
        tables = catalog.load_tables(conn, dbname)
        items = copy_mod.plan_items(tables, copy_mod.table_pages(conn, tables), 2, split_bytes=1024 * 1024)
    assert len(items) > 2, 'the table should have been split'
    psql = schema.client_program('psql') if reader == 'psql' else None
    done = migrate_database(src, dst, dbname, tmp_path, split_bytes=1024 * 1024, psql=psql)
    assert done['public.wide'] == 60000
    assert_same_contents(src, dst, dbname)
