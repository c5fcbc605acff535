"""What the source login may see and do: row-level security must never filter the copy or the comparison (they read
with row_security = off and fail instead, and verify says so first), and a finish login that cannot fence the source
is refused before anything is fenced (and verify says so first)."""

from __future__ import annotations

import pytest

from ansible_collections.pgdts.migration.plugins.module_utils import catalog, compare, copy as copy_mod
from ansible_collections.pgdts.migration.plugins.module_utils.connection import ServerSpec, connect
from tests.integration.verify_support import ROLE_PASSWORD, create_role, drop_role, recreate_database, verify

MIGRATE = 'pgdts.migration.pg_dts_migrate'
FINISH = 'pgdts.migration.pg_dts_finish'

RLS_TABLES = (
    'CREATE TABLE notes (id int PRIMARY KEY, owner text, body text)',
    "INSERT INTO notes SELECT g, CASE WHEN g % 10 = 0 THEN 'reader' ELSE 'someone' END, 'n' || g "
    "FROM generate_series(1, 100) g",
    'ALTER TABLE notes ENABLE ROW LEVEL SECURITY',
    'CREATE POLICY mine ON notes USING (owner = current_user)',
    'GRANT SELECT ON notes TO reader',
    # the owner itself is filtered here
    'CREATE TABLE forced (id int PRIMARY KEY, hidden boolean)',
    'INSERT INTO forced SELECT g, g % 2 = 0 FROM generate_series(1, 50) g',
    'ALTER TABLE forced OWNER TO reader',
    'ALTER TABLE forced ENABLE ROW LEVEL SECURITY',
    'ALTER TABLE forced FORCE ROW LEVEL SECURITY',
    'CREATE POLICY shown ON forced USING (NOT hidden)',
)


@pytest.fixture(scope='module')
def servers(module_pg_factory):
    return module_pg_factory('rsrc'), module_pg_factory('rdst')


def as_role(cluster, user, dbname='postgres'):
    return ServerSpec.from_options(cluster.spec(user=user, password=ROLE_PASSWORD, dbname=dbname), environ={})


@pytest.fixture
def rls(servers):
    """Database rls with the same tables, policies and rows on both servers, and a login role reader on both."""
    for cluster in servers:
        create_role(cluster, 'reader', 'REPLICATION')
        recreate_database(cluster, 'rls', *RLS_TABLES)
    yield servers
    for cluster in servers:
        with cluster.connect() as conn:
            conn.execute('DROP DATABASE IF EXISTS rls WITH (FORCE)')
        drop_role(cluster, 'reader')


def test_verify_fails_when_row_level_security_hides_rows(rls):
    src, dst = rls
    item = verify(src, dst, source_spec=as_role(src, 'reader'), databases=['rls'],
                  plugin='wal2json')['source.row_security']
    assert item['status'] == 'failed', item
    assert {(o['name'], o['forced']) for o in item['objects']} == {('notes', False), ('forced', True)}
    assert 'ALTER ROLE reader BYPASSRLS' in item['hint'] and 'NO FORCE ROW LEVEL SECURITY' in item['hint']
    assert verify(src, dst, databases=['rls'])['source.row_security']['status'] == 'pass'    # superuser
    src.execute('ALTER ROLE reader BYPASSRLS')
    assert verify(src, dst, source_spec=as_role(src, 'reader'), databases=['rls'],
                  plugin='wal2json')['source.row_security']['status'] == 'pass'


@pytest.mark.parametrize('reader', ['psql', 'psycopg'])
def test_copy_never_reads_a_filtered_table(rls, reader):
    """The login sees 10 of 100 rows of notes: the copy must fail, not copy 10 rows."""
    src, dst = rls
    source = as_role(src, 'reader', 'rls')
    assert src.value('SELECT count(*) FROM notes', dbname='rls') == 100
    with connect(source) as conn:
        assert conn.execute('SELECT count(*) FROM notes').fetchone()[0] == 10       # what RLS lets it see
        tables = [t for t in catalog.load_tables(conn, 'rls') if t.name == 'notes']
    dst.execute('TRUNCATE notes', dbname='rls')
    destination = ServerSpec.from_options(dst.spec(dbname='rls'), environ={})
    psql = src.bindir + '/psql' if reader == 'psql' else None
    copier = copy_mod.ParallelCopy(source, destination, 'rls', None, 1, psql=psql)
    with pytest.raises(copy_mod.CopyError, match='row-level security'):
        copier.run(copy_mod.plan_items(tables, {}, 1))
    assert dst.value('SELECT count(*) FROM notes', dbname='rls') == 0


@pytest.mark.parametrize('mode', ['checksum', 'count'])
def test_comparison_never_matches_filtered_rows(rls, mode):
    """The same login on both sides sees the same 10 rows of 100: that is no proof, the comparison must fail."""
    src, dst = rls
    dst.execute('DELETE FROM notes WHERE id = 1', dbname='rls')       # a row the login cannot see is missing
    source, destination = as_role(src, 'reader', 'rls'), as_role(dst, 'reader', 'rls')
    with connect(source) as conn:
        tables = [t for t in catalog.load_tables(conn, 'rls') if t.name == 'notes']
    result = compare.compare_tables(source, destination, 'rls', tables, mode=mode, jobs=2)[0]
    assert result['result'] == 'error', result
    assert 'row-level security' in result['message'], result


def test_finish_refuses_a_login_that_cannot_fence(servers, ansible, tmp_path):
    """A finish login that owns the database but may not end other roles' sessions: before, finish fenced the
    database, then failed on pg_terminate_backend with a traceback and left the source fenced."""
    src, dst = servers
    create_role(src, 'finisher', 'REPLICATION')
    recreate_database(src, 'fence_me', 'CREATE TABLE t (id int PRIMARY KEY)', 'INSERT INTO t VALUES (1), (2)',
                      'GRANT SELECT ON t TO finisher')
    src.execute('ALTER DATABASE fence_me OWNER TO finisher')
    try:
        args = {'name': 'fence_rights', 'source': src.spec(), 'destination': dst.spec(),
                'worker_dir': str(tmp_path / 'workers')}
        status, result = ansible.module(MIGRATE, dict(args, databases=['fence_me'], wait='synced', wait_timeout=300))
        assert status == 'changed', result.get('msg', result)
        weak = dict(args, source=src.spec(user='finisher', password=ROLE_PASSWORD))
        with src.connect('fence_me'):       # an application session of another role (postgres) on the database
            status, result = ansible.module(FINISH, weak)
            assert status == 'failed', result
            assert 'cannot fence' in result['msg'] and 'GRANT pg_signal_backend TO finisher;' in result['msg'], result
            assert 'Traceback' not in result['msg'] and 'nothing fenced' in result['msg']
            assert src.value("SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
                             "WHERE d.datname = 'fence_me'") == 0
            src.execute('INSERT INTO t VALUES (3)', dbname='fence_me')     # the source still takes writes
        assert result['task']['stage'] == 'sync'
        # verify says so beforehand, with the fix
        item = verify(src, dst, source_spec=as_role(src, 'finisher'), databases=['fence_me'],
                      plugin='wal2json')['source.fence_privilege']
        assert item['status'] == 'failed', item
        assert 'pg_signal_backend' in item['message'] and 'GRANT pg_signal_backend TO finisher;' in item['hint']
        src.execute('ALTER DATABASE fence_me OWNER TO postgres')
        item = verify(src, dst, source_spec=as_role(src, 'finisher'), databases=['fence_me'],
                      plugin='wal2json')['source.fence_privilege']
        assert 'ALTER DATABASE fence_me OWNER TO finisher;' in item['hint'], item
        src.execute('ALTER DATABASE fence_me OWNER TO finisher')
        src.execute('GRANT pg_signal_backend TO finisher')
        assert verify(src, dst, source_spec=as_role(src, 'finisher'), databases=['fence_me'],
                      plugin='wal2json')['source.fence_privilege']['status'] == 'pass'
        status, result = ansible.module(FINISH, args)
        assert status == 'changed', result.get('msg', result)
        assert dst.value('SELECT count(*) FROM t', dbname='fence_me') == 3
    finally:
        with src.connect() as conn:
            conn.execute('DROP DATABASE IF EXISTS fence_me WITH (FORCE)')
        drop_role(src, 'finisher')
