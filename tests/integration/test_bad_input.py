"""Bad input: every case fails with a clear message (or, for a repeated cancel, answers that nothing is left to do)
and changes nothing - neither on the source, nor on the destination, nor on disk.

Each case takes a snapshot of both servers (databases, roles, slots, origins, settings, publications, schemas,
relations with row counts, the configuration files and the names in the data directory) and of the worker directory
and the plugin directory before the call, and compares them after it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

import pytest

from ansible_collections.pgdts.migration.plugins.module_utils import plugin_files as pf
from tests.harness.cluster import free_port, pg_bindir
from tests.harness.faults import (
    FINISH, INFO, MIGRATE, VERIFY, create_login_role, diff_snapshots, disk_snapshot, server_snapshot,
)

WEAK_PASSWORD = 'weak-Pass-2741'
PLUGIN_INSTALL = 'pgdts.migration.pg_dts_plugin_install'
SOURCE_CONFIG = 'pgdts.migration.pg_dts_source_config'
WAL2JSON = os.path.join(os.path.dirname(pg_bindir()), 'lib', 'wal2json.so')


@pytest.fixture(scope='module')
def env(module_pg_factory, installed_collection):
    """Two servers with: a database to migrate, one whose tables already hold rows on the destination, a finished
    task named `used`, a cancelled task named `gone`, roles without the needed privileges, and plugin files."""
    from tests.harness.ansible_run import AnsibleRunner
    src, dst = module_pg_factory('bsrc'), module_pg_factory('bdst')
    work = tempfile.mkdtemp(prefix='pgdts-bad-input-')
    runner = AnsibleRunner(installed_collection['path'], work)
    for dbname in ('shop', 'later', 'fresh'):
        src.create_database(dbname)
        src.execute('CREATE TABLE orders (id int PRIMARY KEY, v text)', dbname=dbname)
        src.execute("INSERT INTO orders SELECT g, 'o' || g FROM generate_series(1, 100) g", dbname=dbname)
    src.create_database('taken')
    src.execute('CREATE TABLE items (id int PRIMARY KEY, v text)', dbname='taken')
    src.execute("INSERT INTO items VALUES (1, 'source')", dbname='taken')
    dst.create_database('taken')
    dst.execute('CREATE TABLE items (id int PRIMARY KEY, v text)', dbname='taken')
    dst.execute("INSERT INTO items VALUES (7, 'already here')", dbname='taken')
    create_login_role(src, 'weak', WEAK_PASSWORD)                      # no REPLICATION, no SELECT on the tables
    create_login_role(dst, 'dweak', WEAK_PASSWORD, 'NOCREATEDB')       # cannot create databases or origins
    worker_dir = os.path.join(work, 'workers')
    common = {'source': src.spec(), 'destination': dst.spec(), 'worker_dir': worker_dir}
    status, result = runner.module(MIGRATE, dict(common, name='used', databases=['shop'], incremental=False,
                                                 wait='copied', wait_timeout=300))
    assert status == 'changed' and result['task']['stage'] == 'finished', result
    status, result = runner.module(MIGRATE, dict(common, name='gone', databases=['later'], tables=['public.orders'],
                                                 start_at='2099-01-01T00:00:00+00:00'))
    assert status == 'changed' and result['task']['stage'] == 'scheduled', result
    status, result = runner.module(MIGRATE, dict(common, name='gone', state='absent'))
    assert status == 'changed' and result['task']['stage'] == 'cancelled', result
    libdir = os.path.join(work, 'libdir')
    os.makedirs(libdir)
    files = os.path.join(work, 'files')
    os.makedirs(files)
    with open(WAL2JSON, 'rb') as handle:
        so = handle.read()
    paths = {'so': os.path.join(files, 'wal2json.so'), 'corrupt': os.path.join(files, 'wal2json-broken.zip'),
             'truncated': os.path.join(files, 'wal2json-cut.tar.gz')}
    with open(paths['so'], 'wb') as handle:
        handle.write(so)
    with open(paths['corrupt'], 'wb') as handle:
        handle.write(b'PK\x03\x04 this is not really a zip archive' * 10)
    archive = pf.archive_bytes_for_tests({'wal2json/wal2json.so': so}, fmt='tar.gz')
    with open(paths['truncated'], 'wb') as handle:
        handle.write(archive[:len(archive) // 2])
    yield {'src': src, 'dst': dst, 'runner': runner, 'common': common, 'worker_dir': worker_dir, 'libdir': libdir,
           'files': paths, 'so_sha256': hashlib.sha256(so).hexdigest()}
    shutil.rmtree(work, ignore_errors=True)


def spec_with(cluster, **changes):
    spec = cluster.spec()
    spec.update(changes)
    return spec


def migrate(env, **extra):
    args = dict(env['common'], name='fresh_move', databases=['fresh'], jobs=2)
    args.update(extra)
    return MIGRATE, args


def plugin(env, **extra):
    args = {'name': 'pgdts_bad_w2j', 'pkglibdir': env['libdir'], 'source': env['src'].spec()}
    args.update(extra)
    return PLUGIN_INSTALL, args


# (case id, builder(env) -> (module, args), expected status, words the message must hold)
CASES = [
    ('wrong_source_password', lambda e: migrate(e, source=spec_with(e['src'], password='not-the-password')),
     'failed', ['source.connection', 'authentication failed', 'user "postgres"']),
    ('wrong_destination_password', lambda e: migrate(e, destination=spec_with(e['dst'], password='not-the-password')),
     'failed', ['authentication failed', 'destination']),
    ('unreachable_source_host', lambda e: migrate(e, source=spec_with(e['src'], port=free_port(), connect_timeout=3)),
     'failed', ['source.connection', 'cannot reach 127.0.0.1']),
    ('unreachable_destination_host', lambda e: migrate(e, destination=spec_with(e['dst'], host='192.0.2.1',
                                                                                connect_timeout=2)),
     'failed', ['destination', '192.0.2.1']),
    ('missing_database', lambda e: migrate(e, databases=['no_such_db']),
     'failed', ['no_such_db', 'does not exist']),
    ('missing_table_in_selection', lambda e: migrate(e, tables=['public.orders', 'public.no_such_table']),
     'failed', ['tables.missing', 'public.no_such_table', 'no table matches']),
    ('empty_selection', lambda e: migrate(e, exclude_tables=['public.*']),
     'failed', ['empty selection']),
    ('invalid_table_pattern', lambda e: migrate(e, tables=['a.b.c.d']),
     'failed', ["table pattern 'a.b.c.d'"]),
    ('destination_tables_hold_data', lambda e: migrate(e, name='taken_move', databases=['taken']),
     'failed', ['destination.conflicts', 'taken', 'items', 'holds rows']),
    ('invalid_start_at', lambda e: migrate(e, start_at='next tuesday'),
     'failed', ["start_at 'next tuesday' is not an ISO 8601 time"]),
    ('invalid_task_name', lambda e: migrate(e, name='Shop"; DROP TABLE orders; --'),
     'failed', ['task name', 'must start with a lower-case letter']),
    ('jobs_zero', lambda e: migrate(e, jobs=0),
     'failed', ['jobs must be at least 1']),
    ('unknown_plugin_migrate', lambda e: migrate(e, plugin='decoderbufs'),
     'failed', ['value of plugin must be one of: pgoutput, wal2json', 'decoderbufs']),
    ('unknown_plugin_install', lambda e: plugin(e, name='no_such_decoder'),
     'failed', ['no_such_decoder']),
    ('corrupt_plugin_archive', lambda e: plugin(e, src=e['files']['corrupt']),
     'failed', ['cannot read archive', 'wal2json-broken.zip']),
    ('truncated_plugin_archive', lambda e: plugin(e, src=e['files']['truncated']),
     'failed', ['cannot read archive', 'wal2json-cut.tar.gz']),
    ('plugin_checksum_mismatch', lambda e: plugin(e, src=e['files']['so'], checksum='sha256:' + '0' * 64),
     'failed', ['checksum']),
    ('source_privileges', lambda e: migrate(e, source=spec_with(e['src'], user='weak', password=WEAK_PASSWORD)),
     'failed', ['source.replication_privilege', 'role "weak" has neither REPLICATION nor superuser',
                'source.select_privilege', 'fresh.public.orders']),
    ('destination_privileges', lambda e: migrate(e, destination=spec_with(e['dst'], user='dweak',
                                                                          password=WEAK_PASSWORD)),
     'failed', ['destination', 'dweak']),
    ('same_server_both_sides', lambda e: migrate(e, destination=e['src'].spec()),
     'failed', ['same server']),
    ('task_name_used_by_another_task', lambda e: migrate(e, name='used', databases=['taken']),
     'failed', ['task name "used" is already used by another task', 'databases']),
    ('finish_missing_task', lambda e: (FINISH, dict(e['common'], name='no_such_task')),
     'failed', ['task no_such_task does not exist']),
    ('finish_finished_task_reports', lambda e: (FINISH, dict(e['common'], name='used')),
     'ok', ['task used is already finished']),
    ('cancel_twice', lambda e: migrate(e, name='gone', state='absent', databases=['later'], tables=['public.orders']),
     'ok', ['task gone is already cancelled']),
    ('cancel_missing_task', lambda e: migrate(e, name='never_was', state='absent'),
     'ok', ['task never_was does not exist']),
    ('verify_wrong_password', lambda e: (VERIFY, {'name': 'fresh_move', 'source': spec_with(e['src'], password='nope'),
                                                  'destination': e['dst'].spec(), 'databases': ['fresh']}),
     'failed', ['source.connection', 'authentication failed']),
    ('info_wrong_password', lambda e: (INFO, {'destination': spec_with(e['dst'], password='nope'), 'name': 'used'}),
     'failed', ['authentication failed']),
    ('source_config_bad_hba_address', lambda e: (SOURCE_CONFIG, {'source': e['src'].spec(), 'databases': ['fresh'],
                                                                 'migration_user': 'weak',
                                                                 'hba_addresses': ['300.1.2.3/40']}),
     'failed', ['300.1.2.3/40']),
]


@pytest.mark.parametrize('builder, expected_status, words', [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_fails_clearly_and_changes_nothing(env, builder, expected_status, words):
    src, dst = env['src'], env['dst']
    module, args = builder(env)
    disk = (env['worker_dir'], env['libdir'], os.path.expanduser('~/.pgdts'))
    before = (server_snapshot(src), server_snapshot(dst), disk_snapshot(*disk))
    status, result = env['runner'].module(module, args)
    after = (server_snapshot(src), server_snapshot(dst), disk_snapshot(*disk))
    print('%s -> %s: %s' % (module, status, result.get('msg')))
    assert status == expected_status, result
    text = result['msg']
    if module == VERIFY:     # its message names the failed items; their own messages say why
        text += ' | ' + ' | '.join('%s: %s' % (c['id'], c['message']) for c in result['checks'] if c['status'] == 'failed')
    for word in words:
        assert word in text, (word, text)
    # a message of the module's own, not an unhandled exception that Ansible reports for it
    assert 'Module failed' not in result['msg'] and 'Traceback' not in result['msg'], result['msg']
    for label, old, new in zip(('source', 'destination', 'disk'), before, after):
        assert old == new, '%s changed: %s' % (label, diff_snapshots(old, new))
