"""Names that SQL text, libpq and the decoding plugins treat specially: '%' (psycopg placeholders), '=' and URIs
(libpq connection strings), ',' '.' '\\' and spaces (wal2json's add-tables list), quotes, capitals and non-ASCII.
The whole pipeline - verify, migrate, sync, finish with a checksum or a count comparison - must carry them, with
both decoding plugins, and no client program may be pointed anywhere by a database name."""

from __future__ import annotations

import pytest
from psycopg import sql

from tests.harness.data import assert_same_contents, sequence_values

VERIFY = 'pgdts.migration.pg_dts_verify'
MIGRATE = 'pgdts.migration.pg_dts_migrate'
FINISH = 'pgdts.migration.pg_dts_finish'

SCHEMA = 'Sch.em%a "Ü"'
TABLES = ['pct%tab', 'pct%%s', 'a=b, c\\d.e', 'Ünï Côdé "Q"\'s', 'x*.y', 'tab\there']
COLUMN = 'Val%s "ü"=,.\\'


@pytest.fixture(scope='module')
def servers(module_pg_factory):
    return module_pg_factory('nsrc'), module_pg_factory('ndst')


def ident(*names):
    return sql.Identifier(*names)


def build(cluster, dbname):
    cluster.create_database(dbname)
    with cluster.connect(dbname) as conn:
        conn.execute(sql.SQL('CREATE SCHEMA {}').format(ident(SCHEMA)))
        for number, table in enumerate(TABLES):
            schema = SCHEMA if number % 2 else 'public'
            conn.execute(sql.SQL('CREATE TABLE {} (id serial PRIMARY KEY, {} text, n numeric)').format(
                ident(schema, table), ident(COLUMN)))
            conn.execute(sql.SQL("INSERT INTO {} ({}, n) SELECT 'v%' || g, g / 7.0 FROM generate_series(1, 300) g")
                         .format(ident(schema, table), ident(COLUMN)))
        # a table without a key: compared by a whole-table checksum, the identity is every column
        conn.execute(sql.SQL('CREATE TABLE {} ({} text, n int)').format(ident(SCHEMA, 'no%key'), ident(COLUMN)))
        conn.execute(sql.SQL('ALTER TABLE {} REPLICA IDENTITY FULL').format(ident(SCHEMA, 'no%key')))
        conn.execute(sql.SQL("INSERT INTO {} SELECT 'k' || g, g FROM generate_series(1, 100) g").format(
            ident(SCHEMA, 'no%key')))


def change(cluster, dbname):
    with cluster.connect(dbname) as conn:
        for number, table in enumerate(TABLES):
            target = ident(SCHEMA if number % 2 else 'public', table)
            conn.execute(sql.SQL("INSERT INTO {} ({}, n) VALUES ('new %s %t', 1.5)").format(target, ident(COLUMN)))
            conn.execute(sql.SQL("UPDATE {} SET {} = 'upd%' WHERE id % 5 = 0").format(target, ident(COLUMN)))
            conn.execute(sql.SQL('DELETE FROM {} WHERE id < 10').format(target))
        conn.execute(sql.SQL("UPDATE {} SET n = -n WHERE n % 3 = 0").format(ident(SCHEMA, 'no%key')))
        conn.execute(sql.SQL("DELETE FROM {} WHERE n < 5").format(ident(SCHEMA, 'no%key')))


@pytest.mark.parametrize('plugin, compare', [('pgoutput', 'checksum'), ('wal2json', 'count')])
def test_special_names_through_the_whole_pipeline(servers, ansible, tmp_path, plugin, compare):
    src, dst = servers
    dbname = 'Db %s=1, "Ü" %s\\x' % (plugin, '%s')
    build(src, dbname)
    args = {'name': 'names_%s' % plugin, 'source': src.spec(), 'destination': dst.spec(),
            'worker_dir': str(tmp_path / 'workers'), 'databases': [dbname]}
    verify = {k: args[k] for k in ('name', 'source', 'destination', 'databases')}
    status, result = ansible.module(VERIFY, dict(verify, plugin=plugin))
    assert status == 'ok', result.get('msg') or [(c['id'], c['message']) for c in result.get('checks', []) if c['status'] == 'failed']
    status, result = ansible.module(MIGRATE, dict(args, plugin=plugin, jobs=2, wait='synced', wait_timeout=300))
    assert status == 'changed', result.get('msg', result)
    change(src, dbname)
    status, result = ansible.module(MIGRATE, dict(args, plugin=plugin, wait='synced', wait_timeout=300))
    assert status == 'ok', result.get('msg', result)
    finish = {k: args[k] for k in ('name', 'source', 'destination', 'worker_dir')}
    status, result = ansible.module(FINISH, dict(finish, compare=compare, keep_source_fence=False))
    assert status == 'changed', result.get('msg', result)
    summary = result['comparison_summary']
    assert (summary['tables'], summary['mismatch'], summary['error']) == (len(TABLES) + 1, 0, 0), result['comparison']
    tables = [c for c in result['comparison'] if c.get('table') in TABLES + ['no%key']]
    assert len(tables) == len(TABLES) + 1 and all(c['result'] == 'match' for c in tables), tables
    assert_same_contents(src, dst, dbname)
    assert sequence_values(src, dbname) == sequence_values(dst, dbname)
    assert src.value('SELECT count(*) FROM pg_replication_slots') == 0


def test_database_names_are_never_read_as_connection_strings(servers, module_pg_factory, ansible, tmp_path):
    """Databases named like connection strings arrive as such; a name that would point a client program at a live
    third server (with the task's credentials, which that server accepts) sends nothing there."""
    src, dst = servers
    decoy = module_pg_factory('ndecoy', settings={'log_connections': 'on', 'log_min_messages': 'info'})
    decoy.create_database('x')
    names = ['a=b', 'postgresql://127.0.0.1:1/x', 'host=127.0.0.1 port=%d dbname=x' % decoy.port]
    for dbname in names:
        src.create_database(dbname)
        with src.connect(dbname) as conn:
            conn.execute('CREATE TABLE items (id int PRIMARY KEY, v text)')
            conn.execute('CREATE INDEX items_v ON items (v)')
            conn.execute("INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 200) g")
    args = {'name': 'conninfo_names', 'source': src.spec(), 'destination': dst.spec(),
            'worker_dir': str(tmp_path / 'workers'), 'databases': names}
    status, result = ansible.module(MIGRATE, dict(args, jobs=2, wait='synced', wait_timeout=300))
    assert status == 'changed', result.get('msg', result)
    for dbname in names:
        src.execute("INSERT INTO items VALUES (1000, 'later')", dbname=dbname)
    finish = {k: args[k] for k in ('name', 'source', 'destination', 'worker_dir')}
    status, result = ansible.module(FINISH, dict(finish, keep_source_fence=False))
    assert status == 'changed', result.get('msg', result)
    assert result['comparison_summary']['mismatch'] == 0 and result['comparison_summary']['tables'] == 3
    for dbname in names:
        assert_same_contents(src, dst, dbname)
        assert dst.value("SELECT count(*) FROM pg_indexes WHERE indexname = 'items_v'", dbname=dbname) == 1
    # nothing reached the decoy: no login to its database x (read before this test's own look into it), no table
    with open(decoy.logfile, encoding='utf-8', errors='replace') as handle:
        log = handle.read()
    assert 'connection authorized: user=postgres database=postgres' in log    # the log does record logins
    assert 'database=x' not in log, [line for line in log.splitlines() if 'database=x' in line]
    assert decoy.value("SELECT count(*) FROM pg_class WHERE relname = 'items'", dbname='x') == 0
