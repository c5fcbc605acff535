"""pg_dts_finish proves the whole scope read from the source catalog, not only the tables the task registered: what
is missing, extra or different on the destination (tables, indexes, triggers, sequences, matviews) is named, and the
result counts what was compared, per kind."""

from __future__ import annotations

import pytest

from tests.harness.data import assert_same_catalogs, assert_same_contents

SCHEMA = r'''
CREATE TABLE public.orders (id serial PRIMARY KEY, note text NOT NULL, amount numeric(10,2) DEFAULT 0);
CREATE INDEX orders_note_idx ON public.orders (note);
CREATE TABLE public.audit (order_id int, at timestamptz DEFAULT now());
CREATE FUNCTION public.audit_fn() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN INSERT INTO public.audit (order_id) VALUES (NEW.id); RETURN NEW; END$$;
CREATE TRIGGER orders_audit AFTER INSERT ON public.orders FOR EACH ROW EXECUTE FUNCTION public.audit_fn();
CREATE TABLE public.events (id int, day date NOT NULL, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
CREATE TABLE public.events_a PARTITION OF public.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE public.events_b PARTITION OF public.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE VIEW public.big_orders AS SELECT id, note FROM public.orders WHERE amount > 10;
INSERT INTO public.orders (note, amount) SELECT 'n' || g, g FROM generate_series(1, 200) g;
INSERT INTO public.events SELECT g, date '2025-06-01' + g FROM generate_series(1, 300) g;
'''


@pytest.fixture(scope='module')
def servers(module_pg_factory):
    return module_pg_factory('psrc'), module_pg_factory('pdst')


def prepared(servers, tmp_path, name, dbname, extra_sql=''):
    src, dst = servers
    src.create_database(dbname)
    with src.connect(dbname) as conn:
        conn.execute(SCHEMA + extra_sql)
    return {'name': name, 'source': src.spec(), 'destination': dst.spec(),
            'worker_dir': str(tmp_path / 'workers')}


def start(ansible, args, databases, **extra):
    # public.audit has no key: the task sets REPLICA IDENTITY FULL on it rather than refusing to start
    extra.setdefault('replica_identity', 'full')
    status, result = ansible.module('pgdts.migration.pg_dts_migrate',
                                    dict(args, databases=databases, jobs=2, wait='synced', wait_timeout=300, **extra))
    assert status == 'changed', result
    assert result['task']['stage'] == 'sync'


def behind_the_tasks_back(cluster, dbname, statement):
    """A change on the destination that bypasses the task's protection (default_transaction_read_only) on purpose."""
    with cluster.connect(dbname) as conn:
        conn.execute('SET default_transaction_read_only = off')
        conn.execute(statement)


def failed_items(result):
    return [c for c in result['comparison'] if c['result'] != 'match']


def cancel(ansible, args, databases):
    status, result = ansible.module('pgdts.migration.pg_dts_migrate',
                                    dict(args, databases=databases, state='absent', drop_destination=True))
    assert status == 'changed', result


def unfence(src, dbname):
    src.execute('ALTER DATABASE "%s" RESET default_transaction_read_only' % dbname)


def test_normal_case_reports_what_was_compared_per_kind(servers, ansible, tmp_path):
    src, dst = servers
    args = prepared(servers, tmp_path, 'scope_ok', 'scope_ok')
    start(ansible, args, ['scope_ok'])
    src.execute("INSERT INTO public.orders (note, amount) VALUES ('during sync', 50)", dbname='scope_ok')
    status, result = ansible.module('pgdts.migration.pg_dts_finish', args)
    assert status == 'changed', result
    summary = result['comparison_summary']
    kinds = summary['kinds']
    assert summary['mismatch'] == 0 and summary['error'] == 0, summary
    # orders, audit; the two partitions; the partitioned parent by definition
    assert kinds['tables'] == {'compared': 2, 'match': 2, 'mismatch': 0, 'error': 0}
    assert kinds['partitions']['compared'] == 2 and kinds['partitioned_tables']['compared'] == 1
    assert kinds['sequences']['compared'] == 1 and kinds['sequences']['match'] == 1
    # orders_pkey, orders_note_idx, events_pkey and one per partition
    assert kinds['indexes']['compared'] == 5 and kinds['indexes']['match'] == 5
    assert kinds['triggers']['compared'] == 1 and kinds['views']['compared'] == 1
    assert kinds['functions']['compared'] == 1 and kinds['extensions']['compared'] >= 1
    assert kinds['columns']['compared'] == 3 + 2 + 2 + 2 * 2
    assert kinds['constraints']['compared'] >= 4 and kinds['sequence_parameters']['compared'] == 1
    assert summary['tables'] == 4 and summary['rows'] == 201 + 201 + 300
    assert 'proof: all match' in result['msg'] and '2 partitions' in result['msg'], result['msg']
    assert any(n['kind'] == 'owners' for n in summary['not_compared'])
    [seq] = [c for c in result['comparison'] if c['kind'] == 'sequence']
    assert seq['name'] == 'orders_id_seq' and seq['source']['last_value'] == 201
    assert_same_contents(src, dst, 'scope_ok')
    assert_same_catalogs(src, dst, 'scope_ok')
    unfence(src, 'scope_ok')


def test_count_mode_says_rows_are_not_checksummed(servers, ansible, tmp_path):
    src, _dst = servers
    args = prepared(servers, tmp_path, 'scope_count', 'scope_count')
    start(ansible, args, ['scope_count'])
    status, result = ansible.module('pgdts.migration.pg_dts_finish', dict(args, compare='count'))
    assert status == 'changed', result
    reasons = {n['kind']: n['reason'] for n in result['comparison_summary']['not_compared']}
    assert 'compare: count' in reasons['rows'] and 'checksum' in reasons['rows']
    assert 'not compared: rows' in result['msg']
    unfence(src, 'scope_count')


def test_index_and_trigger_dropped_on_the_destination_are_named(servers, ansible, tmp_path):
    src, dst = servers
    args = prepared(servers, tmp_path, 'scope_defs', 'scope_defs')
    start(ansible, args, ['scope_defs'])
    behind_the_tasks_back(dst, 'scope_defs', 'DROP INDEX public.orders_note_idx')
    behind_the_tasks_back(dst, 'scope_defs', 'DROP TRIGGER orders_audit ON public.orders')
    status, result = ansible.module('pgdts.migration.pg_dts_finish', args)
    assert status == 'failed', result
    assert 'orders_note_idx' in result['msg'] and 'orders_audit' in result['msg'], result['msg']
    bad = {(c['kind'], c['name'], c['result']) for c in failed_items(result)}
    assert bad == {('index', 'orders_note_idx', 'missing'), ('trigger', 'orders_audit', 'missing')}, bad
    assert result['comparison_summary']['kinds']['indexes']['mismatch'] == 1
    assert result['task']['stage'] == 'sync'
    assert src.value("SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
                     "WHERE d.datname = 'scope_defs'") == 0     # the fence was lifted
    cancel(ansible, args, ['scope_defs'])


def test_sequence_not_synced_is_named(servers, ansible, tmp_path):
    src, _dst = servers
    args = prepared(servers, tmp_path, 'scope_seq', 'scope_seq')
    start(ansible, args, ['scope_seq'])
    # the copy set the sequence; a row inserted during the sync moves it on the source only (the destination gets
    # the row with its id, not the nextval())
    src.execute("INSERT INTO public.orders (note) VALUES ('during sync')", dbname='scope_seq')
    status, result = ansible.module('pgdts.migration.pg_dts_finish', dict(args, sync_sequences=False))
    assert status == 'failed', result
    assert 'orders_id_seq' in result['msg'], result['msg']
    [item] = failed_items(result)
    assert item['kind'] == 'sequence' and item['result'] == 'mismatch'
    assert item['source'] == {'last_value': 201, 'is_called': True}
    assert item['destination'] == {'last_value': 200, 'is_called': True}
    cancel(ansible, args, ['scope_seq'])


def test_destination_only_table_of_a_whole_database_task_is_reported(servers, ansible, tmp_path):
    src, dst = servers
    args = prepared(servers, tmp_path, 'scope_extra', 'scope_extra')
    start(ansible, args, ['scope_extra'])
    behind_the_tasks_back(dst, 'scope_extra', 'CREATE TABLE public.stray (id int)')
    status, result = ansible.module('pgdts.migration.pg_dts_finish', args)
    assert status == 'failed', result
    assert 'public.stray' in result['msg'], result['msg']
    [item] = failed_items(result)
    assert (item['kind'], item['name'], item['result']) == ('table', 'stray', 'extra')
    # on_mismatch: warn finishes anyway and reports it
    status, warned = ansible.module('pgdts.migration.pg_dts_finish', dict(args, on_mismatch='warn'))
    assert status == 'changed', warned
    assert warned['comparison_summary']['mismatch'] == 1
    assert '1 differ' in warned['msg']
    unfence(src, 'scope_extra')


def test_table_created_on_the_source_during_the_sync_is_not_silently_lost(servers, ansible, tmp_path):
    src, _dst = servers
    args = prepared(servers, tmp_path, 'scope_new', 'scope_new')
    start(ansible, args, ['scope_new'])
    src.execute("CREATE TABLE public.new_t (id int PRIMARY KEY, v text); INSERT INTO public.new_t VALUES (1, 'x')",
                dbname='scope_new')
    status, result = ansible.module('pgdts.migration.pg_dts_finish', args)
    assert status == 'failed', result
    assert 'new_t' in result['msg'], result['msg']
    cancel(ansible, args, ['scope_new'])


def test_unpopulated_matview_on_the_destination_is_refreshed_by_finish(servers, ansible, tmp_path):
    """A matview emptied on the destination (REFRESH ... WITH NO DATA) during the sync: finish refreshes it after the
    catch-up and proves it by rows. (The proof's own error for an unpopulated matview, with its message, is
    test_proof.py::test_matview_rows_and_unpopulated_matview.)"""
    src, dst = servers
    args = prepared(servers, tmp_path, 'scope_mv', 'scope_mv',
                    'CREATE MATERIALIZED VIEW public.order_totals AS SELECT note, sum(amount) AS total '
                    'FROM public.orders GROUP BY note;')
    start(ansible, args, ['scope_mv'])
    behind_the_tasks_back(dst, 'scope_mv', 'REFRESH MATERIALIZED VIEW public.order_totals WITH NO DATA')
    assert dst.value("SELECT relispopulated FROM pg_class WHERE relname = 'order_totals'", dbname='scope_mv') is False
    src.execute("INSERT INTO public.orders (note, amount) VALUES ('late', 7)", dbname='scope_mv')
    src.execute('REFRESH MATERIALIZED VIEW public.order_totals', dbname='scope_mv')
    status, result = ansible.module('pgdts.migration.pg_dts_finish', args)
    assert status == 'changed', result
    assert ('public', 'order_totals') in [(m['schema'], m['name']) for m in result['materialized_views']]
    [item] = [c for c in result['comparison'] if c['kind'] == 'matview']
    assert item['result'] == 'match' and item['name'] == 'order_totals', item
    unfence(src, 'scope_mv')
    assert_same_contents(src, dst, 'scope_mv')
