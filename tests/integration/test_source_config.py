"""pg_dts_source_config against real clusters: check mode, ALTER SYSTEM + restart, pg_hba effectiveness, re-runs."""

from __future__ import annotations

import os
import time

import psycopg
import pytest
from psycopg import sql

MIGRATOR = 'pgdts_migrator'
MIGRATOR_PASSWORD = 'Migr-Secret-8812'

RESTRICTIVE_HBA = """# restrictive test file: only the superuser may connect over TCP
local   all             all                                     trust
host    all             postgres        127.0.0.1/32            scram-sha-256
host    all             postgres        ::1/128                 scram-sha-256
host    replication     postgres        127.0.0.1/32            scram-sha-256
host    all             all             all                     reject
"""


def read_bytes(path):
    with open(path, 'rb') as handle:
        return handle.read()


def config_files(cluster):
    names = ('postgresql.conf', 'postgresql.auto.conf', 'pg_hba.conf')
    return {name: read_bytes(os.path.join(cluster.datadir, name)) for name in names}


def restrict_hba(cluster):
    path = os.path.join(cluster.datadir, 'pg_hba.conf')
    with open(path, 'w') as handle:
        handle.write(RESTRICTIVE_HBA)
    cluster.reload()


def migrator_connect(cluster, host='127.0.0.1', dbname='appdb', replication=None, password=MIGRATOR_PASSWORD):
    kwargs = {'replication': replication} if replication else {}
    return psycopg.connect(host=host, port=cluster.port, user=MIGRATOR, password=password, dbname=dbname,
                           connect_timeout=5, autocommit=True, **kwargs)


def migrator_connect_after_reload(cluster, **kwargs):
    """A reload is asynchronous: give the postmaster a moment to read the new pg_hba.conf."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return migrator_connect(cluster, **kwargs)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture
def replica_pg(pg_factory):
    cluster = pg_factory('cfg', settings={'wal_level': 'replica', 'max_replication_slots': '2',
                                          'max_wal_senders': '30', 'listen_addresses': "'127.0.0.1,::1'"})
    cluster.create_database('appdb')
    restrict_hba(cluster)
    return cluster


def module_args(cluster, **extra):
    args = {'source': cluster.spec(), 'databases': ['appdb'], 'reserve': 2, 'migration_user': MIGRATOR,
            'migration_password': MIGRATOR_PASSWORD, 'create_migration_user': True,
            'hba_addresses': ['127.0.0.1/32']}
    args.update(extra)
    return args


def test_check_mode_reports_changes_and_makes_none(replica_pg, ansible):
    before = config_files(replica_pg)
    status, result = ansible.module('pgdts.migration.pg_dts_source_config', module_args(replica_pg), check=True,
                                    diff=True)
    assert status == 'changed', result
    assert result['restart_required'] is True
    assert result['reload_required'] is True and result['reloaded'] is False
    assert result['settings']['wal_level']['after'] == 'logical'
    assert result['settings']['max_replication_slots']['after'] == '3'        # 0 in use + 1 database + 2 reserve
    assert result['settings']['max_wal_senders']['changed'] is False          # 30 is more than needed
    assert any(q.startswith('ALTER SYSTEM SET "wal_level"') for q in result['queries'])
    assert any(q.startswith('CREATE ROLE "%s"' % MIGRATOR) for q in result['queries'])
    assert MIGRATOR_PASSWORD not in str(result)
    # the replication entry: no rule matches physical replication for this user, so it can go at the end;
    # the database entry must come before the final reject rule
    assert [(c['action'], c['entry']) for c in result['hba_changes']] == [
        ('appended', 'host replication %s 127.0.0.1/32 scram-sha-256' % MIGRATOR),
        ('inserted', 'host appdb %s 127.0.0.1/32 scram-sha-256' % MIGRATOR)]
    diff_text = str(result['diff'])
    assert 'wal_level = logical' in diff_text and 'appdb' in diff_text
    # nothing happened
    assert config_files(replica_pg) == before
    assert replica_pg.setting('wal_level') == 'replica'
    assert replica_pg.value('SELECT count(*) FROM pg_roles WHERE rolname = %s', (MIGRATOR,)) == 0


def test_apply_restart_and_second_run(replica_pg, ansible):
    replica_pg.execute("SELECT pg_create_physical_replication_slot('admin_slot')")
    before = config_files(replica_pg)
    with pytest.raises(psycopg.OperationalError):
        migrator_connect(replica_pg)

    status, result = ansible.module('pgdts.migration.pg_dts_source_config', module_args(replica_pg), diff=True)
    assert status == 'changed', result
    assert result['restart_required'] is True
    assert result['reloaded'] is True and result['reload_required'] is False
    assert result['in_use'] == {'replication_slots': 1, 'wal_senders': 0}
    assert result['settings']['max_replication_slots']['after'] == '4'        # 1 in use + 1 + 2
    assert result['settings']['wal_level']['pending_restart'] is True
    assert 'wal_level' in result['pending_restart']                           # what the server itself reports
    assert result['user'] == 'created'
    assert MIGRATOR_PASSWORD not in str(result)
    # files: postgresql.conf untouched, settings in postgresql.auto.conf, pg_hba.conf backed up and extended
    after = config_files(replica_pg)
    assert after['postgresql.conf'] == before['postgresql.conf']
    auto = after['postgresql.auto.conf'].decode()
    assert "wal_level = 'logical'" in auto and "max_replication_slots = '4'" in auto
    assert 'max_wal_senders' not in auto
    assert read_bytes(result['backup_file']) == before['pg_hba.conf']
    hba_lines = after['pg_hba.conf'].decode().splitlines()
    reject_at = hba_lines.index('host    all             all             all                     reject')
    ours = [i for i, line in enumerate(hba_lines) if MIGRATOR in line]
    assert len(ours) == 2
    assert [i for i in ours if 'appdb' in hba_lines[i]][0] == reject_at - 1
    assert all('scram-sha-256' in hba_lines[i] and 'trust' not in hba_lines[i] for i in ours)
    # every original line is still there, in order
    assert [line for line in hba_lines if MIGRATOR not in line] == RESTRICTIVE_HBA.splitlines()

    # the pg_hba entries are effective right away (reloaded): database, logical and physical replication
    with migrator_connect_after_reload(replica_pg) as conn:
        assert conn.execute('SELECT current_user').fetchone()[0] == MIGRATOR
    with migrator_connect(replica_pg, replication='database') as conn:
        assert conn.execute('IDENTIFY_SYSTEM').fetchone()[0]
    with migrator_connect(replica_pg, dbname='postgres', replication='true') as conn:
        assert conn.execute('IDENTIFY_SYSTEM').fetchone()[0]
    # ... and only from the allowed address, and only with the password
    with pytest.raises(psycopg.OperationalError, match='rejects connection'):
        migrator_connect(replica_pg, host='::1')
    with pytest.raises(psycopg.OperationalError, match='password authentication failed'):
        migrator_connect(replica_pg, password='wrong-password')

    replica_pg.restart()
    assert replica_pg.setting('wal_level') == 'logical'
    assert replica_pg.setting('max_replication_slots') == '4'
    assert replica_pg.setting('max_wal_senders') == '30'                      # the administrator's value is kept

    files = config_files(replica_pg)
    status, again = ansible.module('pgdts.migration.pg_dts_source_config', module_args(replica_pg), diff=True)
    assert status == 'ok', again
    assert again['changed'] is False and again['restart_required'] is False and again['queries'] == []
    assert again['hba_changes'] == [] and again['user'] == 'unchanged'
    assert config_files(replica_pg) == files


def test_restart_required_survives_a_run_without_restart(replica_pg, ansible):
    """A second run before the restart changes nothing but still says a restart is needed (pending_restart)."""
    args = module_args(replica_pg, hba_addresses=[], create_migration_user=False)
    status, _result = ansible.module('pgdts.migration.pg_dts_source_config', args)
    assert status == 'changed'
    status, result = ansible.module('pgdts.migration.pg_dts_source_config', args)
    assert status == 'ok', result
    assert result['restart_required'] is True
    assert result['settings']['wal_level']['running'] == 'replica'
    assert result['settings']['wal_level']['after'] == 'logical'


def test_reload_false_leaves_reload_to_the_caller(replica_pg, ansible):
    args = module_args(replica_pg, reload=False, create_migration_user=False, databases=[], hba_replication=True)
    status, result = ansible.module('pgdts.migration.pg_dts_source_config', args)
    assert status == 'changed', result
    assert result['reload_required'] is True and result['reloaded'] is False
    # not reloaded: the new entry is not in effect yet
    assert replica_pg.value("SELECT count(*) FROM pg_hba_file_rules WHERE %s = ANY(user_name)", (MIGRATOR,)) == 1
    assert replica_pg.value('SELECT count(*) FROM pg_settings WHERE pending_restart') == 0
    replica_pg.execute(sql.SQL('CREATE ROLE {} LOGIN REPLICATION PASSWORD {}').format(
        sql.Identifier(MIGRATOR), sql.Literal(MIGRATOR_PASSWORD)))
    with pytest.raises(psycopg.OperationalError, match='no pg_hba.conf entry'):
        migrator_connect(replica_pg, dbname='postgres', replication='true')
    replica_pg.reload()
    with migrator_connect_after_reload(replica_pg, dbname='postgres', replication='true') as conn:
        assert conn.execute('IDENTIFY_SYSTEM').fetchone()[0]


def test_rejected_hba_file_is_put_back_and_mode_kept(replica_pg, ansible):
    """The server finds an error in the new pg_hba.conf (cert needs hostssl): the old file is put back, byte for
    byte, with its mode, and the server keeps using it. A good change then keeps the file's mode too."""
    path = os.path.join(replica_pg.datadir, 'pg_hba.conf')
    os.chmod(path, 0o640)
    before = read_bytes(path)
    args = module_args(replica_pg, hba_method='cert', hba_type='host', create_migration_user=False)
    status, result = ansible.module('pgdts.migration.pg_dts_source_config', args)
    assert status == 'failed', result
    assert 'the server rejected the new %s' % path in result['msg'] and 'the previous file was put back' in result['msg']
    assert 'hostssl' in result['msg']
    assert read_bytes(path) == before and os.stat(path).st_mode & 0o777 == 0o640
    assert read_bytes(result['backup_file']) == before
    assert replica_pg.value('SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL') == 0
    assert replica_pg.value('SELECT count(*) FROM pg_hba_file_rules WHERE %s = ANY(user_name)', (MIGRATOR,)) == 0

    status, result = ansible.module('pgdts.migration.pg_dts_source_config', module_args(replica_pg))
    assert status == 'changed', result
    assert os.stat(path).st_mode & 0o777 == 0o640 and MIGRATOR in read_bytes(path).decode()
    assert os.stat(result['backup_file']).st_mode & 0o777 == 0o640 and read_bytes(result['backup_file']) == before
    with migrator_connect_after_reload(replica_pg) as conn:
        assert conn.execute('SELECT current_user').fetchone()[0] == MIGRATOR


@pytest.mark.parametrize('args, message', [
    ({'hba_addresses': ['not an address!']}, 'is neither an IP address'),
    ({'reserve': -1}, 'must not be negative'),
    ({'databases': ['appdb', 'appdb']}, 'more than once'),
])
def test_bad_input_changes_nothing(replica_pg, ansible, args, message):
    before = config_files(replica_pg)
    status, result = ansible.module('pgdts.migration.pg_dts_source_config', module_args(replica_pg, **args))
    assert status == 'failed'
    assert message in result['msg']
    assert config_files(replica_pg) == before
    assert replica_pg.value('SELECT count(*) FROM pg_roles WHERE rolname = %s', (MIGRATOR,)) == 0
