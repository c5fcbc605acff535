"""A pre-data restore that failed midway, then a re-run: the retry removes only what the task itself restored into a
destination database that existed before, never the destination's own objects of the same name (pg_restore --clean
dropped them)."""

from __future__ import annotations

import pytest

MIGRATE = 'pgdts.migration.pg_dts_migrate'
FINISH = 'pgdts.migration.pg_dts_finish'

SOURCE = (
    'CREATE SCHEMA app',
    "CREATE TYPE app.mood AS ENUM ('sad', 'ok')",
    "CREATE FUNCTION public.helper() RETURNS text LANGUAGE sql AS $$ SELECT 'theirs' $$",
    'CREATE TABLE app.items (id int PRIMARY KEY, m app.mood, note text DEFAULT public.helper())',
    "INSERT INTO app.items (id, m) SELECT g, 'ok' FROM generate_series(1, 100) g",
)
DESTINATION = (
    "CREATE FUNCTION public.helper() RETURNS text LANGUAGE sql AS $$ SELECT 'mine' $$",
    'CREATE TABLE public.keep (id int PRIMARY KEY)',
    'INSERT INTO public.keep VALUES (1)',
)


@pytest.fixture(scope='module')
def servers(module_pg_factory):
    return module_pg_factory('ssrc'), module_pg_factory('sdst')


def run_sql(cluster, dbname, statements):
    with cluster.connect(dbname) as conn:
        for statement in statements:
            conn.execute(statement)


def test_retry_of_a_failed_pre_data_restore_keeps_the_destinations_own_objects(servers, ansible, tmp_path):
    src, dst = servers
    src.create_database('shared')
    run_sql(src, 'shared', SOURCE)
    dst.create_database('shared')
    run_sql(dst, 'shared', DESTINATION)
    args = {'name': 'own_objects', 'source': src.spec(), 'destination': dst.spec(),
            'worker_dir': str(tmp_path / 'workers'), 'databases': ['shared'], 'wait': 'synced', 'wait_timeout': 300}
    # the destination's own function public.helper() stops the pre-data restore midway (after schema app and its type)
    status, result = ansible.module(MIGRATE, args)
    assert status == 'failed', result
    assert 'stage schema' in result['msg'] and 'helper' in result['msg'] and 'already exists' in result['msg'], result
    assert dst.value("SELECT count(*) FROM pg_namespace WHERE nspname = 'app'", dbname='shared') == 1
    # the re-run retries the restore: what the task restored goes, the destination's own objects stay
    status, result = ansible.module(MIGRATE, args)
    assert dst.value('SELECT public.helper()', dbname='shared') == 'mine'
    assert dst.value('SELECT count(*) FROM public.keep', dbname='shared') == 1
    assert status == 'failed' and 'already exists' in result['msg'], result
    # the user moves the own function out of the way; the next re-run completes, the renamed function intact
    dst.execute('ALTER FUNCTION public.helper() RENAME TO helper_mine', dbname='shared')
    status, result = ansible.module(MIGRATE, args)
    assert status == 'changed', result.get('msg', result)
    assert result['task']['stage'] == 'sync'
    src.execute("INSERT INTO app.items (id, m) VALUES (1000, 'sad')", dbname='shared')
    finish = {k: args[k] for k in ('name', 'source', 'destination', 'worker_dir')}
    assert dst.value('SELECT public.helper_mine()', dbname='shared') == 'mine'
    # the proof of the whole scope names the destination's own function as extra; the data of the task matches
    status, result = ansible.module(FINISH, dict(finish, keep_source_fence=False, on_mismatch='warn'))
    assert status == 'changed', result.get('msg', result)
    assert [c for c in result['comparison'] if c['result'] != 'match'] == [
        c for c in result['comparison'] if 'helper_mine' in str(c)], result['comparison']
    assert dst.value('SELECT public.helper_mine()', dbname='shared') == 'mine'
    assert dst.value('SELECT public.helper()', dbname='shared') == 'theirs'
    assert dst.value('SELECT count(*) FROM public.keep', dbname='shared') == 1
    source_rows = src.execute('SELECT id, m::text, note FROM app.items ORDER BY id', dbname='shared')
    assert dst.execute('SELECT id, m::text, note FROM app.items ORDER BY id', dbname='shared') == source_rows
