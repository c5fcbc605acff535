"""Cancel with drop_destination into a destination database that existed before the task: exactly what the task
created goes (tables, types, domains, sequences, views, schemas, functions), what the database had before stays, and
a new run starts clean."""

from __future__ import annotations

import pytest

from tests.harness.data import assert_same_contents, create_tricky_database

OWN_BEFORE = """
CREATE TABLE public.keep_me (id integer PRIMARY KEY, note text);
INSERT INTO public.keep_me VALUES (1, 'kept'), (2, 'also kept');
CREATE FUNCTION public.user_function() RETURNS integer LANGUAGE sql AS 'SELECT 42';
CREATE TYPE public.user_type AS ENUM ('x', 'y');
"""

# what a user would look at: every user object of the database, by kind and name
OBJECTS = """
SELECT 'relation ' || c.relkind::text || ' ' || c.oid::regclass::text FROM pg_class c
 WHERE c.relnamespace::regnamespace::text NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
UNION ALL SELECT 'type ' || t.oid::regtype::text FROM pg_type t
 WHERE t.typnamespace::regnamespace::text NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
   AND t.typtype IN ('e', 'd', 'c', 'r') AND t.typrelid = 0
UNION ALL SELECT 'function ' || p.oid::regprocedure::text FROM pg_proc p
 WHERE p.pronamespace::regnamespace::text NOT IN ('pg_catalog', 'information_schema')
UNION ALL SELECT 'schema ' || nspname FROM pg_namespace
 WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
ORDER BY 1
"""


@pytest.fixture(scope='module')
def servers(module_pg_factory):
    return module_pg_factory('ddsrc'), module_pg_factory('dddst')


def objects(cluster, dbname):
    return [r[0] for r in cluster.execute(OBJECTS, dbname=dbname)]


def test_cancel_with_drop_destination_removes_only_what_the_task_created(servers, ansible, tmp_path):
    src, dst = servers
    dbname = 'existing'
    create_tricky_database(src, dbname)
    dst.create_database(dbname)
    with dst.connect(dbname) as conn:
        conn.execute(OWN_BEFORE)
    before = objects(dst, dbname)
    args = {'name': 'into_' + dbname, 'source': src.spec(), 'destination': dst.spec(), 'databases': [dbname],
            'worker_dir': str(tmp_path / 'workers'), 'jobs': 2,
            'wait': 'copied', 'wait_timeout': 300}
    status, result = ansible.module('pgdts.migration.pg_dts_migrate', args)
    assert status == 'changed', result
    assert_same_contents(src, dst, dbname, skip=['public.keep_me'])
    copied = objects(dst, dbname)
    assert 'type mood' in copied and 'type positive_int' in copied and 'schema Sales Dept' in copied

    # check mode says what the cancel would drop, and drops nothing
    status, preview = ansible.module('pgdts.migration.pg_dts_migrate',
                                     dict(args, state='absent', drop_destination=True, wait='none'), check=True)
    assert status == 'changed', preview
    would = {(o['type'], o['name']) for o in preview['would_drop']}
    assert {('type', 'public.mood'), ('type', 'public.positive_int'), ('schema', 'Sales Dept'),
            ('sequence', 'public.free_seq'), ('view', 'public.child_view')} <= would, would
    assert not {name for _kind, name in would if 'keep_me' in name or 'user_' in name}, would
    assert {o['database'] for o in preview['would_drop']} == {dbname}
    assert objects(dst, dbname) == copied
    assert preview['task']['stage'] == 'sync'
    assert '%s: type public.mood' % dbname in preview['diff']['before']['destination_objects']
    assert preview['diff']['after']['destination_objects'] == []

    status, cancelled = ansible.module('pgdts.migration.pg_dts_migrate',
                                       dict(args, state='absent', drop_destination=True, wait='none'))
    assert status == 'changed', cancelled
    assert cancelled['task']['stage'] == 'cancelled'
    assert objects(dst, dbname) == before
    assert dst.execute('SELECT id, note FROM public.keep_me ORDER BY id', dbname=dbname) == [
        (1, 'kept'), (2, 'also kept')]
    assert dst.value('SELECT public.user_function()', dbname=dbname) == 42

    # a new run into the same database starts clean and copies everything again
    status, again = ansible.module('pgdts.migration.pg_dts_migrate', args)
    assert status == 'changed', again
    assert again['task']['stage'] == 'sync', again['task']
    assert_same_contents(src, dst, dbname, skip=['public.keep_me'])
    status, final = ansible.module('pgdts.migration.pg_dts_migrate',
                                   dict(args, state='absent', drop_destination=True, wait='none'))
    assert status == 'changed', final
    assert objects(dst, dbname) == before
