"""Helpers shared by the pg_dts_verify tests: run the catalogue against harness clusters and make test objects."""

from __future__ import annotations

from psycopg import sql

from ansible_collections.pgdts.migration.plugins.module_utils import checks
from ansible_collections.pgdts.migration.plugins.module_utils.connection import ServerSpec

ROLE_PASSWORD = 'Verify-Role-Pw-9'


def spec(cluster, user='postgres', password=None, dbname='postgres', **overrides):
    data = cluster.spec(user=user, password=password if password is not None or user == 'postgres' else ROLE_PASSWORD,
                        dbname=dbname)
    data.update(overrides)
    return ServerSpec.from_options(data, environ={})


def verify(source, destination, task='vtask', source_user='postgres', dest_user='postgres', source_spec=None,
           dest_spec=None, **options):
    """Run the catalogue; returns {id: item} after checking that every id is present once, in catalogue order."""
    items = checks.run_checks(source_spec or spec(source, source_user), dest_spec or spec(destination, dest_user),
                              task, **options)
    assert [item['id'] for item in items] == list(checks.CHECK_IDS)
    for item in items:
        assert item['status'] in ('pass', 'warning', 'failed'), item
        assert isinstance(item['message'], str) and item['message'], item
        assert isinstance(item['objects'], list), item
        if item['status'] != 'pass':
            assert item['hint'], item
    return {item['id']: item for item in items}


def statuses(result, *ids):
    return {i: result[i]['status'] for i in ids}


def recreate_database(cluster, name, *statements, encoding=None, locale=None):
    """Drop and create database `name`, then run `statements` in it."""
    with cluster.connect() as conn:
        conn.execute(sql.SQL('DROP DATABASE IF EXISTS {} WITH (FORCE)').format(sql.Identifier(name)))
        create = sql.SQL('CREATE DATABASE {}').format(sql.Identifier(name))
        if encoding or locale:
            create += sql.SQL(' TEMPLATE template0')
        if encoding:
            create += sql.SQL(' ENCODING {}').format(sql.Literal(encoding))
        if locale:
            create += sql.SQL(' LOCALE {}').format(sql.Literal(locale))
        conn.execute(create)
    if statements:
        with cluster.connect(name) as conn:
            for statement in statements:
                conn.execute(statement)


def drop_database(cluster, name):
    with cluster.connect() as conn:
        conn.execute(sql.SQL('DROP DATABASE IF EXISTS {} WITH (FORCE)').format(sql.Identifier(name)))


def create_role(cluster, name, attributes=''):
    """(Re)create a login role with the shared test password; attributes are fixed SQL keywords from the test."""
    drop_role(cluster, name)
    with cluster.connect() as conn:
        conn.execute(sql.SQL('CREATE ROLE {} LOGIN PASSWORD {} ' + attributes).format(
            sql.Identifier(name), sql.Literal(ROLE_PASSWORD)))


def drop_role(cluster, name):
    with cluster.connect() as conn:
        exists = conn.execute('SELECT 1 FROM pg_roles WHERE rolname = %s', (name,)).fetchone()
        if not exists:
            return
        for (db,) in conn.execute('SELECT datname FROM pg_database WHERE datallowconn').fetchall():
            with cluster.connect(db) as dbconn:
                dbconn.execute(sql.SQL('DROP OWNED BY {}').format(sql.Identifier(name)))
        conn.execute(sql.SQL('DROP ROLE {}').format(sql.Identifier(name)))


def server_objects(cluster, dbnames=()):
    """What verify must never change: slots, publications, origins (and the databases' publications)."""
    state = {
        'slots': cluster.execute('SELECT slot_name FROM pg_replication_slots ORDER BY 1'),
        'origins': cluster.execute('SELECT roname FROM pg_replication_origin ORDER BY 1'),
        'databases': cluster.execute('SELECT datname FROM pg_database ORDER BY 1'),
    }
    for db in dbnames:
        state['publications_' + db] = cluster.execute('SELECT pubname FROM pg_publication ORDER BY 1', dbname=db)
    return state
