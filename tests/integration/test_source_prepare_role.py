"""The source_prepare role on real clusters: wal_level replica -> logical with exactly one restart, a second run
that changes and restarts nothing, and check mode that changes nothing."""

from __future__ import annotations

import os

import psycopg

ROLE = 'pgdts.migration.source_prepare'
MIGRATOR = 'pgdts_migrator'
MIGRATOR_PASSWORD = 'Role-Secret-5531'
READY = 'database system is ready to accept connections'


def read_bytes(path):
    with open(path, 'rb') as handle:
        return handle.read()


def config_files(cluster):
    return {name: read_bytes(os.path.join(cluster.datadir, name))
            for name in ('postgresql.conf', 'postgresql.auto.conf', 'pg_hba.conf')}


def starts_in_log(cluster):
    with open(cluster.logfile, errors='replace') as handle:
        return handle.read().count(READY)


def task(run, name):
    return run.task('%s : %s' % (ROLE, name))


def play(cluster, **overrides):
    role_vars = {
        'source_prepare_source': cluster.spec(),
        'source_prepare_plugin': 'wal2json',
        'source_prepare_plugin_source': 'package',
        'source_prepare_databases': ['appdb'],
        'source_prepare_migration_user': MIGRATOR,
        'source_prepare_migration_password': MIGRATOR_PASSWORD,
        'source_prepare_create_user': True,
        'source_prepare_hba_addresses': ['127.0.0.1/32'],
        'source_prepare_restart_method': 'pg_ctl',
        'source_prepare_pg_ctl_log': cluster.logfile,
    }
    role_vars.update(overrides)
    return {'name': 'prepare the source', 'hosts': 'localhost', 'gather_facts': False,
            'roles': [{'role': ROLE, 'vars': role_vars}]}


def test_replica_to_logical_with_one_restart_then_nothing(pg_factory, ansible):
    cluster = pg_factory('role', settings={'wal_level': 'replica', 'max_replication_slots': '2'})
    cluster.create_database('appdb')
    started = cluster.postmaster_start_time()
    assert starts_in_log(cluster) == 1

    run = ansible.run(play(cluster))
    assert run.rc == 0, run.stdout[-4000:]
    assert task(run, "Install the decoding plugin's OS package")['status'] == 'ok'      # already installed
    assert task(run, 'Configure the source for logical decoding')['result']['restart_required'] is True
    assert task(run, 'Restart PostgreSQL with pg_ctl')['status'] == 'changed'
    assert cluster.setting('wal_level') == 'logical'
    assert cluster.setting('max_replication_slots') == '3'
    assert starts_in_log(cluster) == 2                                                  # exactly one restart
    restarted = cluster.postmaster_start_time()
    assert restarted > started
    verify = task(run, 'Prove that the decoding plugin loads')['result']
    assert verify['loadable'] is True and verify['wal_level'] == 'logical'

    # a wal2json slot can be created, the migration user logs in with its password over replication
    cluster.execute("SELECT pg_create_logical_replication_slot('role_w2j', 'wal2json')")
    cluster.execute("SELECT pg_drop_replication_slot('role_w2j')")
    with psycopg.connect(host=cluster.host, port=cluster.port, user=MIGRATOR, password=MIGRATOR_PASSWORD,
                         dbname='appdb', replication='database', autocommit=True) as conn:
        assert conn.execute('IDENTIFY_SYSTEM').fetchone()[0]

    files = config_files(cluster)
    again = ansible.run(play(cluster))
    assert again.rc == 0, again.stdout[-4000:]
    assert again.changed_count() == 0, [r['task'] for r in again.results if r['status'] == 'changed']
    assert task(again, 'Restart PostgreSQL when a setting needs it')['status'] == 'skipped'
    assert cluster.postmaster_start_time() == restarted
    assert starts_in_log(cluster) == 2
    assert config_files(cluster) == files


def test_check_mode_reports_and_changes_nothing(pg_factory, ansible):
    cluster = pg_factory('rolecheck', settings={'wal_level': 'replica'})
    cluster.create_database('appdb')
    started = cluster.postmaster_start_time()
    files = config_files(cluster)

    run = ansible.run(play(cluster), check=True, diff=True)
    assert run.rc == 0, run.stdout[-4000:]
    config = task(run, 'Configure the source for logical decoding')
    assert config['status'] == 'changed'
    assert config['result']['restart_required'] is True
    assert config['result']['settings']['wal_level']['after'] == 'logical'
    assert cluster.setting('wal_level') == 'replica'
    assert cluster.postmaster_start_time() == started
    assert config_files(cluster) == files
    assert cluster.value('SELECT count(*) FROM pg_roles WHERE rolname = %s', (MIGRATOR,)) == 0
