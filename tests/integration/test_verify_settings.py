"""Verify items that need server settings a normal test cluster does not have.

One module-scoped "bad" cluster (wal_level = replica, one slot, one WAL sender) and one normal cluster; a standby clone
and a destination on a small tmpfs are made only for the tests that need them.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess

import psycopg
import pytest

from tests.harness.cluster import PgCluster
from verify_support import drop_database, recreate_database, spec, statuses, verify


@pytest.fixture(scope='module')
def bad(module_pg_factory):
    return module_pg_factory('vbad', settings={'wal_level': 'replica', 'max_replication_slots': '1',
                                               'max_wal_senders': '1'})


@pytest.fixture(scope='module')
def good(module_pg_factory):
    return module_pg_factory('vgood')


@pytest.fixture(scope='module')
def bad_db(bad):
    recreate_database(bad, 'v_bad', 'CREATE TABLE t (id int PRIMARY KEY)')
    return 'v_bad'


def test_wal_level_replica_fails_and_the_plugin_check_says_why(bad, good, bad_db):
    result = verify(bad, good, databases=[bad_db])
    item = result['source.wal_level']
    assert item['status'] == 'failed'
    assert item['message'] == 'wal_level is replica on the source; logical decoding needs logical'
    assert item['hint'].startswith('ALTER SYSTEM SET wal_level = logical; then restart the source')
    item = result['plugin.load']
    assert item['status'] == 'failed'
    assert item['message'].startswith('skipped because wal_level is replica, not logical')
    assert verify(good, bad, databases=['postgres'])['source.wal_level']['status'] == 'pass'


def test_replication_slots_free_spare_and_exhausted(bad, good, bad_db):
    item = verify(bad, good, databases=[bad_db])['source.replication_slots']
    assert item['status'] == 'warning'
    assert 'max_replication_slots = 1, 0 in use, 1 free; this task needs 1' in item['message']
    assert 'temporary slot' in item['message']

    item = verify(bad, good, databases=[bad_db, 'postgres'])['source.replication_slots']
    assert item['status'] == 'failed'
    assert 'this task needs 2' in item['message']

    bad.execute("SELECT pg_create_physical_replication_slot('v_standby_slot')")
    try:
        item = verify(bad, good, databases=[bad_db])['source.replication_slots']
        assert item['status'] == 'failed'
        assert 'not enough free replication slots: max_replication_slots = 1, 1 in use, 0 free' in item['message']
        assert "SELECT pg_drop_replication_slot('v_standby_slot')" in item['hint']
        assert {'type': 'replication_slot', 'name': 'v_standby_slot', 'plugin': None, 'slot_type': 'physical',
                'database': None, 'active': False} in item['objects']
    finally:
        bad.execute("SELECT pg_drop_replication_slot('v_standby_slot')")
    assert verify(good, bad, databases=['postgres'])['source.replication_slots']['status'] == 'pass'


def test_wal_senders_exhausted(bad, good, bad_db):
    assert verify(bad, good, databases=[bad_db])['source.wal_senders']['status'] == 'pass'
    holder = psycopg.connect(host=bad.host, port=bad.port, user='postgres', password=bad.password, dbname=bad_db,
                             replication='database', autocommit=True)
    try:
        result = verify(bad, good, databases=[bad_db])
        item = result['source.wal_senders']
        assert item['status'] == 'failed'
        assert 'max_wal_senders = 1, 1 in use, 0 free; this task needs 1' in item['message']
        assert 'ALTER SYSTEM SET max_wal_senders' in item['hint']
        item = result['source.replication_connection']
        assert item['status'] == 'failed'
        assert 'max_wal_senders' in item['message'] and 'Raise max_wal_senders' in item['hint']
    finally:
        holder.close()


def test_destination_replication_origins(bad, good):
    recreate_database(good, 'v_origins', 'CREATE TABLE t (id int PRIMARY KEY)')
    try:
        item = verify(good, bad, databases=['v_origins'])['destination.replication_origins']
        assert item['status'] == 'pass'
        assert item['message'] == ('max_replication_slots = 1, 0 origins in use, 1 free; this task needs 1 (one per '
                                   'database)')
        bad.execute("SELECT pg_replication_origin_create('v_busy_origin')")
        bad.execute("SELECT pg_replication_origin_advance('v_busy_origin', '0/1000')")
        item = verify(good, bad, databases=['v_origins'])['destination.replication_origins']
        assert item['status'] == 'failed'
        assert '1 origins in use, 0 free' in item['message']
        assert item['hint'].startswith('ALTER SYSTEM SET max_replication_slots = 3;')
    finally:
        if bad.value("SELECT count(*) FROM pg_replication_origin WHERE roname = 'v_busy_origin'"):
            bad.execute("SELECT pg_replication_origin_drop('v_busy_origin')")
        drop_database(good, 'v_origins')


def _chown_tree(path):
    pw = pwd.getpwnam('postgres')
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)
    os.lchown(path, pw.pw_uid, pw.pw_gid)


def test_standby_is_refused_as_source_and_as_destination(bad, good, module_pg_factory):
    standby = PgCluster(module_pg_factory.base_dir, 'vstandby')
    bad.stop()
    try:
        os.makedirs(standby.root)
        shutil.copytree(bad.datadir, standby.datadir, symlinks=True)
        open(os.path.join(standby.datadir, 'standby.signal'), 'w').close()
        os.makedirs(standby.sockdir)
        _chown_tree(standby.root)
    finally:
        bad.start()
    standby.start()
    try:
        assert standby.value('SELECT pg_is_in_recovery()') is True
        result = verify(standby, good, databases=['postgres'])
        item = result['source.recovery']
        assert item['status'] == 'failed'
        assert 'standby in recovery' in item['message'] and 'pg_is_in_recovery()' in item['hint']
        item = verify(good, standby, databases=['postgres'])['destination.recovery']
        assert item['status'] == 'failed'
        assert item['message'] == 'the destination is a standby in recovery and accepts no writes'
        result = verify(good, bad, databases=['postgres'])
        assert statuses(result, 'source.recovery', 'destination.recovery') == {
            'source.recovery': 'pass', 'destination.recovery': 'pass'}
    finally:
        standby.destroy()


@pytest.fixture
def tmpfs_destination(module_pg_factory):
    """A destination cluster whose data directory is on its own small tmpfs, so free space can be steered."""
    mount = os.path.join(module_pg_factory.base_dir, 'vsmallfs')
    os.makedirs(mount)
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=96m,mode=0755', 'tmpfs', mount], check=True)
    cluster = None
    try:
        _chown_tree(mount)
        cluster = PgCluster(mount, 'vsmall', settings={'max_wal_size': '32MB', 'min_wal_size': '32MB'})
        cluster.init()
        cluster.start()
        yield cluster, mount
    finally:
        if cluster is not None:
            cluster.destroy()
        subprocess.run(['umount', mount], check=False)
        os.rmdir(mount)


def _fill(mount, leave_free):
    filler = os.path.join(mount, 'filler')
    if os.path.exists(filler):
        os.unlink(filler)
    stats = os.statvfs(mount)
    free = stats.f_bavail * stats.f_frsize
    with open(filler, 'wb') as handle:
        handle.truncate(0)
        remaining = max(free - leave_free, 0)
        chunk = b'\0' * (1 << 20)
        while remaining > 0:
            handle.write(chunk[:min(len(chunk), remaining)])
            remaining -= min(len(chunk), remaining)


def test_disk_space_on_a_small_destination(good, tmpfs_destination):
    small, mount = tmpfs_destination
    recreate_database(good, 'v_big', 'CREATE TABLE big (id int PRIMARY KEY, payload text)',
                      "INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 60000) g")
    try:
        required = good.value("SELECT pg_total_relation_size('big')", dbname='v_big')
        assert required > 10 * 1024 * 1024
        _fill(mount, int(required * 0.5))
        item = verify(good, small, databases=['v_big'])['destination.disk_space']
        assert item['status'] == 'failed'
        assert item['message'].startswith('not enough free space on the destination')
        assert item['objects'][0]['required_bytes'] == required
        assert item['objects'][0]['free_bytes'] < required
        _fill(mount, int(required * 1.25))
        item = verify(good, small, databases=['v_big'])['destination.disk_space']
        assert item['status'] == 'warning'
        assert item['message'].startswith('tight free space on the destination')
        os.unlink(os.path.join(mount, 'filler'))
        item = verify(good, small, databases=['v_big'])['destination.disk_space']
        assert item['status'] == 'pass'
        # a destination role that cannot see the data directory gets the size to plan for instead
        small.execute("CREATE ROLE v_disk_reader LOGIN PASSWORD 'Verify-Role-Pw-9'")
        try:
            item = verify(good, small, databases=['v_big'], dest_spec=spec(small, 'v_disk_reader'))['destination.disk_space']
            assert item['status'] == 'pass'
            assert 'cannot be measured from here' in item['message'] and 'plan for about' in item['message']
        finally:
            small.execute('DROP ROLE v_disk_reader')
    finally:
        drop_database(good, 'v_big')


RESTRICTED_HBA = """# verify test: only the superuser everywhere, v_hba only into database postgres
local   all             all                                     trust
host    all             postgres        127.0.0.1/32            scram-sha-256
host    replication     postgres        127.0.0.1/32            scram-sha-256
{extra}
"""


def test_pg_hba_rules_are_exercised(good, bad, bad_db):
    path = os.path.join(bad.datadir, 'pg_hba.conf')
    with open(path) as handle:
        original = handle.read()
    bad.execute("CREATE ROLE v_hba LOGIN REPLICATION PASSWORD 'Verify-Role-Pw-9'")
    try:
        with open(path, 'w') as handle:
            handle.write(RESTRICTED_HBA.format(extra=''))
        bad.reload()
        result = verify(bad, good, source_spec=spec(bad, 'v_hba'), databases=[bad_db])
        item = result['source.connection']
        assert item['status'] == 'failed'
        assert 'has no pg_hba.conf entry that allows user "v_hba"' in item['message']
        assert 'pg_hba.conf' in item['hint'] and 'pg_dts_source_config' in item['hint']
        assert result['source.wal_level']['message'].startswith('skipped because pgdts could not connect to the source')

        with open(path, 'w') as handle:
            handle.write(RESTRICTED_HBA.format(extra='host    postgres        v_hba           127.0.0.1/32            '
                                                     'scram-sha-256'))
        bad.reload()
        result = verify(bad, good, source_spec=spec(bad, 'v_hba'), databases=[bad_db])
        assert result['source.connection']['status'] == 'pass'
        item = result['source.databases']
        assert item['status'] == 'failed'
        assert 'no pg_hba.conf entry' in item['message'] and 'database "v_bad"' in item['message']
        assert 'pg_hba.conf line' in item['hint']
    finally:
        with open(path, 'w') as handle:
            handle.write(original)
        bad.reload()
        bad.execute('DROP ROLE v_hba')
