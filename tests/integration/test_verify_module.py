"""pg_dts_verify as a real Ansible module: results, fail_on, check mode and bad input."""

from __future__ import annotations

import json

import pytest

from ansible_collections.pgdts.migration.plugins.module_utils import checks, task_state
from ansible_collections.pgdts.migration.plugins.module_utils.connection import ServerSpec
from verify_support import drop_database, recreate_database, server_objects

MODULE = 'pgdts.migration.pg_dts_verify'


@pytest.fixture(scope='module')
def src(module_pg_factory):
    return module_pg_factory('vmsrc')


@pytest.fixture(scope='module')
def dst(module_pg_factory):
    return module_pg_factory('vmdst')


@pytest.fixture(scope='module')
def shop(src):
    recreate_database(src, 'v_shop',
                      'CREATE TABLE customers (id serial PRIMARY KEY, name text)',
                      'CREATE TABLE orders (id serial PRIMARY KEY, customer_id int REFERENCES customers (id))',
                      'CREATE TABLE notes (body text)')
    yield 'v_shop'
    drop_database(src, 'v_shop')


def args(src, dst, **extra):
    # the task limits the WAL its slot may hold back (else source.wal_retention warns: the servers keep -1)
    data = {'name': 'shop_move', 'source': src.spec(), 'destination': dst.spec(), 'databases': ['v_shop'],
            'max_retained_wal': '10GB'}
    data.update(extra)
    return {k: v for k, v in data.items() if v is not None}


def test_unlimited_wal_retention_warns_with_the_fix(ansible, src, dst, shop):
    assert src.setting('max_slot_wal_keep_size') == '-1'
    status, result = ansible.module(MODULE, args(src, dst, exclude_tables=['public.notes'], max_retained_wal=None))
    assert status == 'ok', result
    [item] = [i for i in result['checks'] if i['id'] == 'source.wal_retention']
    assert item['status'] == 'warning', item
    assert item['message'].startswith('max_slot_wal_keep_size = -1 (unlimited) and the task sets no max_retained_wal')
    assert 'cannot read the free space under pg_wal' in item['message'], item
    assert 'Set max_retained_wal on the task' in item['hint'], item
    assert result['summary']['warning'] == 1, result['summary']
    status, result = ansible.module(MODULE, args(src, dst, max_retained_wal='lots'))
    assert status == 'failed' and result['msg'].startswith('max_retained_wal: "lots" is not a memory size'), result


def test_module_returns_every_check_and_passes(ansible, src, dst, shop):
    status, result = ansible.module(MODULE, args(src, dst, exclude_tables=['public.notes']))
    assert status == 'ok', result
    assert result['changed'] is False
    assert result['passed'] is True
    assert result['failed_checks'] == []
    assert [item['id'] for item in result['checks']] == list(checks.CHECK_IDS)
    assert result['summary'] == {'pass': len(checks.CHECK_IDS), 'warning': 0, 'failed': 0}
    assert result['msg'] == 'verification of task shop_move: %d passed, 0 warning, 0 failed' % len(checks.CHECK_IDS)
    text = json.dumps(result)
    assert src.password not in text and dst.password not in text


def test_module_fails_on_failed_checks_and_names_them(ansible, src, dst, shop):
    status, result = ansible.module(MODULE, args(src, dst, tables=['public.orders']))
    assert status == 'failed'
    assert result['msg'] == 'verification of task shop_move failed (fail_on=failed): 1 check failed: tables.foreign_keys'
    assert result['failed_checks'] == ['tables.foreign_keys']
    assert result['passed'] is False
    by_id = {item['id']: item for item in result['checks']}
    assert by_id['tables.foreign_keys']['objects'] == [
        {'type': 'foreign_key', 'database': 'v_shop', 'schema': 'public', 'table': 'orders',
         'name': 'orders_customer_id_fkey', 'references': 'public.customers'}]

    status, result = ansible.module(MODULE, args(src, dst, tables=['public.orders'], fail_on='never'))
    assert status == 'ok'
    assert result['passed'] is False and result['summary']['failed'] == 1 and result['failed_checks'] == []


def test_fail_on_warning(ansible, src, dst, shop):
    # notes has no key: it fails the check by default, and warns with replica_identity: full
    status, result = ansible.module(MODULE, args(src, dst))
    assert status == 'failed' and result['failed_checks'] == ['tables.replica_identity'], result['msg']
    status, result = ansible.module(MODULE, args(src, dst, replica_identity='full'))
    assert status == 'ok'
    assert result['summary']['warning'] == 1 and result['passed'] is True
    status, result = ansible.module(MODULE, args(src, dst, fail_on='warning', replica_identity='full'))
    assert status == 'failed'
    assert result['msg'] == ('verification of task shop_move failed (fail_on=warning): 1 check warned: '
                             'tables.replica_identity')
    assert result['failed_checks'] == ['tables.replica_identity']


def test_check_mode_gives_the_same_answer_and_changes_nothing(ansible, src, dst, shop):
    before = (server_objects(src, ['v_shop']), server_objects(dst))
    status, normal = ansible.module(MODULE, args(src, dst, plugin='wal2json', replica_identity='full'))
    status_check, checked = ansible.module(MODULE, args(src, dst, plugin='wal2json', replica_identity='full'),
                                           check=True)
    assert status == status_check == 'ok'
    assert [(i['id'], i['status']) for i in normal['checks']] == [(i['id'], i['status']) for i in checked['checks']]
    assert (server_objects(src, ['v_shop']), server_objects(dst)) == before


@pytest.mark.parametrize('extra, message', [
    ({'name': 'Shop-Move'}, "task name 'Shop-Move' must start with a lower-case letter"),
    ({'tables': ['public.orders.x.y']}, "table pattern 'public.orders.x.y' must be schema.table"),
    ({'fail_on': 'sometimes'}, 'value of fail_on must be one of: failed, warning, never'),
])
def test_bad_input_fails_clearly(ansible, src, dst, shop, extra, message):
    status, result = ansible.module(MODULE, args(src, dst, **extra))
    assert status == 'failed'
    assert message in result['msg']
    assert 'checks' not in result


def test_a_resumable_task_in_the_state_database_makes_its_objects_expected(ansible, src, dst, shop):
    name = task_state.object_name('shop_move', 'v_shop')
    src.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,), dbname='v_shop')
    store = task_state.TaskStore(ServerSpec.from_options(dst.spec(), environ={}))
    store.open(create=True)
    try:
        status, result = ansible.module(MODULE, args(src, dst, exclude_tables=['public.notes']))
        assert status == 'failed' and result['resuming'] is False
        assert result['failed_checks'] == ['task.objects']

        store.create_task('shop_move', {'databases': ['v_shop']}, 'sync')
        status, result = ansible.module(MODULE, args(src, dst, exclude_tables=['public.notes']))
        assert status == 'ok' and result['resuming'] is True
        by_id = {item['id']: item for item in result['checks']}
        assert by_id['task.objects']['status'] == 'pass'
        assert [o['name'] for o in by_id['task.objects']['objects']] == [name]

        store.set_stage('shop_move', 'cancelled')
        status, result = ansible.module(MODULE, args(src, dst, exclude_tables=['public.notes']))
        assert status == 'failed' and result['resuming'] is False
    finally:
        store.close()
        src.execute('SELECT pg_drop_replication_slot(%s)', (name,))
        drop_database(dst, task_state.STATE_DATABASE)
