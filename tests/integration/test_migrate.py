"""pg_dts_migrate end to end on real servers through real ansible-playbook runs."""

from __future__ import annotations

import pytest

from tests.harness.data import assert_same_contents, create_tricky_database, sequence_values


@pytest.fixture(scope='module')
def servers(module_pg_factory):
    return module_pg_factory('msrc'), module_pg_factory('mdst')


def migrate_args(servers, tmp_path, **extra):
    src, dst = servers
    args = {'source': src.spec(), 'destination': dst.spec(), 'worker_dir': str(tmp_path / 'workers'), 'jobs': 2}
    args.update(extra)
    return args


def slots(cluster):
    return [r[0] for r in cluster.execute('SELECT slot_name FROM pg_replication_slots ORDER BY 1')]


def test_full_copy_without_sync(servers, ansible, tmp_path):
    src, dst = servers
    create_tricky_database(src, 'shop')
    args = migrate_args(servers, tmp_path, name='copy_once', databases=['shop'], incremental=False, wait='copied',
                        wait_timeout=300)
    status, result = ansible.module('pgdts.migration.pg_dts_migrate', args)
    assert status == 'changed', result
    assert result['task']['stage'] == 'finished', result['task']
    rows = assert_same_contents(src, dst, 'shop')
    assert rows > 1500
    assert sequence_values(src, 'shop') == sequence_values(dst, 'shop')
    assert slots(src) == []
    # the generated column was computed by the destination, the index and foreign key exist there
    assert dst.value('SELECT count(*) FROM pg_indexes WHERE indexname = %s', ('child_note_idx',), dbname='shop') == 1
    assert dst.value("SELECT count(*) FROM pg_constraint WHERE contype = 'f'", dbname='shop') == 1
    # a second run reports and changes nothing
    status, again = ansible.module('pgdts.migration.pg_dts_migrate', args)
    assert status == 'ok', again
    assert again['task']['stage'] == 'finished'


def test_incremental_sync_then_cancel_and_restart(servers, ansible, tmp_path):
    src, dst = servers
    create_tricky_database(src, 'inc')
    args = migrate_args(servers, tmp_path, name='inc_task', databases=['inc'], wait='copied', wait_timeout=300)
    status, result = ansible.module('pgdts.migration.pg_dts_migrate', args)
    assert status == 'changed', result
    assert result['task']['stage'] == 'sync'
    with src.connect('inc') as conn:
        conn.execute("INSERT INTO public.kinds (id, feeling, n, f, big) VALUES (10, 'ok', 1.5, 2.5, 'new')")
        conn.execute("UPDATE public.kinds SET feeling = 'sad' WHERE id = 1")   # big (TOAST) unchanged
        conn.execute("DELETE FROM public.child WHERE id <= 10")
        conn.execute("UPDATE public.no_pk SET b = 'changed' WHERE a = 2")
        conn.execute("DELETE FROM public.no_pk WHERE ctid = (SELECT ctid FROM public.no_pk WHERE a = 1 LIMIT 1)")
        conn.execute("INSERT INTO public.events (happened, payload) VALUES ('2026-05-05', 'late')")
        conn.execute('UPDATE "Sales Dept"."Order Lines" SET price = price + 1 WHERE "Id" % 7 = 0')
    status, synced = ansible.module('pgdts.migration.pg_dts_migrate', dict(args, wait='synced'))
    assert status == 'ok', synced
    assert synced['task']['stage'] == 'sync'
    assert synced['task']['lag_bytes'] is not None
    assert_same_contents(src, dst, 'inc')
    # the destination is read-only for other sessions while the task syncs
    assert dst.value("SELECT setting FROM pg_settings WHERE name = 'default_transaction_read_only'", dbname='inc') == 'on'

    status, cancelled = ansible.module('pgdts.migration.pg_dts_migrate',
                                       dict(args, state='absent', drop_destination=True, wait='none'))
    assert status == 'changed', cancelled
    assert cancelled['task']['stage'] == 'cancelled'
    assert [s for s in slots(src) if s.startswith('pgdts_inc_task')] == []
    assert dst.value("SELECT count(*) FROM pg_database WHERE datname = 'inc'") == 0
    assert dst.value("SELECT count(*) FROM pg_replication_origin WHERE roname LIKE 'pgdts_inc_task%%'") == 0
    status, again = ansible.module('pgdts.migration.pg_dts_migrate',
                                   dict(args, state='absent', drop_destination=True, wait='none'))
    assert status == 'ok' and 'already cancelled' in again['msg']

    # a new run after the cancel starts clean
    status, restarted = ansible.module('pgdts.migration.pg_dts_migrate', args)
    assert status == 'changed', restarted
    assert restarted['task']['stage'] == 'sync'
    assert_same_contents(src, dst, 'inc')
    status, final = ansible.module('pgdts.migration.pg_dts_migrate',
                                   dict(args, state='absent', drop_destination=True, wait='none'))
    assert status == 'changed', final


def test_wal2json_plugin_end_to_end(servers, ansible, tmp_path):
    src, dst = servers
    create_tricky_database(src, 'w2j')
    args = migrate_args(servers, tmp_path, name='w2j_task', databases=['w2j'], plugin='wal2json', wait='copied',
                        wait_timeout=300)
    status, result = ansible.module('pgdts.migration.pg_dts_migrate', args)
    assert status == 'changed', result
    with src.connect('w2j') as conn:
        conn.execute("INSERT INTO public.kinds (id, n, f, big) VALUES (20, 1e-20, 1.5, repeat('z', 9000))")
        conn.execute("UPDATE public.kinds SET arr = '{7,8}' WHERE id = 20")   # big (TOAST) unchanged
        conn.execute("UPDATE public.no_pk SET b = 'w2j' WHERE a IS NULL")
        conn.execute("DELETE FROM public.events WHERE payload = 'e5'")
        conn.execute("TRUNCATE public.child")
    status, synced = ansible.module('pgdts.migration.pg_dts_migrate', dict(args, wait='synced'))
    assert status == 'ok', synced
    assert_same_contents(src, dst, 'w2j')
    # wal2json 2.5 prints numeric NaN as null: the sync applies the NULL it was sent, and pg_dts_finish gives such
    # NULLs the source's value under the fence (tests/integration/test_wal2json_numbers.py)
    src.execute("UPDATE public.kinds SET n = 'NaN' WHERE id = 20", dbname='w2j')
    status, synced = ansible.module('pgdts.migration.pg_dts_migrate', dict(args, wait='synced', wait_timeout=60))
    assert status == 'ok' and synced['task']['stage'] == 'sync', synced
    assert dst.value("SELECT n IS NULL FROM public.kinds WHERE id = 20", dbname='w2j') is True
    status, cancelled = ansible.module('pgdts.migration.pg_dts_migrate',
                                       dict(args, state='absent', drop_destination=True))
    assert status == 'changed', cancelled


def test_scheduled_task_starts_at_its_time_and_reruns_only_report(servers, ansible, tmp_path):
    import datetime
    src, dst = servers
    src.create_database('later')
    src.execute('CREATE TABLE t (id int PRIMARY KEY)', dbname='later')
    src.execute('INSERT INTO t SELECT generate_series(1, 100)', dbname='later')
    args = migrate_args(servers, tmp_path, name='later_task', databases=['later'], start_at='2099-01-01T00:00:00Z')
    status, preview = ansible.module('pgdts.migration.pg_dts_migrate', args, check=True, diff=True)
    assert status == 'changed' and preview['action'] == 'started', preview
    assert preview['diff'] == {'before': {'stage': None}, 'after': {'stage': 'scheduled'}}
    assert dst.value("SELECT count(*) FROM pg_database WHERE datname = 'later'") == 0
    start_at = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=30)).replace(microsecond=0)
    args = migrate_args(servers, tmp_path, name='later_task', databases=['later'], start_at=start_at.isoformat())
    status, result = ansible.module('pgdts.migration.pg_dts_migrate', args)
    assert status == 'changed', result
    assert result['task']['stage'] == 'scheduled'
    assert dst.value("SELECT count(*) FROM pg_database WHERE datname = 'later'") == 0
    status, again = ansible.module('pgdts.migration.pg_dts_migrate', args)
    assert status == 'ok', again
    assert again['action'] == 'reported' and again['task']['stage'] == 'scheduled'
    status, copied = ansible.module('pgdts.migration.pg_dts_migrate', dict(args, wait='copied', wait_timeout=120))
    assert status == 'ok', copied
    started = datetime.datetime.fromisoformat(copied['task']['started_at'])
    assert started >= start_at
    assert dst.value('SELECT count(*) FROM t', dbname='later') == 100
    status, cancelled = ansible.module('pgdts.migration.pg_dts_migrate',
                                       dict(args, state='absent', drop_destination=True))
    assert status == 'changed', cancelled


def test_check_mode_starts_nothing(servers, ansible, tmp_path):
    src, dst = servers
    src.create_database('dry')
    src.execute('CREATE TABLE t (id int PRIMARY KEY)', dbname='dry')
    args = migrate_args(servers, tmp_path, name='dry_task', databases=['dry'])
    status, result = ansible.module('pgdts.migration.pg_dts_migrate', args, check=True, diff=True)
    assert status == 'changed', result
    assert result['action'] == 'started'
    assert result['diff'] == {'before': {'stage': None}, 'after': {'stage': 'schema'}}
    assert dst.value("SELECT count(*) FROM pg_database WHERE datname = 'dry'") == 0
    assert src.value("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'pgdts_dry_task%%'") == 0
    assert not (tmp_path / 'workers' / 'dry_task').exists()


def test_sync_streams_and_falls_back_to_sql_when_replication_is_refused(servers, ansible, tmp_path):
    """The sync streams the slot (a walsender of the task is active); when the source has no walsender left for it
    (max_wal_senders taken), the next session reads through the SQL functions and the data still arrives exactly."""
    import os
    import time
    import psycopg
    src, dst = servers
    create_tricky_database(src, 'nostream')
    args = migrate_args(servers, tmp_path, name='nostream_task', databases=['nostream'], wait='copied',
                        wait_timeout=300)
    status, result = ansible.module('pgdts.migration.pg_dts_migrate', args)
    assert status == 'changed', result
    slot = [s for s in slots(src) if s.startswith('pgdts_nostream_task')][0]
    deadline = time.time() + 30
    while time.time() < deadline and not src.value(
            "SELECT count(*) FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid "
            "WHERE s.slot_name = %s AND r.application_name = 'pgdts-stream'", (slot,)):
        time.sleep(0.1)
    assert src.value('SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s', (slot,)), \
        'the sync does not stream the slot'
    holders = []
    try:
        # end the task's stream and take every walsender the source has, before the worker reconnects
        src.execute('SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = %s', (slot,))
        refused = 0
        deadline = time.time() + 2
        while time.time() < deadline and len(holders) < 50:
            try:
                holders.append(psycopg.connect(host=src.host, port=src.port, user='postgres', password=src.password,
                                               dbname='nostream', replication='database', autocommit=True))
            except psycopg.OperationalError as exc:
                assert 'max_wal_senders' in str(exc)
                refused += 1
                time.sleep(0.01)
        assert refused
        with src.connect('nostream') as conn:
            conn.execute("INSERT INTO public.kinds (id, feeling, n, f, big) VALUES (30, 'ok', 3.5, 4.5, 'sql path')")
            conn.execute("DELETE FROM public.child WHERE id <= 5")
        status, synced = ansible.module('pgdts.migration.pg_dts_migrate', dict(args, wait='synced'))
        assert status == 'ok', synced
        assert_same_contents(src, dst, 'nostream')
        with open(os.path.join(str(tmp_path / 'workers'), 'nostream_task', 'worker.log')) as handle:
            log = handle.read()
        assert 'reading the slot through the SQL functions' in log
    finally:
        for conn in holders:
            conn.close()
    status, cancelled = ansible.module('pgdts.migration.pg_dts_migrate',
                                       dict(args, state='absent', drop_destination=True))
    assert status == 'changed', cancelled
