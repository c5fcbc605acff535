"""What differs between majors, one behaviour at a time, on real servers of those majors (run by `make integration`).

- client programs: a task between servers newer than every pg_dump found is refused by verify and by the migrate
  module (the worker would fail with "server version mismatch"), and passes with pg_bindir;
- PostgreSQL 11 sources: the column catalog is read without attgenerated (12+);
- PostgreSQL 12 destinations: a cancel with drop_destination drops the created database without WITH (FORCE) (13+);
- PostgreSQL 17+ sources: the database locale is read from datlocale (was daticulocale).
"""

from __future__ import annotations

import pytest

from ansible_collections.pgdts.migration.plugins.module_utils import schema
from tests.harness import pg_majors
from tests.harness.cluster import PgCluster
from tests.reliability.support import MIGRATE, kill_worker

VERIFY = 'pgdts.migration.pg_dts_verify'


@pytest.fixture
def majors(cluster_base_dir):
    """majors(12, 18) -> started clusters of those majors, destroyed after the test (a missing build fails)."""
    made = []

    def make(*wanted):
        out = []
        for major in wanted:
            pg_majors.install(major)
            cluster = PgCluster(cluster_base_dir, 'q%d_%d' % (major, len(made)), major=major).init().start()
            made.append(cluster)
            out.append(cluster)
        return out
    yield make
    for cluster in made:
        cluster.destroy()


def checks_by_id(result):
    return {c['id']: c for c in result['checks']}


def test_client_programs_older_than_the_servers_fail_verify_and_migrate(majors, ansible, tmp_path):
    newest = max(found[0] for found in schema.client_candidates('pg_dump'))
    assert newest < 18, 'this machine has a pg_dump of 18 outside the test cache: the failure cannot be shown here'
    src, dst = majors(17, 18)
    src.create_database('app')
    src.execute('CREATE TABLE t (id int PRIMARY KEY)', dbname='app')
    args = {'name': 'clients', 'source': src.spec(), 'destination': dst.spec(), 'databases': ['app']}
    status, result = ansible.module(VERIFY, args)
    assert status == 'failed' and 'worker.client_programs' in result['failed_checks'], result
    item = checks_by_id(result)['worker.client_programs']
    assert 'pg_dump of PostgreSQL 18 or newer is needed' in item['message'], item
    assert 'pg_bindir' in item['hint'] and 'postgresql-client-18' in item['hint'], item

    # the migrate module runs the same checks and starts nothing
    worker_dir = str(tmp_path / 'workers')
    status, result = ansible.module(MIGRATE, dict(args, worker_dir=worker_dir))
    assert status == 'failed' and 'worker.client_programs' in str(result), result
    assert src.value('SELECT count(*) FROM pg_replication_slots') == 0
    assert dst.value("SELECT count(*) FROM pg_database WHERE datname = 'app'") == 0

    # with the client programs of 18 given, the item passes and names them
    clients = pg_majors.install(18)
    status, result = ansible.module(VERIFY, dict(args, pg_bindir=clients))
    assert status == 'ok', [c for c in result['checks'] if c['status'] == 'failed']
    item = checks_by_id(result)['worker.client_programs']
    assert item['status'] == 'pass' and item['message'].endswith(' in ' + clients), item

    # a pg_bindir without pg_dump is bad input: a clear error, nothing created
    status, result = ansible.module(MIGRATE, dict(args, worker_dir=worker_dir, pg_bindir=str(tmp_path)))
    assert status == 'failed' and 'pg_bindir: no pg_dump in' in result['msg'], result
    assert dst.value("SELECT count(*) FROM pg_database WHERE datname = 'pgdts'") == 0


def test_source_11_catalog_is_read(majors, ansible):
    src, dst = majors(11, 18)
    src.create_database('app')
    src.execute('CREATE TABLE t (id int PRIMARY KEY, v text)', dbname='app')
    status, result = ansible.module(VERIFY, {'name': 'old', 'source': src.spec(), 'destination': dst.spec(),
                                             'databases': ['app'], 'pg_bindir': pg_majors.install(18),
                                             'fail_on': 'never'})
    items = checks_by_id(result)
    assert items['source.databases']['status'] == 'pass', items['source.databases']
    assert items['tables.selection']['status'] == 'pass', items['tables.selection']
    assert items['source.version']['status'] == 'warning', items['source.version']
    assert 'oldest major pgdts was tested with (12)' in items['source.version']['message']


def test_source_17_database_locale_is_read(majors, ansible):
    src, dst = majors(17, 17)
    src.execute("CREATE DATABASE app TEMPLATE template0 LOCALE_PROVIDER builtin BUILTIN_LOCALE 'C.UTF-8' "
                "LOCALE 'C.UTF-8'")
    status, result = ansible.module(VERIFY, {'name': 'loc', 'source': src.spec(), 'destination': dst.spec(),
                                             'databases': ['app'], 'pg_bindir': pg_majors.install(18),
                                             'fail_on': 'never'})
    items = checks_by_id(result)
    assert items['source.databases']['status'] == 'pass', items['source.databases']
    assert not [c for c in result['checks'] if 'daticulocale' in c['message']]


def test_cancel_drop_destination_on_12(majors, ansible, tmp_path):
    src, dst = majors(12, 12)
    src.execute('ALTER SYSTEM SET wal_level = logical')
    src.restart()
    src.create_database('app')
    src.execute('CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, g::text FROM '
                'generate_series(1, 1000) g', dbname='app')
    worker_dir = str(tmp_path / 'workers')
    args = {'name': 'drop12', 'source': src.spec(), 'destination': dst.spec(), 'databases': ['app'],
            'worker_dir': worker_dir, 'pg_bindir': pg_majors.clients_for(12)}
    try:
        status, result = ansible.module(MIGRATE, dict(args, wait='synced', wait_timeout=120, wait_sleep=1))
        assert status == 'changed' and result['task']['stage'] == 'sync', result
        # a session of the application on the destination database: the drop must end it, as FORCE would
        with dst.connect('app') as _held:
            status, result = ansible.module(MIGRATE, dict(args, state='absent', drop_destination=True))
        assert status == 'changed', result
        assert dst.value("SELECT count(*) FROM pg_database WHERE datname = 'app'") == 0
        assert src.value('SELECT count(*) FROM pg_replication_slots') == 0
    finally:
        kill_worker(worker_dir, 'drop12')
