"""Every verify item judged on made-up facts: no server, only the judgement (checks.py) of the facts that
check_facts.gather() reads.

`healthy()` builds the facts of a source and a destination on which every item passes; each case below changes one
fact and asserts the status and a key word of the message of one item. The real gathering of these facts is tested
against real servers in tests/integration/test_verify_*.py.
"""

from __future__ import annotations

import collections
import os
import struct

import pytest

from ansible_collections.pgdts.migration.plugins.module_utils import catalog, check_facts, checks, task_state
from ansible_collections.pgdts.migration.plugins.module_utils.connection import ConnectionFailure, ServerSpec

TASK = 'shop_move'
ORDERS = 16400
CUSTOMERS = 16410


def row(**columns):
    """A fact row as the gathering returns it: a namedtuple read by column name."""
    return collections.namedtuple('Row', columns)(**columns)


def setting(value, display=None, source='configuration file'):
    return {'setting': value, 'unit': None, 'display': display or value, 'source': source}


def table(oid, name, schema='public', relpersistence='p', key=True, columns=None):
    t = catalog.Table('shop', schema, name, oid, 'r', relpersistence, 'd', 10, 8192)
    t.columns = columns or [catalog.Column('id', 'integer', 23, True, '', '', 1)]
    t.key_columns = ['id'] if key else []
    t.key_kind = 'primary' if key else None
    return t


def database_row(name='shop', encoding='UTF8', collate='C.UTF-8', provider='c', icu=None, can_create=True):
    return row(datname=name, datistemplate=False, datallowconn=True, encoding=encoding, datcollate=collate,
               datctype=collate, provider=provider, icu_locale=icu, can_create=can_create)


def set_tables(ctx, *tables):
    holder = ctx.src_dbs['shop']
    holder.facts['tables'] = list(tables)
    holder.facts['by_oid'] = {t.oid: t for t in tables}
    holder.facts['selected'] = catalog.select_tables(list(tables), ctx.include, ctx.exclude)


def healthy(plugin='pgoutput', incremental=True, resuming=False, migrate_roles=False):
    """Facts of a source database "shop" with one keyed table and an empty destination: every item passes."""
    source = ServerSpec(host='src.example', user='mover', dbname='postgres')
    destination = ServerSpec(host='dst.example', user='mover', dbname='postgres')
    ctx = check_facts.Facts(source, destination, TASK, None, None, None, plugin, incremental, resuming, migrate_roles)
    ctx.object_re = task_state.object_name_re(TASK)
    ctx.max_retained_wal = '10GB'
    src = ctx.src
    src.facts.update({
        'version': 160004, 'version_text': '16.4',
        'role': row(rolname='mover', rolsuper=False, rolreplication=True, rolcreatedb=False),
        'fence_rights': row(rolsuper=False, signal_backend=True, not_owned=[]),
        'databases': [database_row(), database_row('postgres')],
        'settings': {'wal_level': setting('logical'), 'max_replication_slots': setting('10'),
                     'max_wal_senders': setting('10'), 'max_slot_wal_keep_size': setting('-1', '-1'),
                     'server_version': setting('16.4')},
        'slots': [], 'walsenders': 0, 'long_transactions': [], 'hidden_xid_sessions': 0, 'prepared': [],
        'identity': row(in_recovery=False, started='2026-12-01 10:00:00+00'), 'system_identifier': '7300000000000000001',
    })
    ctx.db_names = ['shop']
    ctx.databases_option = ['shop']
    ctx.repl = {'shop': None}
    ctx.plugin_result = (checks.PASS, 'decoding plugin %s loads: a temporary slot was created and dropped in database '
                                      '"shop"' % plugin, '')
    shop = check_facts.Holder('shop')
    shop.facts.update({
        'settings': {'wal_sender_timeout': setting('60000', '1min', 'default'),
                     'statement_timeout': setting('0', '0', 'default'),
                     'idle_in_transaction_session_timeout': setting('0', '0', 'default'),
                     'transaction_timeout': setting('0', '0', 'default')},
        'no_replica_identity': [], 'no_select': [], 'no_usage': [], 'rls_filtered': [],
        'sequences': [row(nspname='public', relname='orders_id_seq', has_sequence_privilege=True, oid=16399)],
        'not_owned': [], 'can_create': True, 'triggers': [], 'rules': [], 'foreign_keys': [], 'matviews': [],
        'large_objects': 0, 'extensions': [], 'collations': [], 'publications': [], 'size': 8192,
    })
    ctx.src_dbs['shop'] = shop
    set_tables(ctx, table(ORDERS, 'orders'))
    ctx.expected_names = {task_state.object_name(TASK, 'shop'): 'shop'}
    dst = ctx.dst
    dst.facts.update({
        'version': 160004, 'version_text': '16.4',
        'role': row(rolname='mover', rolsuper=False, rolreplication=False, rolcreatedb=True),
        'databases': [database_row('postgres')],
        'settings': {'max_replication_slots': setting('10'), 'server_version': setting('16.4')},
        'identity': row(in_recovery=False, started='2026-12-02 11:00:00+00'), 'system_identifier': '7300000000000000002',
        'available_extensions': [row(name='hstore', version='1.8', superuser=False, trusted=True)],
        'catalog_collations': [row(collname='C.utf8', collcollate='C.UTF-8', provider='c'),
                               row(collname='C', collcollate='C', provider='c')],
        'function_privileges': row(**{'f%d' % i: True for i in range(len(checks.APPLY_FUNCTIONS))}),
        'srr_privilege': True, 'origins': [], 'origin_states': 0,
    })
    return ctx


def client_programs(tmp_path, major=16):
    """A directory with pg_dump and pg_restore that say they are of PostgreSQL `major` (made-up programs)."""
    for name in ('pg_dump', 'pg_restore'):
        path = tmp_path / name
        path.write_text('#!/bin/sh\necho "%s (PostgreSQL) %d.4"\n' % (name, major))
        path.chmod(0o755)
    return str(tmp_path)


def set_source(key, value):
    return lambda ctx, tmp: ctx.src.facts.__setitem__(key, value)


def set_dest(key, value):
    return lambda ctx, tmp: ctx.dst.facts.__setitem__(key, value)


def set_shop(key, value):
    return lambda ctx, tmp: ctx.src_dbs['shop'].facts.__setitem__(key, value)


def set_ctx(**values):
    def change(ctx, tmp):
        for key, value in values.items():
            setattr(ctx, key, value)
    return change


def source_setting(name, value, display=None, source='configuration file'):
    return lambda ctx, tmp: ctx.src.facts['settings'].__setitem__(name, setting(value, display, source))


def shop_setting(name, value, source='database user'):
    return lambda ctx, tmp: ctx.src_dbs['shop'].facts['settings'].__setitem__(name, setting(value, value, source))


def both(*changes):
    def change(ctx, tmp):
        for one in changes:
            one(ctx, tmp)
    return change


def own_slot(active=False, plugin='pgoutput', wal_status='reserved'):
    return row(slot_name=task_state.object_name(TASK, 'shop'), plugin=plugin, slot_type='logical', database='shop',
               active=active, active_pid=4242 if active else None, temporary=False, wal_status=wal_status)


def other_slot(name='standby_1'):
    return row(slot_name=name, plugin=None, slot_type='physical', database=None, active=False, active_pid=None,
               temporary=False, wal_status='reserved')


def with_fake_bindir(ctx, tmp):
    ctx.pg_bindir = client_programs(tmp)


def unlogged(ctx, tmp):
    set_tables(ctx, table(ORDERS, 'orders', relpersistence='u'))


def numeric_column(ctx, tmp):
    set_tables(ctx, table(ORDERS, 'orders', columns=[catalog.Column('id', 'integer', 23, True, '', '', 1),
                                                     catalog.Column('price', 'numeric', 1700, False, '', '', 2)]))


def generated_column(ctx, tmp):
    set_tables(ctx, table(ORDERS, 'orders', columns=[catalog.Column('id', 'integer', 23, True, '', '', 1),
                                                     catalog.Column('total', 'numeric', 1700, False, 's', '', 2)]))


def keyless(ctx, tmp):
    set_tables(ctx, table(ORDERS, 'orders', key=False))
    ctx.src_dbs['shop'].facts['no_replica_identity'] = [row(oid=ORDERS)]


def foreign_key_out(ctx, tmp):
    ctx.include = ['public.orders']
    set_tables(ctx, table(ORDERS, 'orders'), table(CUSTOMERS, 'customers'))
    ctx.src_dbs['shop'].facts['foreign_keys'] = [row(conrelid=ORDERS, conname='orders_customer_fkey',
                                                     confrelid=CUSTOMERS, ref_schema='public', ref_name='customers',
                                                     inherited=False)]


def foreign_key_in(ctx, tmp):
    set_tables(ctx, table(ORDERS, 'orders'), table(CUSTOMERS, 'customers'))
    ctx.src_dbs['shop'].facts['foreign_keys'] = [row(conrelid=ORDERS, conname='orders_customer_fkey',
                                                     confrelid=CUSTOMERS, ref_schema='public', ref_name='customers',
                                                     inherited=False)]


def matview_left_out(ctx, tmp):
    ctx.include = ['public.orders', '*.daily']
    set_tables(ctx, table(ORDERS, 'orders'))
    ctx.src_dbs['shop'].facts['matviews'] = [row(nspname='report', relname='daily')]


def destination_database(encoding='UTF8', relations=(), has_rows=None, schemas=()):
    def change(ctx, tmp):
        ctx.dst.facts['databases'].append(database_row('shop', encoding=encoding))
        holder = check_facts.Holder('shop')
        holder.facts.update({'relations': list(relations), 'schemas': list(schemas), 'extensions': [],
                             'collations': [], 'has_rows': dict(has_rows or {})})
        ctx.dst_dbs['shop'] = holder
    return change


def local_data_directory(free_needed):
    """The destination's data directory on this host (its pg_control holds the destination's system identifier)."""
    def change(ctx, tmp):
        (tmp / 'global').mkdir()
        (tmp / 'global' / 'pg_control').write_bytes(struct.pack('<Q', int(ctx.dst.get('system_identifier'))) + b'\0' * 8)
        ctx.dst.facts['settings']['data_directory'] = setting(str(tmp))
        stats = os.statvfs(str(tmp))
        free = stats.f_bavail * stats.f_frsize
        ctx.src_dbs['shop'].facts['size'] = int(free * free_needed)
    return change


def roles_found(create=(), kept=(), problem=None, without_password=()):
    return {'create': list(create), 'kept': list(kept), 'memberships': 0, 'problem': problem,
            'without_password': list(without_password)}


def roles_preview(found):
    return set_ctx(migrate_roles=True, roles_preview=found)


P, W, F = checks.PASS, checks.WARNING, checks.FAILED

# (item id, change of the healthy facts or None, status, a word of the message)
CASES = [
    ('task.name', None, P, 'is valid'),
    ('task.name', set_ctx(task_error='task name "Bad Name" must start with a lower-case letter'), F, 'Bad Name'),
    ('source.connection', None, P, 'connected to the source mover@src.example'),
    ('source.connection', lambda ctx, tmp: setattr(ctx.src, 'failure', ConnectionFailure(
        'auth_failed', 'password authentication failed for user "mover"')), F, 'password authentication failed'),
    ('destination.connection', None, P, 'connected to the destination'),
    ('destination.connection', lambda ctx, tmp: setattr(ctx.dst, 'failure', ConnectionFailure(
        'unreachable', 'connection refused')), F, 'cannot connect to the destination'),
    ('source.databases', None, P, '1 database selected'),
    ('source.databases', set_ctx(db_problems=[('shopp', 'does not exist on the source')]), F, '"shopp" does not exist'),
    ('source.replication_connection', None, P, 'replication connections (replication=database) work'),
    ('source.replication_connection', set_ctx(repl={'shop': 'FATAL: must be superuser or replication role'}), F,
     'must be superuser or replication role'),
    ('servers.distinct', None, P, 'different servers'),
    ('servers.distinct', both(set_dest('identity', row(in_recovery=False, started='2026-12-01 10:00:00+00')),
                              set_dest('system_identifier', '7300000000000000001')), F, 'the same server'),
    ('source.version', None, P, 'PostgreSQL 16.4 (supported'),
    ('source.version', set_source('version', 100023), F, 'supports sources from 11'),
    ('source.version', set_source('version', 190001), W, 'newer than the newest major'),
    ('destination.version', None, P, 'same major version (16)'),
    ('destination.version', set_dest('version', 150008), F, 'older than the source'),
    ('destination.version', set_dest('version', 170002), W, 'major version upgrade'),
    ('worker.client_programs', with_fake_bindir, P, 'pg_dump and pg_restore of PostgreSQL 16'),
    ('worker.client_programs', both(with_fake_bindir, set_source('version', 990000), set_dest('version', 990000)), F,
     'no pg_dump and pg_restore of PostgreSQL 99'),
    ('source.recovery', None, P, 'is a primary'),
    ('source.recovery', set_source('identity', row(in_recovery=True, started='x')), F, 'standby'),
    ('destination.recovery', None, P, 'accepts writes'),
    ('destination.recovery', set_dest('identity', row(in_recovery=True, started='x')), F, 'standby'),
    ('source.wal_level', None, P, 'wal_level is logical'),
    ('source.wal_level', source_setting('wal_level', 'replica'), F, 'wal_level is replica'),
    ('source.replication_slots', None, P, 'max_replication_slots = 10, 0 in use'),
    ('source.replication_slots', both(source_setting('max_replication_slots', '1'), set_source('slots', [other_slot()])),
     F, 'not enough free replication slots'),
    ('source.replication_slots', both(source_setting('max_replication_slots', '2'), set_source('slots', [other_slot()])),
     W, 'no spare replication slot'),
    ('source.wal_senders', None, P, 'max_wal_senders = 10'),
    ('source.wal_senders', both(source_setting('max_wal_senders', '2'), set_source('walsenders', 2)), F,
     'not enough free WAL senders'),
    ('source.max_slot_wal_keep_size', None, P, 'keeps all the WAL'),
    ('source.max_slot_wal_keep_size', source_setting('max_slot_wal_keep_size', '1024', '1GB'), W,
     'invalidates the slot'),
    ('source.wal_retention', None, P, 'max_retained_wal = 10GB'),
    ('source.wal_retention', set_ctx(max_retained_wal=None), W, 'max_slot_wal_keep_size = -1 (unlimited)'),
    ('source.wal_retention', both(set_ctx(max_retained_wal=None), source_setting('max_slot_wal_keep_size', '1024', '1GB')),
     P, 'max_slot_wal_keep_size = 1GB limits'),
    ('source.wal_retention', both(set_ctx(max_retained_wal=None), lambda ctx, tmp: ctx.src.facts['settings'].pop(
        'max_slot_wal_keep_size')), W, 'does not exist before PostgreSQL 13'),
    ('source.wal_retention', both(set_ctx(max_retained_wal=None), set_source('wal_written', row(
        bytes=20 * 1024 ** 3, seconds=2 * 86400.0))), W, '10.0 GB of WAL per day on average over the last 2 days'),
    ('source.wal_retention', both(set_ctx(max_retained_wal=None), set_source('wal_written', row(
        bytes=20 * 1024 ** 3, seconds=3600.0))), W, 'cannot read the free space under pg_wal'),
    ('source.wal_sender_timeout', None, P, 'wal_sender_timeout is 1min'),
    ('source.wal_sender_timeout', shop_setting('wal_sender_timeout', '0'), W, 'never notices a dead connection'),
    ('source.statement_timeout', None, P, 'statement_timeout is 0'),
    ('source.statement_timeout', shop_setting('statement_timeout', '30000'), W, 'is cancelled'),
    ('source.idle_in_transaction_session_timeout', None, P, 'idle_in_transaction_session_timeout is 0'),
    ('source.idle_in_transaction_session_timeout', shop_setting('idle_in_transaction_session_timeout', '10000'), W,
     'would be ended'),
    ('source.replication_privilege', None, P, 'has the REPLICATION attribute'),
    ('source.replication_privilege', set_source('role', row(rolname='mover', rolsuper=False, rolreplication=False,
                                                            rolcreatedb=False)), F, 'neither REPLICATION'),
    ('source.select_privilege', None, P, 'can read every selected table (1)'),
    ('source.select_privilege', set_shop('no_select', [row(oid=ORDERS)]), F, 'lacks read access'),
    ('source.select_privilege', set_shop('sequences', [row(nspname='public', relname='orders_id_seq',
                                                           has_sequence_privilege=False, oid=16399)]), F,
     'sequence shop.public.orders_id_seq'),
    ('source.row_security', None, P, 'hides no row'),
    ('source.row_security', set_shop('rls_filtered', [row(oid=ORDERS, forced=True)]), F, 'would hide rows'),
    ('source.fence_privilege', None, P, 'can fence'),
    ('source.fence_privilege', set_source('fence_rights', row(rolsuper=False, signal_backend=False, not_owned=['shop'])),
     F, 'pg_signal_backend'),
    ('source.publication_privilege', None, P, 'may create the publication'),
    ('source.publication_privilege', set_shop('not_owned', [row(oid=ORDERS)]), F, 'does not own 1 table'),
    ('source.long_transactions', None, P, 'no transaction has held'),
    ('source.long_transactions', set_source('long_transactions', [row(
        pid=777, usename='app', datname='shop', application_name='psql', state='idle in transaction',
        backend_type='client backend', seconds=60)]), W, 'pid 777'),
    ('source.prepared_transactions', None, P, 'no prepared'),
    ('source.prepared_transactions', set_source('prepared', [row(gid='tx1', owner='app', database='shop', seconds=9)]),
     W, "'tx1' (database shop"),
    ('plugin.load', None, P, 'loads'),
    ('plugin.load', set_ctx(plugin_result=(F, 'decoding plugin wal2json could not be used in database "shop": could '
                                              'not access file "wal2json"', 'install it')), F, 'could not access file'),
    ('plugin.numeric_special_values', numeric_column, P, 'carries NaN and Infinity'),
    ('plugin.numeric_special_values', both(set_ctx(plugin='wal2json'), numeric_column), W, 'shop.public.orders.price'),
    ('task.objects', None, P, 'no slot, publication or origin'),
    ('task.objects', set_source('slots', [own_slot()]), F, 'already exist'),
    ('task.objects', both(set_ctx(resuming=True), set_source('slots', [own_slot(plugin='wal2json')])), F,
     'uses plugin wal2json'),
    ('task.objects', both(set_ctx(resuming=True), set_source('slots', [own_slot(active=True)])), W, 'in use by pid 4242'),
    ('tables.selection', None, P, '1 table selected in 1 database'),
    ('tables.selection', set_shop('selected', []), F, 'empty selection'),
    ('tables.selection', set_ctx(selection_error='a.b.c.d has too many parts'), F, 'invalid table pattern'),
    ('tables.missing', None, P, 'no table patterns given'),
    ('tables.missing', set_ctx(include=['public.orders']), P, 'every table pattern matches'),
    ('tables.missing', set_ctx(include=['public.nope']), F, 'public.nope (no table matches in "shop")'),
    ('tables.replica_identity', None, P, 'every selected table has a primary key'),
    ('tables.replica_identity', keyless, F, 'no primary key or usable replica identity'),
    ('tables.replica_identity', both(keyless, set_ctx(replica_identity='full')), W, 'sets REPLICA IDENTITY FULL'),
    ('tables.replica_identity', both(keyless, set_ctx(incremental=False)), P, 'only matters for incremental sync'),
    ('tables.triggers', None, P, 'no selected table has triggers'),
    ('tables.triggers', set_shop('triggers', [row(relid=ORDERS, name='audit', enabled='O')]), W, '1 trigger on'),
    ('tables.triggers', set_shop('triggers', [row(relid=ORDERS, name='audit', enabled='A')]), W, 'ENABLE ALWAYS'),
    ('tables.rules', None, P, 'no selected table has rules'),
    ('tables.rules', set_shop('rules', [row(relid=ORDERS, name='no_delete', enabled='O', ev_type='4',
                                            is_instead=True)]), W, '1 rule on'),
    ('tables.unlogged', None, P, 'no selected table is unlogged'),
    ('tables.unlogged', unlogged, W, 'unlogged'),
    ('tables.materialized_views', None, P, 'no materialized view'),
    ('tables.materialized_views', set_shop('matviews', [row(nspname='public', relname='daily')]), P,
     'pgdts refreshes them'),
    ('tables.materialized_views', matview_left_out, W, 'not carried'),
    ('tables.large_objects', None, P, 'no large objects'),
    ('tables.large_objects', set_shop('large_objects', 3), P, 'copied with the full copy'),
    ('tables.large_objects', both(set_ctx(include=['public.*']), set_shop('large_objects', 3)), W,
     'does not carry large objects'),
    ('tables.generated_columns', None, P, 'no selected table has generated columns'),
    ('tables.generated_columns', generated_column, W, 'shop.public.orders.total'),
    ('tables.foreign_keys', foreign_key_in, P, 'references a selected table'),
    ('tables.foreign_keys', foreign_key_out, F, 'reference tables that are not selected'),
    ('destination.extensions', None, P, 'use no extension'),
    ('destination.extensions', set_shop('extensions', [row(extname='hstore', extversion='1.8')]), P,
     'can provide every extension used on the source: hstore'),
    ('destination.extensions', set_shop('extensions', [row(extname='postgis', extversion='3.4.2')]), F,
     'postgis 3.4.2 in "shop" is not available'),
    ('destination.extensions', set_shop('extensions', [row(extname='hstore', extversion='1.7')]), W,
     'version 1.7 is not available'),
    ('destination.encoding', None, P, 'encodings match'),
    ('destination.encoding', destination_database(encoding='LATIN1'), F, 'is UTF8 on the source and LATIN1'),
    ('destination.encoding', destination_database(encoding='SQL_ASCII'), W, 'SQL_ASCII'),
    ('destination.collation', None, P, 'available and equal'),
    ('destination.collation', set_source('databases', [database_row(collate='de_DE.UTF-8')]), W,
     'LC_COLLATE de_DE.UTF-8 is not among'),
    ('destination.collation', set_shop('collations', [row(nspname='intl', collname='german', provider='i')]), F,
     'collation intl.german in "shop"'),
    ('destination.create_privilege', None, P, 'can create the databases'),
    ('destination.create_privilege', set_dest('role', row(rolname='mover', rolsuper=False, rolreplication=False,
                                                          rolcreatedb=False)), F, 'may not create databases'),
    ('destination.apply_privilege', None, P, 'may use replication origins'),
    ('destination.apply_privilege', set_dest('srr_privilege', False), F, 'SET session_replication_role'),
    ('destination.apply_privilege', set_dest('function_privileges', row(**{'f%d' % i: i != 0 for i in range(
        len(checks.APPLY_FUNCTIONS))})), F, 'EXECUTE on pg_replication_origin_create'),
    ('destination.replication_origins', None, P, 'max_replication_slots = 10, 0 origins in use'),
    ('destination.replication_origins', lambda ctx, tmp: ctx.dst.facts['settings'].__setitem__(
        'max_replication_slots', setting('0')), F, 'max_replication_slots = 0'),
    ('destination.replication_origins', both(lambda ctx, tmp: ctx.dst.facts['settings'].__setitem__(
        'max_replication_slots', setting('3')), set_dest('origin_states', 3)), F, 'not enough replication origin'),
    ('destination.conflicts', None, P, 'none of the selected schemas or tables exists'),
    ('destination.conflicts', destination_database(
        relations=[row(oid=24000, nspname='public', relname='orders', relkind='r', readable=True)],
        has_rows={24000: True}), F, 'table shop.public.orders exists and holds rows'),
    ('destination.conflicts', destination_database(
        relations=[row(oid=24000, nspname='public', relname='orders', relkind='r', readable=True)],
        has_rows={24000: False}), W, 'exists and is empty'),
    ('destination.roles', None, P, 'migrate_roles is off'),
    ('destination.roles', roles_preview(roles_found(create=['app'], kept=['mover'])), P,
     '1 role(s) to create, 1 already on the destination'),
    ('destination.roles', roles_preview(roles_found(create=['app'], without_password=['app'])), W,
     '"app" will be created without a password'),
    ('destination.roles', roles_preview(roles_found(
        create=['admin'], problem='the destination login may not create superuser role "admin"')), F,
     'may not create superuser role'),
    ('destination.disk_space', None, P, 'cannot be measured from here'),
    ('destination.disk_space', local_data_directory(0.1), P, 'enough free space'),
    ('destination.disk_space', local_data_directory(0.9), W, 'tight free space'),
    ('destination.disk_space', local_data_directory(2), F, 'not enough free space'),
]


def judge(check_id, change, tmp_path):
    ctx = healthy()
    if change:
        change(ctx, tmp_path)
    return dict(checks.ITEMS)[check_id](ctx, check_id)


@pytest.mark.parametrize('check_id, change, status, word', CASES,
                         ids=['%s-%s-%d' % (c[0], c[2], i) for i, c in enumerate(CASES)])
def test_item(check_id, change, status, word, tmp_path):
    result = judge(check_id, change, tmp_path)
    assert result['id'] == check_id
    assert (result['status'], word in result['message']) == (status, True), result['message']


def test_every_item_has_a_pass_and_a_non_pass_case():
    passing = {c[0] for c in CASES if c[2] == checks.PASS}
    other = {c[0] for c in CASES if c[2] != checks.PASS}
    assert passing == other == set(checks.CHECK_IDS)


DESTINATION_ONLY = ('destination.connection', 'destination.recovery', 'destination.create_privilege',
                    'destination.apply_privilege', 'destination.replication_origins')
NOT_APPLYING = ('task.name', 'tables.missing', 'plugin.numeric_special_values', 'destination.roles')


@pytest.mark.parametrize('check_id', [i for i in checks.CHECK_IDS if i not in DESTINATION_ONLY + NOT_APPLYING])
def test_no_source_connection_fails_every_source_item(check_id, tmp_path):
    """Without a source connection every item that reads the source fails, none passes on facts it does not have."""
    def change(ctx, tmp):
        ctx.src.failure = ConnectionFailure('unreachable', 'connection refused')
    result = judge(check_id, change, tmp_path)
    assert result['status'] == checks.FAILED, result


def test_roles_preview_error_is_raised_for_run_checks_to_report(tmp_path):
    """A roles preview that failed while gathering is raised by destination.roles, which run_checks reports as
    "the check itself failed" (as when the item read the roles itself)."""
    error = RuntimeError('permission denied for table pg_authid')
    with pytest.raises(RuntimeError, match='pg_authid'):
        judge('destination.roles', roles_preview(error), tmp_path)
