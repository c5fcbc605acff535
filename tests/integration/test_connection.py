"""The connection layer against real servers: success and each failure kind."""

from __future__ import annotations

import pytest

from ansible_collections.pgdts.migration.plugins.module_utils import connection as pgconn


@pytest.fixture(scope='module')
def server(module_pg_factory):
    return module_pg_factory('conn')


def spec_of(server, **overrides):
    data = server.spec()
    data.update(overrides)
    return pgconn.ServerSpec.from_options(data, environ={})


def test_connect_sets_application_name(server):
    with pgconn.connect(spec_of(server), application_name='pgdts-test') as conn:
        assert pgconn.query_value(conn, 'SHOW application_name') == 'pgdts-test'
        assert pgconn.server_version_num(conn) >= 100000


def test_wrong_password_is_auth_failed_and_never_echoed(server):
    with pytest.raises(pgconn.ConnectionFailure) as info:
        pgconn.connect(spec_of(server, password='Not-The-Password-123'))
    assert info.value.kind == 'auth_failed'
    assert 'authentication failed for user "postgres"' in info.value.message
    assert 'Not-The-Password-123' not in str(info.value)


def test_closed_port_is_unreachable(server):
    from tests.harness.cluster import free_port
    with pytest.raises(pgconn.ConnectionFailure) as info:
        pgconn.connect(spec_of(server, port=free_port()))
    assert info.value.kind == 'unreachable'
    assert 'cannot reach 127.0.0.1:' in info.value.message


def test_missing_database(server):
    with pytest.raises(pgconn.ConnectionFailure) as info:
        pgconn.connect(spec_of(server), dbname='no_such_db')
    assert info.value.kind == 'database_missing'
    assert 'database "no_such_db" does not exist' in info.value.message


def test_ssl_required_against_server_without_ssl(server):
    with pytest.raises(pgconn.ConnectionFailure) as info:
        pgconn.connect(spec_of(server, sslmode='require'))
    assert info.value.kind == 'ssl_required'


def test_unknown_host_is_unreachable(server):
    with pytest.raises(pgconn.ConnectionFailure) as info:
        pgconn.connect(spec_of(server, host='no-such-host.invalid', connect_timeout=3))
    assert info.value.kind == 'unreachable'


def test_environment_fallbacks(server):
    env = {'PGHOST': '127.0.0.1', 'PGPORT': str(server.port), 'PGUSER': 'postgres', 'PGPASSWORD': server.password}
    spec = pgconn.ServerSpec.from_options({}, environ=env)
    assert spec.port == server.port and spec.dbname == 'postgres'
    assert 'password' not in spec.public_dict()
    assert server.password not in repr(spec)
    with pgconn.connect(spec) as conn:
        assert pgconn.query_value(conn, 'SELECT current_user') == 'postgres'


def test_replication_connection(server):
    with pgconn.connect(spec_of(server), replication='database') as conn:
        row = pgconn.query_one(conn, 'IDENTIFY_SYSTEM')
        assert row[0]  # system identifier
