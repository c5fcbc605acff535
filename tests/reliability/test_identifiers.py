"""Identifiers that need quoting - double and single quotes, spaces, upper case, non-ASCII, SQL fragments - in
database, schema, table, column, index, sequence and role names: the whole pipeline works with them, and none of them
is executed as SQL (canary tables on both servers survive)."""

from __future__ import annotations

import pytest
from psycopg import sql

from tests.harness.data import database_contents, sequence_values
from tests.reliability.support import FINISH, INFO, MIGRATE, VERIFY, create_login_role, task_slots

DB = 'Shop "Ü" O\'Neil; DROP DATABASE postgres;--'
DB2 = 'Ünï "Two"\'; DROP TABLE canary;--'
SCHEMA = 'Sales "Q1" Ä\'s; DROP TABLE canary;--'
TABLE = 'Order\'s "Lines" Ö; DROP TABLE canary'
UPPER = 'UPPER Case Tab'
EXCLUDED = 'excluded "one"'
SRC_ROLE = 'Mig "Rö\'le"; DROP ROLE postgres'
DST_ROLE = 'Dst "Ädmin" x'
PASSWORD = 'quoted-Names-5521'


def ident(*names):
    return sql.Identifier(*names)


def build(cluster, dbname):
    cluster.create_database(dbname)
    with cluster.connect(dbname) as conn:
        conn.execute(sql.SQL('CREATE SCHEMA {}').format(ident(SCHEMA)))
        conn.execute(sql.SQL('CREATE TABLE {} ({} integer PRIMARY KEY, {} text, "Ünï Côl" numeric)').format(
            ident(SCHEMA, TABLE), ident('Key" Ö'), ident("it's")))
        conn.execute(sql.SQL('CREATE INDEX {} ON {} ({})').format(ident('idx "Ü" 1'), ident(SCHEMA, TABLE),
                                                                  ident("it's")))
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, 'v' || g || '''\"', g / 3.0 FROM generate_series(1, 500) g")
                     .format(ident(SCHEMA, TABLE)))
        conn.execute(sql.SQL('CREATE TABLE {} (id serial PRIMARY KEY, "MixedCase" text)').format(
            ident('public', UPPER)))
        conn.execute(sql.SQL("INSERT INTO {} (\"MixedCase\") SELECT 'm' || g FROM generate_series(1, 50) g").format(
            ident('public', UPPER)))
        conn.execute(sql.SQL('CREATE TABLE {} (id int PRIMARY KEY)').format(ident('public', EXCLUDED)))
        conn.execute(sql.SQL('INSERT INTO {} VALUES (1)').format(ident('public', EXCLUDED)))
        conn.execute('CREATE TABLE canary (alive boolean)')
        conn.execute('INSERT INTO canary VALUES (true)')


def canaries_alive(cluster, databases):
    for dbname in databases:
        assert cluster.value('SELECT count(*) FROM canary', dbname=dbname) == 1, 'canary gone in %r' % dbname


@pytest.fixture(scope='module')
def servers(module_pg_factory):
    src, dst = module_pg_factory('qsrc'), module_pg_factory('qdst')
    for cluster in (src, dst):
        cluster.execute('CREATE TABLE canary (alive boolean)')
        cluster.execute('INSERT INTO canary VALUES (true)')
    create_login_role(src, SRC_ROLE, PASSWORD, 'SUPERUSER')
    create_login_role(dst, DST_ROLE, PASSWORD, 'SUPERUSER')
    return src, dst


@pytest.mark.slow
def test_quoted_names_everywhere(servers, ansible, tmp_path):
    src, dst = servers
    build(src, DB)
    build(src, DB2)
    source = src.spec(user=SRC_ROLE, password=PASSWORD)
    destination = dst.spec(user=DST_ROLE, password=PASSWORD)
    common = {'source': source, 'destination': destination, 'worker_dir': str(tmp_path / 'workers')}
    args = dict(common, name='quoted', databases=[DB], exclude_tables=['public.excluded ?one?'], jobs=2,
                replica_identity='full')     # canary has no key
    verify_keys = ('name', 'source', 'destination', 'databases', 'exclude_tables', 'replica_identity')
    status, result = ansible.module(VERIFY, {k: args[k] for k in verify_keys})
    assert status == 'ok', [(c['id'], c['message']) for c in result.get('checks', []) if c['status'] == 'failed']
    status, result = ansible.module(MIGRATE, dict(args, wait='synced', wait_timeout=300))
    assert status == 'changed', result['msg']
    with src.connect(DB) as conn:
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1000, 'new''\"', 1.5)").format(ident(SCHEMA, TABLE)))
        conn.execute(sql.SQL("UPDATE {} SET {} = 'changed' WHERE {} % 7 = 0").format(
            ident(SCHEMA, TABLE), ident("it's"), ident('Key" Ö')))
        conn.execute(sql.SQL('DELETE FROM {} WHERE {} < 20').format(ident(SCHEMA, TABLE), ident('Key" Ö')))
        conn.execute(sql.SQL("INSERT INTO {} (\"MixedCase\") VALUES ('later')").format(ident('public', UPPER)))
    status, result = ansible.module(MIGRATE, dict(args, wait='synced'))
    assert status == 'ok', result
    info_args = {k: common[k] for k in ('source', 'destination', 'worker_dir')}
    status, result = ansible.module(INFO, dict(info_args, name='quoted', tables=True))
    assert status == 'ok' and result['task']['stage'] == 'sync', result
    expected = {(SCHEMA, TABLE), ('public', UPPER), ('public', 'canary')}
    assert {(t['schema'], t['table']) for t in result['task']['tables']} == expected
    status, result = ansible.module(FINISH, dict(info_args, name='quoted'))
    assert status == 'changed', result
    assert result['comparison_summary']['mismatch'] == 0
    source_rows = database_contents(src, DB)
    assert source_rows.pop('public.%s' % EXCLUDED) == ['(1)']
    assert database_contents(dst, DB) == source_rows
    assert sequence_values(src, DB) == sequence_values(dst, DB)
    assert dst.value('SELECT count(*) FROM pg_indexes WHERE indexname = %s', ('idx "Ü" 1',), dbname=DB) == 1
    # a second task on another such database, cancelled with drop_destination: the database goes, nothing else
    args2 = dict(common, name='quoted_two', databases=[DB2], wait='synced', wait_timeout=300)
    status, result = ansible.module(MIGRATE, args2)
    assert status == 'changed', result
    status, result = ansible.module(MIGRATE, dict(args2, state='absent', drop_destination=True, wait='none'))
    assert status == 'changed' and result['task']['stage'] == 'cancelled', result
    assert dst.value('SELECT count(*) FROM pg_database WHERE datname = %s', (DB2,)) == 0
    assert task_slots(src, 'quoted') == [] and task_slots(src, 'quoted_two') == []
    # nothing was executed from the names
    canaries_alive(src, ['postgres', DB, DB2])
    canaries_alive(dst, ['postgres', DB])
    assert {r[0] for r in dst.execute('SELECT datname FROM pg_database')} >= {'postgres', DB}
    assert src.value('SELECT count(*) FROM pg_roles WHERE rolname = %s', ('postgres',)) == 1
