"""pg_dts_plugin_install against a real cluster: archives, bare .so, checks, bad input, load probe, removal.

The real /usr/lib/postgresql/<major>/lib is never written: every install goes to a temporary pkglibdir that the
test cluster searches first (dynamic_library_path = '<tmp>:$libdir'), so a copy of the packaged wal2json.so
installed under a new name really loads.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import struct
import tempfile

import pytest

from ansible_collections.pgdts.migration.plugins.module_utils import plugin_files as pf
from tests.harness.cluster import pg_bindir

MODULE = 'pgdts.migration.pg_dts_plugin_install'
PKGLIBDIR = os.path.join(os.path.dirname(pg_bindir()), 'lib')
WAL2JSON = os.path.join(PKGLIBDIR, 'wal2json.so')
TEST_NAME = 'pgdts_test_w2j'


def read_bytes(path):
    with open(path, 'rb') as handle:
        return handle.read()


@pytest.fixture(scope='module')
def libdir():
    path = tempfile.mkdtemp(prefix='pgdts-libdir-')
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope='module')
def server(module_pg_factory, libdir):
    return module_pg_factory('plug', settings={'dynamic_library_path': "'%s:$libdir'" % libdir})


@pytest.fixture
def clean_libdir(libdir):
    for name in os.listdir(libdir):
        os.unlink(os.path.join(libdir, name))
    return libdir


@pytest.fixture
def files(tmp_path):
    """Source files for the tests, made from the packaged wal2json.so."""
    so = read_bytes(WAL2JSON)
    made = {}

    def write(name, data):
        path = tmp_path / name
        path.write_bytes(data)
        made[name] = str(path)
        return str(path)

    write('wal2json.so', so)
    write('plugin.zip', pf.archive_bytes_for_tests({'wal2json-2.6/README.md': b'readme', 'wal2json-2.6/wal2json.so': so}))
    write('plugin.tar.gz', pf.archive_bytes_for_tests({'wal2json-2.6/wal2json.so': so}, fmt='tar.gz'))
    write('no_so.zip', pf.archive_bytes_for_tests({'wal2json/README.md': b'no shared object here'}))
    write('two_so.tar.gz', pf.archive_bytes_for_tests({'a/wal2json.so': so, 'b/other.so': so}, fmt='tar.gz'))
    write('text.so', b'this is not a shared object\n')
    foreign = bytearray(so)
    foreign[18:20] = struct.pack('<H', 183)                     # e_machine = aarch64
    write('aarch64.so', bytes(foreign))
    info = pf.elf_info(so)
    major, raw = pf.magic_version(so, info)
    other = bytearray(so)
    needle = struct.pack('<ii', 56, raw) + struct.pack('<iii', 100, 32, 64)
    at = bytes(other).find(needle)
    assert at > 0 and major
    other[at + 4:at + 8] = struct.pack('<i', raw + 100)         # built for the next major version
    write('next_major.so', bytes(other))
    write('not_a_plugin.so', read_bytes(os.path.join(PKGLIBDIR, 'autoinc.so')))
    return made


def snapshot(libdir, cluster):
    """Every file of the lib directory and the configuration files, byte for byte."""
    state = {}
    for name in sorted(os.listdir(libdir)):
        state['lib/' + name] = read_bytes(os.path.join(libdir, name))
    for name in ('postgresql.conf', 'postgresql.auto.conf', 'pg_hba.conf'):
        state[name] = read_bytes(os.path.join(cluster.datadir, name))
    return state


def args_for(server, libdir, **extra):
    args = {'name': TEST_NAME, 'pkglibdir': libdir, 'source': server.spec()}
    args.update(extra)
    return args


def test_zip_archive_from_the_controller_installs_and_loads(server, clean_libdir, files, ansible):
    zip_path = files['plugin.zip']
    checksum = 'sha256:' + hashlib.sha256(read_bytes(zip_path)).hexdigest()
    target = os.path.join(clean_libdir, TEST_NAME + '.so')

    status, result = ansible.module(MODULE, args_for(server, clean_libdir, src=zip_path, checksum=checksum),
                                    check=True, diff=True)
    assert status == 'changed', result
    assert result['loadable'] is None and 'check mode' in result['load_check']
    assert 'sha256: %s' % hashlib.sha256(read_bytes(WAL2JSON)).hexdigest() in result['diff']['after']
    assert os.listdir(clean_libdir) == []

    status, result = ansible.module(MODULE, args_for(server, clean_libdir, src=zip_path, checksum=checksum))
    assert status == 'changed', result
    assert result['member'] == 'wal2json-2.6/wal2json.so'
    assert result['path'] == target and result['pkglibdir_source'] == 'option'
    assert result['loadable'] is True, result['load_check']
    assert result['built_for'] == str(server.value("SELECT current_setting('server_version_num')::int / 10000"))
    assert read_bytes(target) == read_bytes(WAL2JSON)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644
    assert os.listdir(clean_libdir) == [TEST_NAME + '.so']      # no temporary file left behind

    # the plugin really decodes: a wal2json slot under the new name
    server.execute("SELECT pg_create_logical_replication_slot('t_w2j', %s)", (TEST_NAME,))
    try:
        server.execute('CREATE TABLE IF NOT EXISTS w2j_probe (id int primary key)')
        # decoding reads only flushed WAL: commit synchronously (the harness runs with synchronous_commit = off)
        server.execute('SET synchronous_commit = on; INSERT INTO w2j_probe VALUES (1)')
        changes = server.execute("SELECT data FROM pg_logical_slot_get_changes('t_w2j', NULL, NULL)")
        assert any('w2j_probe' in row[0] for row in changes)
    finally:
        server.execute("SELECT pg_drop_replication_slot('t_w2j')")
        server.execute('DROP TABLE IF EXISTS w2j_probe')

    status, again = ansible.module(MODULE, args_for(server, clean_libdir, src=zip_path, checksum=checksum))
    assert status == 'ok', again
    assert again['loadable'] is True


def test_tar_gz_archive_on_the_host(server, clean_libdir, files, ansible):
    status, result = ansible.module(MODULE, args_for(server, clean_libdir, src=files['plugin.tar.gz'],
                                                     remote_src=True))
    assert status == 'changed', result
    assert result['loadable'] is True
    assert read_bytes(os.path.join(clean_libdir, TEST_NAME + '.so')) == read_bytes(WAL2JSON)


def test_bare_shared_object_with_owner_and_mode(server, clean_libdir, files, ansible):
    args = args_for(server, clean_libdir, src=files['wal2json.so'], remote_src=True, owner='postgres',
                    group='postgres', mode='0640')
    status, result = ansible.module(MODULE, args)
    assert status == 'changed', result
    target = os.path.join(clean_libdir, TEST_NAME + '.so')
    st = os.stat(target)
    assert stat.S_IMODE(st.st_mode) == 0o640
    import pwd
    assert pwd.getpwuid(st.st_uid).pw_name == 'postgres'
    assert result['loadable'] is True
    # only the mode differs: the attributes are fixed, the content is not rewritten
    inode = st.st_ino
    status, result = ansible.module(MODULE, dict(args, mode='0644'), diff=True)
    assert status == 'changed'
    assert 'mode: 0640' in result['diff']['before'] and 'mode: 0644' in result['diff']['after']
    assert os.stat(target).st_ino == inode and stat.S_IMODE(os.stat(target).st_mode) == 0o644
    status, result = ansible.module(MODULE, dict(args, mode='0644'))
    assert status == 'ok'


@pytest.mark.parametrize('source, extra, message', [
    ('no_so.zip', {}, 'holds no .so file'),
    ('two_so.tar.gz', {}, 'holds 2 .so files (a/wal2json.so, b/other.so): choose one with member'),
    ('plugin.zip', {'checksum': '0' * 64}, 'checksum mismatch for'),
    ('aarch64.so', {}, 'is built for aarch64 (64-bit, little-endian), but this server runs x86_64'),
    ('next_major.so', {}, 'but the server is PostgreSQL'),
    ('text.so', {}, 'is not an ELF shared object'),
    ('wal2json.so', {'pkglibdir': None, 'pg_config': '/nonexistent/bin/pg_config'},
     'pg_config /nonexistent/bin/pg_config does not exist'),
    ('wal2json.so', {'name': 'wal2json.so'}, 'is not valid'),
    ('plugin.zip', {'member': 'wal2json-2.6/missing.so'}, 'has no member wal2json-2.6/missing.so'),
])
def test_bad_input_changes_nothing(server, clean_libdir, files, ansible, source, extra, message):
    shutil.copy(WAL2JSON, os.path.join(clean_libdir, TEST_NAME + '.so'))     # a previous good install
    before = snapshot(clean_libdir, server)
    args = args_for(server, clean_libdir, src=files[source], remote_src=True)
    args.update(extra)
    args = {k: v for k, v in args.items() if v is not None}
    status, result = ansible.module(MODULE, args)
    assert status == 'failed', result
    assert message in result['msg']
    assert snapshot(clean_libdir, server) == before


@pytest.mark.parametrize('existing', [False, True], ids=['new', 'replacing'])
def test_plugin_that_does_not_load_is_rolled_back(server, clean_libdir, files, ansible, existing):
    if existing:
        shutil.copy(WAL2JSON, os.path.join(clean_libdir, TEST_NAME + '.so'))
    before = snapshot(clean_libdir, server)
    status, result = ansible.module(MODULE, args_for(server, clean_libdir, src=files['not_a_plugin.so'],
                                                     remote_src=True))
    assert status == 'failed', result
    assert 'does not load' in result['msg'] and 'restored' in result['msg']
    assert result['loadable'] is False
    assert snapshot(clean_libdir, server) == before


def test_builtin_plugin_is_verified_not_copied(server, ansible):
    status, result = ansible.module(MODULE, {'name': 'pgoutput', 'source': server.spec()})
    assert status == 'ok', result
    assert result['builtin'] is True and result['loadable'] is True
    assert result['pkglibdir'] == PKGLIBDIR and result['pkglibdir_source'] == 'server'
    assert result['bindir'] == pg_bindir()
    status, result = ansible.module(MODULE, {'name': 'pgoutput', 'src': WAL2JSON, 'remote_src': True,
                                             'source': server.spec()})
    assert status == 'failed' and 'refusing to overwrite the built-in plugin pgoutput' in result['msg']


def test_detection_without_connection_uses_pg_config(ansible):
    major = os.path.basename(os.path.dirname(pg_bindir()))
    status, result = ansible.module(MODULE, {'name': 'wal2json', 'major_version': major})
    assert status == 'ok', result
    assert result['pkglibdir'] == PKGLIBDIR and result['server_major'] == major
    assert result['loadable'] is None and 'no connection' in result['load_check']
    status, result = ansible.module(MODULE, {'name': 'wal2json', 'major_version': '9.1'})
    assert status == 'failed' and 'no pg_config found for PostgreSQL 9.1' in result['msg']


def test_missing_plugin_without_src_fails(server, clean_libdir, ansible):
    status, result = ansible.module(MODULE, args_for(server, clean_libdir))
    assert status == 'failed'
    assert 'plugin %s is not installed' % TEST_NAME in result['msg']


def test_absent_refuses_while_a_slot_uses_the_plugin(server, clean_libdir, ansible):
    target = os.path.join(clean_libdir, TEST_NAME + '.so')
    shutil.copy(WAL2JSON, target)
    server.execute("SELECT pg_create_logical_replication_slot('keep_me', %s)", (TEST_NAME,))
    try:
        status, result = ansible.module(MODULE, args_for(server, clean_libdir, state='absent'))
        assert status == 'failed'
        assert 'replication slot(s) keep_me use it' in result['msg']
        assert os.path.exists(target)
    finally:
        server.execute("SELECT pg_drop_replication_slot('keep_me')")
    status, result = ansible.module(MODULE, {'name': TEST_NAME, 'pkglibdir': clean_libdir, 'state': 'absent'})
    assert status == 'failed' and 'without a connection' in result['msg']
    status, result = ansible.module(MODULE, args_for(server, clean_libdir, state='absent'), check=True)
    assert status == 'changed' and os.path.exists(target)
    status, result = ansible.module(MODULE, args_for(server, clean_libdir, state='absent'))
    assert status == 'changed' and not os.path.exists(target)
    status, result = ansible.module(MODULE, args_for(server, clean_libdir, state='absent'))
    assert status == 'ok'
    status, result = ansible.module(MODULE, {'name': 'pgoutput', 'state': 'absent', 'source': server.spec()})
    assert status == 'failed' and 'refusing to remove the built-in plugin' in result['msg']
