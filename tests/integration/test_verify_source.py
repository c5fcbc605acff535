"""The verify catalogue (checks.run_checks) against one real source and one real destination.

Every test works in its own databases and roles, so the two module-scoped clusters are shared by all of them.
"""

from __future__ import annotations

import os
import time

import pytest
from psycopg import sql

from ansible_collections.pgdts.migration.plugins.module_utils import checks, task_state
from tests.harness.cluster import free_port, pg_bindir
from verify_support import (
    create_role, drop_database, drop_role, recreate_database, server_objects, spec, statuses, verify,
)

ALL_PASS_DDL = (
    'CREATE TABLE public.customers (id bigserial PRIMARY KEY, name text NOT NULL)',
    'CREATE TABLE public.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, '
    'customer_id bigint REFERENCES public.customers(id), total integer)',
    'CREATE SCHEMA sales',
    'CREATE TABLE sales.items (id int PRIMARY KEY, sku text UNIQUE)',
    "INSERT INTO public.customers (name) VALUES ('a'), ('b')",
    'INSERT INTO public.orders (customer_id, total) VALUES (1, 10), (2, 20)',
)


@pytest.fixture(scope='module')
def src(module_pg_factory):
    return module_pg_factory('vsrc', settings={'max_prepared_transactions': '2'})


@pytest.fixture(scope='module')
def dst(module_pg_factory):
    return module_pg_factory('vdst')


def test_clean_source_passes_every_check_and_changes_nothing(src, dst):
    recreate_database(src, 'v_clean', *ALL_PASS_DDL)
    try:
        before_src, before_dst = server_objects(src, ['v_clean']), server_objects(dst)
        result = verify(src, dst, databases=['v_clean'], max_retained_wal='10GB')
        assert {i: r['status'] for i, r in result.items() if r['status'] != 'pass'} == {}
        # without a limit on the task the source's unlimited max_slot_wal_keep_size is a risk for its disk
        unlimited = verify(src, dst, databases=['v_clean'])['source.wal_retention']
        assert unlimited['status'] == 'warning' and '(unlimited)' in unlimited['message'], unlimited
        assert server_objects(src, ['v_clean']) == before_src
        assert server_objects(dst) == before_dst
        assert result['tables.selection']['message'] == '3 tables selected in 1 database'
        assert result['plugin.load']['message'].startswith('decoding plugin pgoutput loads')
        assert result['source.wal_level']['objects'] == [
            {'type': 'setting', 'name': 'wal_level', 'value': 'logical', 'required': 'logical'}]
        assert 'needs 1 (one per database)' in result['source.replication_slots']['message']
        assert result['destination.disk_space']['objects'][0]['free_bytes'] > 0
        assert checks.summarize(result.values()) == {'pass': len(checks.CHECK_IDS), 'warning': 0, 'failed': 0}
    finally:
        drop_database(src, 'v_clean')


def test_unreachable_servers_become_failed_items(src, dst):
    bad_source = spec(src, password='Wrong-Password-1')
    result = verify(src, dst, source_spec=bad_source, databases=['postgres'])
    assert result['source.connection']['status'] == 'failed'
    assert 'authentication failed for user "postgres"' in result['source.connection']['message']
    assert 'Wrong-Password-1' not in repr(result)
    for check_id in ('source.databases', 'source.wal_level', 'plugin.load', 'tables.foreign_keys', 'destination.conflicts'):
        assert result[check_id]['status'] == 'failed'
        assert result[check_id]['message'].startswith('skipped because pgdts could not connect to the source')
    assert result['destination.connection']['status'] == 'pass'
    assert result['destination.apply_privilege']['status'] == 'pass'

    closed = spec(dst, port=free_port())
    result = verify(src, dst, dest_spec=closed, databases=['postgres'])
    assert result['destination.connection']['status'] == 'failed'
    assert 'cannot reach 127.0.0.1:' in result['destination.connection']['message']
    assert 'listen_addresses' in result['destination.connection']['hint']
    assert result['destination.conflicts']['message'].startswith('skipped because pgdts could not connect to the '
                                                                 'destination')
    assert result['source.connection']['status'] == 'pass'
    assert result['source.wal_level']['status'] == 'pass'


def test_same_server_is_refused(src, dst):
    recreate_database(src, 'v_same', 'CREATE TABLE t (id int PRIMARY KEY)')
    try:
        result = verify(src, src, databases=['v_same'])
        assert result['servers.distinct']['status'] == 'failed'
        assert 'same server' in result['servers.distinct']['message']
        assert verify(src, dst, databases=['v_same'])['servers.distinct']['status'] == 'pass'
    finally:
        drop_database(src, 'v_same')


def test_database_selection(src, dst):
    recreate_database(src, 'v_db_one', 'CREATE TABLE t (id int PRIMARY KEY)')
    recreate_database(src, task_state.STATE_DATABASE)
    create_role(src, 'v_noconnect', 'REPLICATION')
    try:
        with src.connect() as conn:
            conn.execute('REVOKE CONNECT ON DATABASE v_db_one FROM PUBLIC')
        result = verify(src, dst, databases=['v_db_one', 'nope', 'template1', 'pgdts'])
        item = result['source.databases']
        assert item['status'] == 'failed'
        problems = {o['name']: o['problem'] for o in item['objects']}
        assert problems == {'nope': 'does not exist on the source', 'template1': 'is a template database',
                            'pgdts': 'is the name of the pgdts state database and cannot be migrated'}
        # the default selection: every database that allows connections, never the state database
        result = verify(src, dst)
        names = [o['name'] for o in result['source.databases']['objects']]
        assert 'v_db_one' in names and 'postgres' in names
        assert 'pgdts' not in names and 'template1' not in names and 'template0' not in names
        # a database the role may not connect to
        result = verify(src, dst, source_user='v_noconnect', databases=['v_db_one'])
        item = result['source.databases']
        assert item['status'] == 'failed'
        assert 'permission denied for database "v_db_one"' in item['message']
        assert 'GRANT CONNECT' in item['hint']
        assert result['tables.replica_identity']['message'].startswith('skipped for "v_db_one"')
    finally:
        drop_database(src, 'v_db_one')
        drop_database(src, task_state.STATE_DATABASE)
        drop_role(src, 'v_noconnect')


def test_replication_role_and_privileges(src, dst):
    recreate_database(src, 'v_privs',
                      'CREATE SCHEMA app',
                      'CREATE TABLE app.accounts (id serial PRIMARY KEY, name text)',
                      'CREATE TABLE public.plain (id int PRIMARY KEY)')
    create_role(src, 'v_norepl')
    create_role(src, 'v_repl', 'REPLICATION')
    try:
        result = verify(src, dst, source_user='v_norepl', databases=['v_privs'])
        assert result['source.replication_privilege']['status'] == 'failed'
        assert result['source.replication_privilege']['hint'].startswith('ALTER ROLE v_norepl REPLICATION;')
        item = result['source.replication_connection']
        assert item['status'] == 'failed'
        assert 'must be superuser or replication role' in item['message']
        assert 'ALTER ROLE v_norepl REPLICATION' in item['hint']
        assert result['plugin.load']['status'] == 'failed'

        result = verify(src, dst, source_user='v_repl', databases=['v_privs'])
        assert statuses(result, 'source.replication_privilege', 'source.replication_connection', 'plugin.load') == {
            'source.replication_privilege': 'pass', 'source.replication_connection': 'pass', 'plugin.load': 'pass'}
        item = result['source.select_privilege']
        assert item['status'] == 'failed'
        missing = {(o['type'], o.get('schema'), o['name']) for o in item['objects']}
        assert missing == {('table', 'app', 'accounts'), ('table', 'public', 'plain'), ('schema', None, 'app'),
                           ('sequence', 'app', 'accounts_id_seq')}
        assert 'GRANT USAGE ON SCHEMA app TO v_repl;' in item['hint']
        item = result['source.publication_privilege']
        assert item['status'] == 'failed'
        assert 'does not own 2 tables' in item['message'] and 'no CREATE privilege on database "v_privs"' in item['message']
        # wal2json needs no publication
        assert verify(src, dst, source_user='v_repl', databases=['v_privs'],
                      plugin='wal2json')['source.publication_privilege']['status'] == 'pass'

        with src.connect('v_privs') as conn:
            for statement in ('GRANT USAGE ON SCHEMA app TO v_repl', 'GRANT SELECT ON ALL TABLES IN SCHEMA app, public TO v_repl',
                              'GRANT SELECT ON ALL SEQUENCES IN SCHEMA app TO v_repl'):
                conn.execute(statement)
        result = verify(src, dst, source_user='v_repl', databases=['v_privs'])
        assert result['source.select_privilege']['status'] == 'pass'
        assert result['source.publication_privilege']['status'] == 'failed'

        with src.connect('v_privs') as conn:
            conn.execute('ALTER TABLE app.accounts OWNER TO v_repl')
            conn.execute('ALTER TABLE public.plain OWNER TO v_repl')
            conn.execute('GRANT CREATE ON DATABASE v_privs TO v_repl')
        result = verify(src, dst, source_user='v_repl', databases=['v_privs'])
        assert result['source.publication_privilege']['status'] == 'pass'
        assert result['source.select_privilege']['status'] == 'pass'
    finally:
        drop_database(src, 'v_privs')
        drop_role(src, 'v_norepl')
        drop_role(src, 'v_repl')


def _set_system(cluster, name, value):
    with cluster.connect() as conn:
        if value is None:
            conn.execute(sql.SQL('ALTER SYSTEM RESET {}').format(sql.Identifier(name)))
        else:
            conn.execute(sql.SQL('ALTER SYSTEM SET {} = {}').format(sql.Identifier(name), sql.Literal(value)))
        conn.execute('SELECT pg_reload_conf()')
    time.sleep(0.3)


def test_max_slot_wal_keep_size(src, dst):
    recreate_database(src, 'v_keep', 'CREATE TABLE t (id int PRIMARY KEY)')
    try:
        assert verify(src, dst, databases=['v_keep'])['source.max_slot_wal_keep_size']['status'] == 'pass'
        _set_system(src, 'max_slot_wal_keep_size', '1GB')
        item = verify(src, dst, databases=['v_keep'])['source.max_slot_wal_keep_size']
        assert item['status'] == 'warning'
        assert 'max_slot_wal_keep_size = 1GB' in item['message'] and 'invalidates the slot' in item['message']
        assert item['hint'].startswith('ALTER SYSTEM SET max_slot_wal_keep_size = -1;')
        assert item['objects'] == [{'type': 'setting', 'name': 'max_slot_wal_keep_size', 'value': '1GB'}]
    finally:
        _set_system(src, 'max_slot_wal_keep_size', None)
        drop_database(src, 'v_keep')


def test_session_timeouts_follow_role_and_database_settings(src, dst):
    recreate_database(src, 'v_timeouts', 'CREATE TABLE t (id int PRIMARY KEY)')
    create_role(src, 'v_timeout_role', 'SUPERUSER')
    ids = ('source.wal_sender_timeout', 'source.statement_timeout', 'source.idle_in_transaction_session_timeout')
    try:
        result = verify(src, dst, databases=['v_timeouts'])
        assert statuses(result, *ids) == dict.fromkeys(ids, 'pass')
        with src.connect() as conn:
            conn.execute("ALTER DATABASE v_timeouts SET statement_timeout = '5min'")
            conn.execute("ALTER DATABASE v_timeouts SET idle_in_transaction_session_timeout = '30s'")
            conn.execute("ALTER DATABASE v_timeouts SET wal_sender_timeout = '10s'")
            conn.execute("ALTER ROLE v_timeout_role IN DATABASE v_timeouts SET statement_timeout = '1h'")
        result = verify(src, dst, databases=['v_timeouts'])
        assert statuses(result, *ids) == dict.fromkeys(ids, 'warning')
        item = result['source.statement_timeout']
        assert 'statement_timeout is 5min in "v_timeouts" (set by database)' in item['message']
        assert item['hint'].startswith('ALTER ROLE postgres SET statement_timeout = 0;')
        assert item['objects'] == [{'type': 'setting', 'name': 'statement_timeout', 'database': 'v_timeouts',
                                    'value': '5min', 'set_by': 'database'}]
        assert 'idle_in_transaction_session_timeout is 30s' in result['source.idle_in_transaction_session_timeout']['message']
        assert 'wal_sender_timeout is 10s' in result['source.wal_sender_timeout']['message']
        # a per-role-and-database value needs the matching fix
        item = verify(src, dst, source_user='v_timeout_role', databases=['v_timeouts'])['source.statement_timeout']
        assert '(set by database user)' in item['message']
        assert item['hint'].startswith('ALTER ROLE v_timeout_role IN DATABASE v_timeouts SET statement_timeout = 0;')
        with src.connect() as conn:
            conn.execute("ALTER DATABASE v_timeouts SET wal_sender_timeout = 0")
        item = verify(src, dst, databases=['v_timeouts'])['source.wal_sender_timeout']
        assert item['status'] == 'warning' and 'wal_sender_timeout is 0 in "v_timeouts"' in item['message']
    finally:
        drop_database(src, 'v_timeouts')
        drop_role(src, 'v_timeout_role')


def test_long_running_transaction_warns_and_plugin_check_still_answers(src, dst):
    recreate_database(src, 'v_long', 'CREATE TABLE t (id int PRIMARY KEY)')
    holder = src.connect('v_long', autocommit=False)
    try:
        assert verify(src, dst, databases=['v_long'])['source.long_transactions']['status'] == 'pass'
        holder.execute('INSERT INTO t VALUES (1)')
        pid = holder.info.backend_pid
        time.sleep(checks.LONG_TRANSACTION_SECONDS + 1.5)
        result = verify(src, dst, databases=['v_long'])
        item = result['source.long_transactions']
        assert item['status'] == 'warning'
        assert [o['pid'] for o in item['objects']] == [pid]
        assert item['objects'][0]['state'] == 'idle in transaction' and item['objects'][0]['database'] == 'v_long'
        assert 'pg_terminate_backend' in item['hint']
        assert result['plugin.load']['status'] == 'pass'
        assert 'waited for open transactions' in result['plugin.load']['message']
        assert src.value('SELECT count(*) FROM pg_replication_slots') == 0
    finally:
        holder.rollback()
        holder.close()
        drop_database(src, 'v_long')


def test_prepared_transaction_warns(src, dst):
    recreate_database(src, 'v_prepared', 'CREATE TABLE t (id int PRIMARY KEY)')
    try:
        assert verify(src, dst, databases=['v_prepared'])['source.prepared_transactions']['status'] == 'pass'
        with src.connect('v_prepared') as conn:
            conn.execute('BEGIN')
            conn.execute('INSERT INTO t VALUES (1)')
            conn.execute("PREPARE TRANSACTION 'v_gid_1'")
        item = verify(src, dst, databases=['v_prepared'])['source.prepared_transactions']
        assert item['status'] == 'warning'
        assert item['objects'][0]['gid'] == 'v_gid_1' and item['objects'][0]['database'] == 'v_prepared'
        assert "ROLLBACK PREPARED 'v_gid_1'" in item['hint']
    finally:
        with src.connect('v_prepared') as conn:
            if conn.execute("SELECT 1 FROM pg_prepared_xacts WHERE gid = 'v_gid_1'").fetchone():
                conn.execute("ROLLBACK PREPARED 'v_gid_1'")
        drop_database(src, 'v_prepared')


def test_plugin_load_and_wal2json_numeric_columns(src, dst):
    recreate_database(src, 'v_plugin',
                      'CREATE TABLE prices (id int PRIMARY KEY, amount numeric(12,2), ratio double precision, '
                      'label text)',
                      'CREATE TABLE names (id int PRIMARY KEY, label text)')
    try:
        result = verify(src, dst, databases=['v_plugin'], plugin='wal2json')
        assert result['plugin.load']['status'] == 'pass'
        assert 'decoding plugin wal2json loads' in result['plugin.load']['message']
        item = result['plugin.numeric_special_values']
        assert item['status'] == 'warning'
        assert [(o['table'], o['name'], o['data_type']) for o in item['objects']] == [
            ('prices', 'amount', 'numeric(12,2)'), ('prices', 'ratio', 'double precision')]
        assert 'as null' in item['message']
        assert verify(src, dst, databases=['v_plugin'], plugin='wal2json',
                      tables=['public.names'])['plugin.numeric_special_values']['status'] == 'pass'
        result = verify(src, dst, databases=['v_plugin'])
        assert result['plugin.numeric_special_values']['status'] == 'pass'

        result = verify(src, dst, databases=['v_plugin'], plugin='no_such_plugin')
        item = result['plugin.load']
        assert item['status'] == 'failed'
        assert 'could not access file "no_such_plugin"' in item['message']
        assert 'not installed' in item['hint']
        assert src.value('SELECT count(*) FROM pg_replication_slots') == 0
    finally:
        drop_database(src, 'v_plugin')


def test_leftover_task_objects_and_resuming(src, dst):
    task = 'v_leftover'
    name = task_state.object_name(task, 'v_objects')
    recreate_database(src, 'v_objects', 'CREATE TABLE t (id int PRIMARY KEY)')
    try:
        assert verify(src, dst, task=task, databases=['v_objects'])['task.objects']['status'] == 'pass'
        src.execute("SELECT pg_create_logical_replication_slot(%s, 'wal2json')", (name,), dbname='v_objects')
        src.execute(sql.SQL('CREATE PUBLICATION {}').format(sql.Identifier(name)), dbname='v_objects')
        dst.execute('SELECT pg_replication_origin_create(%s)', (name,))
        # another task's objects are not this task's business
        other = task_state.object_name('v_leftover_two', 'v_objects')
        dst.execute('SELECT pg_replication_origin_create(%s)', (other,))

        result = verify(src, dst, task=task, databases=['v_objects'], plugin='wal2json')
        item = result['task.objects']
        assert item['status'] == 'failed'
        assert sorted((o['type'], o['name']) for o in item['objects']) == [
            ('publication', name), ('replication_origin', name), ('replication_slot', name)]
        assert "SELECT pg_drop_replication_slot('%s');" % name in item['hint']
        assert 'DROP PUBLICATION %s;' % name in item['hint']
        assert "SELECT pg_replication_origin_drop('%s');" % name in item['hint']

        resumed = verify(src, dst, task=task, databases=['v_objects'], plugin='wal2json', resuming=True)
        assert resumed['task.objects']['status'] == 'pass'
        assert 'reused' in resumed['task.objects']['message']
        assert resumed['source.replication_slots']['status'] == 'pass'
        assert 'needs 0' in resumed['source.replication_slots']['message']

        mismatch = verify(src, dst, task=task, databases=['v_objects'], plugin='pgoutput', resuming=True)
        assert mismatch['task.objects']['status'] == 'failed'
        assert 'uses plugin wal2json, the task now asks for pgoutput' in mismatch['task.objects']['message']
    finally:
        if src.value('SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s', (name,)):
            src.execute('SELECT pg_drop_replication_slot(%s)', (name,))
        for origin in (name, task_state.object_name('v_leftover_two', 'v_objects')):
            if dst.value('SELECT count(*) FROM pg_replication_origin WHERE roname = %s', (origin,)):
                dst.execute('SELECT pg_replication_origin_drop(%s)', (origin,))
        drop_database(src, 'v_objects')


def test_selection_empty_missing_and_invalid(src, dst):
    recreate_database(src, 'v_sel_a', 'CREATE TABLE public.orders (id int PRIMARY KEY)',
                      'CREATE TABLE public.order_lines (id int PRIMARY KEY)')
    recreate_database(src, 'v_sel_b', 'CREATE TABLE public.other (id int PRIMARY KEY)')
    recreate_database(src, 'v_sel_empty')
    try:
        result = verify(src, dst, databases=['v_sel_a'], tables=['public.order*'])
        assert statuses(result, 'tables.selection', 'tables.missing') == {'tables.selection': 'pass',
                                                                          'tables.missing': 'pass'}
        assert result['tables.selection']['message'] == '2 tables selected in 1 database'

        result = verify(src, dst, databases=['v_sel_a'], tables=['public.orders', 'public.nope', 'other_db.public.x'])
        item = result['tables.missing']
        assert item['status'] == 'failed'
        assert [o['pattern'] for o in item['objects']] == ['public.nope', 'other_db.public.x']
        assert 'no selected database matches "other_db"' in item['message']

        result = verify(src, dst, databases=['v_sel_a', 'v_sel_b'], tables=['public.orders'])
        assert result['tables.selection']['status'] == 'warning'
        assert 'database "v_sel_b" holds no selected table' in result['tables.selection']['message']

        result = verify(src, dst, databases=['v_sel_a'], tables=['public.order*'], exclude_tables=['public.*'])
        assert result['tables.selection']['status'] == 'failed'
        assert 'empty selection' in result['tables.selection']['message']
        result = verify(src, dst, databases=['v_sel_empty'])
        assert result['tables.selection']['status'] == 'failed'
        assert 'the selected databases hold no table' in result['tables.selection']['message']

        result = verify(src, dst, databases=['v_sel_a'], tables=['a.b.c.d'])
        assert result['tables.selection']['status'] == 'failed'
        assert 'must be schema.table or database.schema.table' in result['tables.selection']['message']
        assert result['tables.foreign_keys']['message'].startswith('skipped because the table selection is invalid')
    finally:
        for db in ('v_sel_a', 'v_sel_b', 'v_sel_empty'):
            drop_database(src, db)


def test_replica_identity(src, dst):
    recreate_database(src, 'v_ident',
                      'CREATE TABLE keyed (id int PRIMARY KEY)',
                      'CREATE TABLE heap (a int, b text)',
                      'CREATE TABLE nothing (id int PRIMARY KEY)',
                      'ALTER TABLE nothing REPLICA IDENTITY NOTHING',
                      'CREATE TABLE by_index (a int NOT NULL, b int)',
                      'CREATE UNIQUE INDEX by_index_a ON by_index (a)',
                      'ALTER TABLE by_index REPLICA IDENTITY USING INDEX by_index_a',
                      'CREATE TABLE parted (id int, region text) PARTITION BY LIST (region)',
                      "CREATE TABLE parted_eu PARTITION OF parted FOR VALUES IN ('eu')")
    try:
        item = verify(src, dst, databases=['v_ident'])['tables.replica_identity']
        assert item['status'] == 'failed'       # a publication of their updates would break the source's writes
        assert sorted((o['name'], o['replica_identity']) for o in item['objects']) == [
            ('heap', 'default'), ('nothing', 'nothing'), ('parted_eu', 'default')]
        assert 'cannot update table' in item['message']
        assert 'ALTER TABLE public.heap REPLICA IDENTITY FULL;' in item['hint']
        assert 'replica_identity: full' in item['hint'] and 'replica_identity: exclude' in item['hint']
        item = verify(src, dst, databases=['v_ident'], plugin='wal2json')['tables.replica_identity']
        assert item['status'] == 'failed' and 'could not be matched to a row' in item['message']
        item = verify(src, dst, databases=['v_ident'], replica_identity='full')['tables.replica_identity']
        assert item['status'] == 'warning' and 'sets REPLICA IDENTITY FULL' in item['message']
        # a keyless partition cannot be left out: its parent's publication would publish it all the same
        item = verify(src, dst, databases=['v_ident'], replica_identity='exclude')['tables.replica_identity']
        assert item['status'] == 'failed' and 'cannot leave out 1 partition' in item['message'], item
        assert 'v_ident.public.parted_eu' in item['message']
        item = verify(src, dst, databases=['v_ident'], replica_identity='exclude',
                      exclude_tables=['public.parted*'])['tables.replica_identity']
        assert item['status'] == 'warning' and 'left out of the task' in item['message'], item
        item = verify(src, dst, databases=['v_ident'], incremental=False)['tables.replica_identity']
        assert item['status'] == 'pass' and 'incremental sync (off)' in item['message']
        with src.connect('v_ident') as conn:
            for table in ('heap', 'nothing', 'parted_eu'):
                conn.execute(sql.SQL('ALTER TABLE {} REPLICA IDENTITY FULL').format(sql.Identifier(table)))
        assert verify(src, dst, databases=['v_ident'])['tables.replica_identity']['status'] == 'pass'
    finally:
        drop_database(src, 'v_ident')


def test_triggers_rules_unlogged_matviews_large_objects_generated(src, dst):
    recreate_database(
        src, 'v_features',
        'CREATE TABLE plain (id int PRIMARY KEY, price int, doubled int GENERATED ALWAYS AS (price * 2) STORED)',
        'CREATE TABLE audited (id int PRIMARY KEY)',
        'CREATE TABLE audit_log (id serial PRIMARY KEY, note text)',
        'CREATE FUNCTION log_it() RETURNS trigger LANGUAGE plpgsql AS '
        "$$BEGIN INSERT INTO audit_log (note) VALUES (TG_OP); RETURN NEW; END$$",
        'CREATE TRIGGER audited_log AFTER INSERT ON audited FOR EACH ROW EXECUTE FUNCTION log_it()',
        'CREATE TRIGGER audited_always AFTER UPDATE ON audited FOR EACH ROW EXECUTE FUNCTION log_it()',
        'ALTER TABLE audited ENABLE ALWAYS TRIGGER audited_always',
        'CREATE TABLE ruled (id int PRIMARY KEY)',
        'CREATE RULE ruled_ignore AS ON DELETE TO ruled DO INSTEAD NOTHING',
        'CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY)',
        'CREATE MATERIALIZED VIEW plain_summary AS SELECT count(*) FROM plain',
        'SELECT lo_create(0)')
    ids = ('tables.triggers', 'tables.rules', 'tables.unlogged', 'tables.materialized_views', 'tables.large_objects',
           'tables.generated_columns')
    try:
        result = verify(src, dst, databases=['v_features'])
        # a whole-database task carries matviews (refreshed) and large objects (copied, synced at cutover)
        expected = dict.fromkeys(ids, 'warning')
        expected.update({'tables.materialized_views': 'pass', 'tables.large_objects': 'pass'})
        assert statuses(result, *ids) == expected
        triggers = result['tables.triggers']
        assert sorted((o['table'], o['name'], o['enabled']) for o in triggers['objects']) == [
            ('audited', 'audited_always', 'always'), ('audited', 'audited_log', 'origin')]
        assert ('1 trigger is ENABLE ALWAYS or ENABLE REPLICA, so it fires for every applied row and repeats what the '
                'source already did: audited_always on public.audited') in triggers['message']
        assert 'ALTER TABLE public.audited DISABLE TRIGGER audited_always;' in triggers['hint']
        rules = result['tables.rules']
        assert [(o['table'], o['name'], o['enabled']) for o in rules['objects']] == [('ruled', 'ruled_ignore', 'origin')]
        assert '; but' not in rules['message']      # an ordinary rule stays silent during the sync
        assert [o['name'] for o in result['tables.unlogged']['objects']] == ['scratch']
        assert 'ALTER TABLE public.scratch SET LOGGED;' in result['tables.unlogged']['hint']
        assert [o['name'] for o in result['tables.materialized_views']['objects']] == ['plain_summary']
        assert 'pgdts refreshes them on the destination after the copy and again at cutover' in \
            result['tables.materialized_views']['message']
        assert result['tables.large_objects']['objects'] == [{'type': 'database', 'name': 'v_features',
                                                              'large_objects': 1}]
        assert 'brought up to date at cutover while the source is fenced' in result['tables.large_objects']['message']
        assert [(o['table'], o['name']) for o in result['tables.generated_columns']['objects']] == [('plain', 'doubled')]

        # without incremental sync an unlogged table is copied like any other
        assert verify(src, dst, databases=['v_features'], incremental=False)['tables.unlogged']['status'] == 'pass'
        # a selection without those tables passes; the matview of its schema is carried; large objects are not
        result = verify(src, dst, databases=['v_features'], tables=['public.audit_log'])
        expected = dict.fromkeys(ids, 'pass')
        expected['tables.large_objects'] = 'warning'
        assert statuses(result, *ids) == expected
        assert [o['name'] for o in result['tables.materialized_views']['objects']] == ['plain_summary']
        assert 'a table selection does not carry large objects' in result['tables.large_objects']['message']
        # a pattern that names a materialized view of a schema without a selected table is told it is not carried
        with src.connect('v_features') as conn:
            conn.execute('CREATE SCHEMA rep')
            conn.execute('CREATE MATERIALIZED VIEW rep.plain_report AS SELECT count(*) FROM public.plain')
        result = verify(src, dst, databases=['v_features'], tables=['public.plain*', 'rep.*'])
        assert result['tables.materialized_views']['status'] == 'warning'
        assert 'not tables and are not carried' in result['tables.materialized_views']['message']
        assert 'v_features.rep.plain_report' in result['tables.materialized_views']['message'] or \
            'rep.plain_report' in result['tables.materialized_views']['message']
    finally:
        drop_database(src, 'v_features')


def test_foreign_keys_to_unselected_tables(src, dst):
    recreate_database(src, 'v_fk',
                      'CREATE TABLE customers (id int PRIMARY KEY)',
                      'CREATE TABLE orders (id int PRIMARY KEY, customer_id int REFERENCES customers (id))',
                      'CREATE TABLE regions (code text PRIMARY KEY)',
                      'CREATE TABLE events (id int, region text REFERENCES regions (code)) PARTITION BY RANGE (id)',
                      'CREATE TABLE events_1 PARTITION OF events FOR VALUES FROM (0) TO (100)',
                      'CREATE TABLE events_2 PARTITION OF events FOR VALUES FROM (100) TO (200)')
    try:
        result = verify(src, dst, databases=['v_fk'], tables=['public.orders', 'public.events'])
        item = result['tables.foreign_keys']
        assert item['status'] == 'failed'
        assert sorted((o['table'], o['name'], o['references']) for o in item['objects']) == [
            ('events', 'events_region_fkey', 'public.regions'),
            ('orders', 'orders_customer_id_fkey', 'public.customers')]
        assert 'v_fk.public.orders references v_fk.public.customers (constraint orders_customer_id_fkey)' in item['message']
        assert 'v_fk.public.customers' in item['hint'] and 'v_fk.public.regions' in item['hint']

        result = verify(src, dst, databases=['v_fk'], tables=['public.*'])
        assert result['tables.foreign_keys']['status'] == 'pass'
        result = verify(src, dst, databases=['v_fk'], exclude_tables=['public.customers'])
        assert [o['table'] for o in result['tables.foreign_keys']['objects']] == ['orders']
    finally:
        drop_database(src, 'v_fk')


@pytest.fixture
def fake_extension():
    """An extension whose files exist only while the source creates it: afterwards no server can create it."""
    major = os.path.basename(os.path.dirname(pg_bindir()))          # /usr/lib/postgresql/<major>/bin
    sharedir = '/usr/share/postgresql/%s/extension' % major
    name = 'pgdts_vtest_%d' % os.getpid()
    script = "CREATE FUNCTION %s_one() RETURNS int LANGUAGE sql AS 'SELECT 1';\n" % name
    files = {os.path.join(sharedir, name + '.control'): "default_version = '1.0'\nrelocatable = true\n",
             os.path.join(sharedir, name + '--1.0.sql'): script}

    def install():
        for path, text in files.items():
            with open(path, 'w') as handle:
                handle.write(text)

    def remove():
        for path in files:
            if os.path.exists(path):
                os.unlink(path)

    yield name, install, remove
    remove()


def test_extensions(src, dst, fake_extension):
    name, install, remove = fake_extension
    recreate_database(src, 'v_ext', 'CREATE EXTENSION hstore', 'CREATE EXTENSION pageinspect',
                      'CREATE TABLE t (id int PRIMARY KEY, attrs hstore)')
    create_role(dst, 'v_ext_dest', 'CREATEDB')
    try:
        result = verify(src, dst, databases=['v_ext'])
        assert result['destination.extensions']['status'] == 'pass'
        assert 'hstore, pageinspect' in result['destination.extensions']['message']

        item = verify(src, dst, databases=['v_ext'], dest_user='v_ext_dest')['destination.extensions']
        assert item['status'] == 'failed'
        assert [(o['name'], o['status']) for o in item['objects']] == [('pageinspect', 'failed')]
        assert 'needs a superuser to create' in item['message']

        install()
        src.execute(sql.SQL('CREATE EXTENSION {}').format(sql.Identifier(name)), dbname='v_ext')
        remove()
        item = verify(src, dst, databases=['v_ext'])['destination.extensions']
        assert item['status'] == 'failed'
        assert [(o['name'], o['problem']) for o in item['objects']] == [
            (name, 'is not available on the destination (no control file)')]
        assert 'Install the extension packages on the destination' in item['hint']
    finally:
        drop_database(src, 'v_ext')
        drop_role(dst, 'v_ext_dest')


def test_encoding_and_collation(src, dst):
    recreate_database(src, 'v_latin', 'CREATE TABLE t (id int PRIMARY KEY, s text)', encoding='LATIN1', locale='C')
    recreate_database(dst, 'v_latin')
    recreate_database(src, 'v_utf', 'CREATE TABLE t (id int PRIMARY KEY, s text)')
    recreate_database(dst, 'v_utf', encoding='LATIN1', locale='C')
    recreate_database(src, 'v_coll',
                      "CREATE COLLATION public.v_nocase (provider = icu, locale = 'und-u-ks-level2', "
                      'deterministic = false)',
                      'CREATE TABLE words (id int PRIMARY KEY, w text COLLATE public.v_nocase)',
                      'CREATE TABLE other (id int PRIMARY KEY, w text COLLATE "C")')
    try:
        result = verify(src, dst, databases=['v_latin'])
        item = result['destination.encoding']
        assert item['status'] == 'warning'
        assert item['objects'][0]['source_encoding'] == 'LATIN1' and item['objects'][0]['destination_encoding'] == 'UTF8'
        item = result['destination.collation']
        assert item['status'] == 'warning'
        assert 'LC_COLLATE C on the source, C.UTF-8 on the destination' in item['message']

        item = verify(src, dst, databases=['v_utf'])['destination.encoding']
        assert item['status'] == 'failed'
        assert 'characters of UTF8 without an equivalent in LATIN1 cannot be stored' in item['message']
        assert 'ENCODING' in item['hint']

        result = verify(src, dst, databases=['v_coll'])
        assert statuses(result, 'destination.encoding', 'destination.collation') == {
            'destination.encoding': 'pass', 'destination.collation': 'pass'}
        # with a table selection the collation's schema is not created by the migration
        item = verify(src, dst, databases=['v_coll'], tables=['public.words'])['destination.collation']
        assert item['status'] == 'failed'
        assert item['objects'] == [{'type': 'collation', 'database': 'v_coll', 'schema': 'public', 'name': 'v_nocase',
                                    'status': 'failed', 'problem': 'is used by selected columns and does not exist on '
                                                                   'the destination'}]
        assert verify(src, dst, databases=['v_coll'], tables=['public.other'])['destination.collation']['status'] == 'pass'
    finally:
        for db in ('v_latin', 'v_utf', 'v_coll'):
            drop_database(src, db)
            drop_database(dst, db)


def test_destination_create_and_apply_privileges(src, dst):
    recreate_database(src, 'v_dprivs', 'CREATE SCHEMA app', 'CREATE TABLE app.t (id int PRIMARY KEY)')
    recreate_database(dst, 'v_dprivs_existing')
    recreate_database(src, 'v_dprivs_existing', 'CREATE SCHEMA app', 'CREATE TABLE app.t (id int PRIMARY KEY)')
    create_role(dst, 'v_plain')
    ids = ('destination.create_privilege', 'destination.apply_privilege')
    try:
        result = verify(src, dst, databases=['v_dprivs'])
        assert statuses(result, *ids) == dict.fromkeys(ids, 'pass')

        result = verify(src, dst, databases=['v_dprivs', 'v_dprivs_existing'], dest_user='v_plain')
        item = result['destination.create_privilege']
        assert item['status'] == 'failed'
        assert {(o['name'], o['privilege']) for o in item['objects']} == {
            ('pgdts', 'CREATEDB'), ('v_dprivs', 'CREATEDB'), ('v_dprivs_existing', 'CREATE')}
        assert 'ALTER ROLE v_plain CREATEDB;' in item['hint']
        item = result['destination.apply_privilege']
        assert item['status'] == 'failed'
        assert {o['name'] for o in item['objects']} == set(checks.APPLY_FUNCTIONS) | {'session_replication_role'}
        assert 'GRANT SET ON PARAMETER session_replication_role TO v_plain;' in item['hint']

        with dst.connect() as conn:
            conn.execute('ALTER ROLE v_plain CREATEDB')
            for function in checks.APPLY_FUNCTIONS:
                conn.execute(sql.SQL('GRANT EXECUTE ON FUNCTION {} TO v_plain').format(sql.SQL(function)))
            conn.execute('GRANT SET ON PARAMETER session_replication_role TO v_plain')
        with dst.connect('v_dprivs_existing') as conn:
            conn.execute('GRANT CREATE ON DATABASE v_dprivs_existing TO v_plain')
        result = verify(src, dst, databases=['v_dprivs', 'v_dprivs_existing'], dest_user='v_plain')
        assert statuses(result, *ids) == dict.fromkeys(ids, 'pass')
        # the origins in use can only be counted by a superuser
        assert result['destination.replication_origins']['status'] == 'warning'
        assert 'cannot be counted' in result['destination.replication_origins']['message']
    finally:
        with dst.connect() as conn:
            conn.execute('REVOKE SET ON PARAMETER session_replication_role FROM v_plain')
        drop_database(src, 'v_dprivs')
        drop_database(src, 'v_dprivs_existing')
        drop_database(dst, 'v_dprivs_existing')
        drop_role(dst, 'v_plain')


def test_destination_conflicts(src, dst):
    recreate_database(src, 'v_conf', 'CREATE TABLE a (id int PRIMARY KEY)', 'CREATE TABLE b (id int PRIMARY KEY)',
                      'CREATE SCHEMA extra', 'CREATE TABLE extra.c (id int PRIMARY KEY)')
    try:
        assert verify(src, dst, databases=['v_conf'])['destination.conflicts']['status'] == 'pass'
        recreate_database(dst, 'v_conf', 'CREATE SCHEMA extra')
        item = verify(src, dst, databases=['v_conf'])['destination.conflicts']
        assert item['status'] == 'warning'
        assert [(o['type'], o['name'], o['problem']) for o in item['objects']] == [
            ('schema', 'extra', 'exists already (empty)')]
        with dst.connect('v_conf') as conn:
            conn.execute('CREATE TABLE b (id int PRIMARY KEY)')
        item = verify(src, dst, databases=['v_conf'])['destination.conflicts']
        assert item['status'] == 'warning'
        assert ('table', 'b', 'exists and is empty') in [(o['type'], o['name'], o['problem']) for o in item['objects']]
        with dst.connect('v_conf') as conn:
            conn.execute('CREATE TABLE a (id int PRIMARY KEY)')
            conn.execute('INSERT INTO a VALUES (1)')
        item = verify(src, dst, databases=['v_conf'])['destination.conflicts']
        assert item['status'] == 'failed'
        assert ('table', 'a', 'exists and holds rows') in [(o['type'], o['name'], o['problem']) for o in item['objects']]
        assert 'v_conf.public.a exists and holds rows' in item['message']
        # a resumed task expects its own partly copied tables
        resumed = verify(src, dst, databases=['v_conf'], resuming=True)['destination.conflicts']
        assert resumed['status'] == 'pass'
        # the pgdts state database on the destination is never a conflict
        recreate_database(dst, task_state.STATE_DATABASE, 'CREATE SCHEMA pgdts', 'CREATE TABLE pgdts.tasks (id int)',
                          'INSERT INTO pgdts.tasks VALUES (1)')
        result = verify(src, dst, databases=['v_conf'], tables=['public.a'], resuming=False)
        assert [o['database'] for o in result['destination.conflicts']['objects']] == ['v_conf']
    finally:
        drop_database(src, 'v_conf')
        drop_database(dst, 'v_conf')
        drop_database(dst, task_state.STATE_DATABASE)


def test_a_catalog_the_role_cannot_read_fails_only_its_own_item(src, dst):
    """Facts that cannot be read become a failed item that names the error; the other items are still judged."""
    recreate_database(src, 'v_broken', 'CREATE TABLE t (id int PRIMARY KEY)',
                      'REVOKE SELECT ON pg_catalog.pg_largeobject_metadata FROM PUBLIC')
    create_role(src, 'v_locked', 'REPLICATION')
    try:
        with src.connect('v_broken') as conn:
            conn.execute('GRANT SELECT ON t TO v_locked')
            conn.execute('GRANT CREATE ON DATABASE v_broken TO v_locked')
            conn.execute('ALTER TABLE t OWNER TO v_locked')
        with src.connect() as conn:
            conn.execute('REVOKE EXECUTE ON FUNCTION pg_catalog.pg_control_system() FROM PUBLIC')
            # a login that can fence at the cutover (source.fence_privilege)
            conn.execute('ALTER DATABASE v_broken OWNER TO v_locked')
            conn.execute('GRANT pg_signal_backend TO v_locked')
        result = verify(src, dst, source_user='v_locked', databases=['v_broken'], max_retained_wal='10GB')
        item = result['tables.large_objects']
        assert item['status'] == 'failed'
        assert item['message'] == ('could not be checked: reading database "v_broken" failed: permission denied for '
                                   'table pg_largeobject_metadata')
        # without pg_control_system() the servers are still told apart by their start times
        assert statuses(result, 'servers.distinct', 'source.recovery', 'tables.replica_identity') == {
            'servers.distinct': 'pass', 'source.recovery': 'pass', 'tables.replica_identity': 'pass'}
        assert [i for i, r in result.items() if r['status'] != 'pass'] == ['tables.large_objects']
    finally:
        with src.connect() as conn:
            conn.execute('GRANT EXECUTE ON FUNCTION pg_catalog.pg_control_system() TO PUBLIC')
        drop_database(src, 'v_broken')
        drop_role(src, 'v_locked')
