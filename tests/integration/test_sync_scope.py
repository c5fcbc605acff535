"""What the publication and the sync cover (issue 15, paths 2, 3, 6 and 7), on real servers through real plays:

* a table created on the source during the sync stops the task with its name, and finish refuses;
* a partition attached during the sync under a selected partitioned table is synced (destination equal after finish),
  or, when the destination lacks it, stops the task clearly until it is created there;
* a table without a usable replica identity fails verify and migrate; with replica_identity: full the source's
  application keeps updating it and the sync carries its updates and deletes;
* an unlogged table is copied, left out of the publication, and copied again under the fence at finish.
"""

from __future__ import annotations

import time

import pytest

from tests.harness.data import assert_same_contents


@pytest.fixture(scope='module')
def servers(module_pg_factory):
    return module_pg_factory('scsrc'), module_pg_factory('scdst')


def args_for(servers, tmp_path, name, databases, **extra):
    src, dst = servers
    args = {'name': name, 'source': src.spec(), 'destination': dst.spec(), 'worker_dir': str(tmp_path / 'workers'),
            'databases': databases}
    args.update(extra)
    return args


def verify_args(args, **extra):
    return dict({k: v for k, v in args.items() if k != 'worker_dir'}, **extra)


def finish_args(args):
    return {k: args[k] for k in ('name', 'source', 'destination', 'worker_dir')}


def start(ansible, args, **extra):
    status, result = ansible.module('pgdts.migration.pg_dts_migrate',
                                    dict(args, jobs=2, wait='synced', wait_timeout=300, **extra))
    assert status == 'changed', result
    assert result['task']['stage'] == 'sync', result['task']
    return result


def synced(ansible, args, **extra):
    status, result = ansible.module('pgdts.migration.pg_dts_migrate',
                                    dict(args, wait='synced', wait_timeout=120, **extra))
    return status, result


def info(ansible, args):
    status, result = ansible.module('pgdts.migration.pg_dts_info',
                                    {'name': args['name'], 'source': args['source'],
                                     'destination': args['destination'], 'worker_dir': args['worker_dir']})
    assert status == 'ok', result
    [task] = result['tasks']
    return task


def wait_failed(ansible, args, timeout=40):
    deadline = time.time() + timeout
    while True:
        task = info(ansible, args)
        if task['stage'] == 'failed' or time.time() > deadline:
            return task
        time.sleep(1)


def cancel(ansible, args):
    status, result = ansible.module('pgdts.migration.pg_dts_migrate',
                                    dict(args, state='absent', drop_destination=True))
    assert status == 'changed', result


def dest_write(dst, dbname, *statements):
    """DDL on the destination, past the task's protection (as a user preparing it would)."""
    with dst.connect(dbname) as conn:
        conn.execute('SET default_transaction_read_only = off')
        for statement in statements:
            conn.execute(statement)


@pytest.mark.parametrize('plugin', ['pgoutput', 'wal2json'])
def test_table_created_during_sync_stops_the_task(servers, ansible, tmp_path, plugin):
    src, dst = servers
    db = 'newtab_%s' % plugin
    src.create_database(db)
    src.execute("CREATE TABLE items (id int PRIMARY KEY, v text); "
                "INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 500) g", dbname=db)
    args = args_for(servers, tmp_path, 'newtab_%s' % plugin, [db], plugin=plugin)
    start(ansible, args)
    with src.connect(db) as conn:
        with conn.transaction():
            conn.execute("CREATE TABLE new_t (id int PRIMARY KEY, v text)")
            conn.execute("INSERT INTO new_t SELECT g, 'n' || g FROM generate_series(1, 100) g")
            conn.execute('CREATE SCHEMA "Fresh"')
            conn.execute('CREATE TABLE "Fresh".more (id int PRIMARY KEY)')
            conn.execute('INSERT INTO "Fresh".more SELECT generate_series(1, 10)')
        conn.execute("INSERT INTO items VALUES (501, 'after')")
    task = wait_failed(ansible, args)
    assert task['stage'] == 'failed', task
    message = task['error']['message']
    assert 'public.new_t' in message and '"Fresh".more' in message, message
    assert 'created on the source' in message
    status, result = ansible.module('pgdts.migration.pg_dts_finish', finish_args(args))
    assert status == 'failed', result
    assert 'stage failed' in result['msg'] and 'public.new_t' in result['msg'], result['msg']
    # nothing was finished: the source is not fenced, the task's slot is still there
    assert src.value("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE %s",
                     ('pgdts_newtab_%',)) == 1
    cancel(ansible, args)


def test_new_table_in_scope_of_a_selection(servers, ansible, tmp_path):
    """A table matching the task's patterns is in scope (the task stops); one that does not is ignored; finish checks
    again under the fence (an empty new table produces no change)."""
    src, dst = servers
    db = 'newsel'
    src.create_database(db)
    src.execute("CREATE TABLE orders (id int PRIMARY KEY, v text); INSERT INTO orders VALUES (1, 'a')", dbname=db)
    args = args_for(servers, tmp_path, 'newsel', [db], tables=['public.order*'])
    start(ansible, args)
    src.execute("CREATE TABLE notes (id int PRIMARY KEY); INSERT INTO notes VALUES (1)", dbname=db)
    src.execute("INSERT INTO orders VALUES (2, 'b')", dbname=db)
    status, result = synced(ansible, args)
    assert status == 'ok', result
    time.sleep(6)      # past the worker's scope check: a table out of scope changes nothing
    assert info(ansible, args)['stage'] == 'sync'
    assert dst.value('SELECT v FROM orders WHERE id = 2', dbname=db) == 'b'
    src.execute("CREATE TABLE orders_archive (id int PRIMARY KEY)", dbname=db)
    status, result = ansible.module('pgdts.migration.pg_dts_finish', finish_args(args))
    assert status == 'failed', result
    assert 'public.orders_archive' in result['msg'], result['msg']
    assert 'notes' not in result['msg']
    assert src.value("SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
                     "WHERE d.datname = %s", (db,)) == 0       # the fence was lifted
    cancel(ansible, args)


MEAS = """
CREATE TABLE meas (id int, k int, v text, PRIMARY KEY (id, k)) PARTITION BY RANGE (k);
CREATE TABLE meas_p1 PARTITION OF meas FOR VALUES FROM (0) TO (100);
CREATE TABLE meas_p2 PARTITION OF meas FOR VALUES FROM (100) TO (200);
CREATE TABLE meas_p3 PARTITION OF meas FOR VALUES FROM (200) TO (300);
INSERT INTO meas SELECT g, (g % 3) * 100 + g % 100, 'v' || g FROM generate_series(1, 450) g;
CREATE TABLE unrelated (id int PRIMARY KEY);
"""


@pytest.mark.parametrize('plugin', ['pgoutput', 'wal2json'])
def test_partition_attached_during_sync(servers, ansible, tmp_path, plugin):
    src, dst = servers
    db = 'parts_%s' % plugin
    src.create_database(db)
    src.execute(MEAS, dbname=db)
    args = args_for(servers, tmp_path, 'parts_%s' % plugin, [db], plugin=plugin, tables=['public.meas'])
    start(ansible, args)
    assert src.value('SELECT count(*) FROM meas_p3', dbname=db) == 150
    # the user prepares the destination, then attaches the partition on the source and moves rows into it
    dest_write(dst, db, 'CREATE TABLE meas_p4 PARTITION OF meas FOR VALUES FROM (300) TO (400)')
    with src.connect(db) as conn:
        conn.execute('CREATE TABLE meas_p4 (id int NOT NULL, k int NOT NULL, v text)')
        conn.execute('ALTER TABLE meas ATTACH PARTITION meas_p4 FOR VALUES FROM (300) TO (400)')
        conn.execute('UPDATE meas SET k = k + 100 WHERE k >= 200 AND k < 300')      # 150 rows p3 -> p4
        conn.execute("INSERT INTO meas VALUES (1000, 350, 'new in p4')")
        conn.execute("UPDATE meas SET v = 'changed' WHERE id = 2")
    assert src.value('SELECT count(*) FROM meas_p4', dbname=db) == 151
    status, result = synced(ansible, args)
    assert status == 'ok', result
    assert dst.value('SELECT count(*) FROM meas_p4', dbname=db) == 151
    # a partition the destination lacks stops the task with what to do; once created there, a resume syncs it
    with src.connect(db) as conn:
        conn.execute('CREATE TABLE meas_p5 PARTITION OF meas FOR VALUES FROM (400) TO (500)')
        conn.execute("INSERT INTO meas VALUES (2000, 450, 'in p5')")
    task = wait_failed(ansible, args)
    assert task['stage'] == 'failed', task
    assert 'public.meas_p5' in task['error']['message'] and 'destination has no partition' in task['error']['message']
    dest_write(dst, db, 'CREATE TABLE meas_p5 PARTITION OF meas FOR VALUES FROM (400) TO (500)')
    status, result = ansible.module('pgdts.migration.pg_dts_migrate', dict(args, wait='synced', wait_timeout=120))
    assert status == 'changed' and result['action'] == 'resumed', result
    assert dst.value('SELECT v FROM meas_p5 WHERE id = 2000', dbname=db) == 'in p5'
    status, result = ansible.module('pgdts.migration.pg_dts_finish', finish_args(args))
    assert status == 'changed', result
    assert result['comparison_summary']['mismatch'] == 0
    assert {c['table'] for c in result['comparison']} >= {'meas_p1', 'meas_p2', 'meas_p3', 'meas_p4', 'meas_p5'}
    src.execute('ALTER DATABASE %s RESET default_transaction_read_only' % db)
    src.execute('DROP TABLE unrelated', dbname=db)      # not selected: the destination has no such table
    assert_same_contents(src, dst, db)


KEYLESS = """
CREATE TABLE keyed (id int PRIMARY KEY, v text);
CREATE TABLE heap (a int, b text);
INSERT INTO keyed SELECT g, 'k' || g FROM generate_series(1, 100) g;
INSERT INTO heap SELECT g, 'h' || g FROM generate_series(1, 100) g;
"""


def test_keyless_table_needs_replica_identity_option(servers, ansible, tmp_path):
    src, dst = servers
    db = 'keyless'
    src.create_database(db)
    src.execute(KEYLESS, dbname=db)
    args = args_for(servers, tmp_path, 'keyless', [db])
    status, verify = ansible.module('pgdts.migration.pg_dts_verify', verify_args(args))
    assert status == 'failed', verify
    [item] = [c for c in verify['checks'] if c['id'] == 'tables.replica_identity']
    assert item['status'] == 'failed' and 'keyless.public.heap' in item['message'], item
    assert 'replica_identity: full' in item['hint'] and 'REPLICA IDENTITY FULL' in item['hint']
    status, refused = ansible.module('pgdts.migration.pg_dts_migrate', dict(args, wait='synced'))
    assert status == 'failed', refused
    assert 'tables.replica_identity' in refused['msg']
    assert src.value("SELECT count(*) FROM pg_replication_slots") == 0
    assert src.value("SELECT count(*) FROM pg_publication", dbname=db) == 0
    status, verify = ansible.module('pgdts.migration.pg_dts_verify', verify_args(args, replica_identity='full'))
    [item] = [c for c in verify['checks'] if c['id'] == 'tables.replica_identity']
    assert item['status'] == 'warning' and 'sets REPLICA IDENTITY FULL' in item['message'], item

    start(ansible, args, replica_identity='full')
    assert src.value("SELECT relreplident FROM pg_class WHERE relname = 'heap'", dbname=db) == 'f'
    # the application's updates and deletes on the source keep working, and reach the destination
    with src.connect(db) as conn:
        for n in range(1, 21):
            conn.execute("UPDATE heap SET b = 'u' || b WHERE a = %s", (n,))
        conn.execute('DELETE FROM heap WHERE a > 90')
        conn.execute("INSERT INTO heap VALUES (1, 'dup of 1'), (1, 'dup of 1')")
        conn.execute("DELETE FROM heap WHERE ctid = (SELECT ctid FROM heap WHERE b = 'dup of 1' LIMIT 1)")
    status, result = synced(ansible, args)
    assert status == 'ok', result
    status, result = ansible.module('pgdts.migration.pg_dts_finish', finish_args(args))
    assert status == 'changed', result
    assert result['comparison_summary']['mismatch'] == 0
    assert result['left_out'] == []
    src.execute('ALTER DATABASE %s RESET default_transaction_read_only' % db)
    assert_same_contents(src, dst, db)


def test_keyless_table_left_out(servers, ansible, tmp_path):
    src, dst = servers
    db = 'keyless_out'
    src.create_database(db)
    src.execute(KEYLESS, dbname=db)
    args = args_for(servers, tmp_path, 'keyless_out', [db], replica_identity='exclude')
    status, verify = ansible.module('pgdts.migration.pg_dts_verify', verify_args(args))
    [item] = [c for c in verify['checks'] if c['id'] == 'tables.replica_identity']
    assert item['status'] == 'warning' and 'left out of the task' in item['message'], item
    start(ansible, args)
    assert src.value("SELECT relreplident FROM pg_class WHERE relname = 'heap'", dbname=db) == 'd'
    src.execute("UPDATE heap SET b = 'still works' WHERE a = 1", dbname=db)      # not published: the source is fine
    src.execute("UPDATE keyed SET v = 'synced' WHERE id = 1", dbname=db)
    status, result = synced(ansible, args)
    assert status == 'ok', result
    time.sleep(6)
    assert info(ansible, args)['stage'] == 'sync'       # a left-out table is not a "new table"
    status, result = ansible.module('pgdts.migration.pg_dts_finish', finish_args(args))
    assert status == 'changed', result
    assert result['left_out'] == ['keyless_out.public.heap']
    assert 'heap' not in {c['table'] for c in result['comparison']}
    assert dst.value("SELECT v FROM keyed WHERE id = 1", dbname=db) == 'synced'
    assert dst.value('SELECT count(*) FROM heap', dbname=db) == 0
    src.execute('ALTER DATABASE %s RESET default_transaction_read_only' % db)


@pytest.mark.parametrize('plugin', ['pgoutput', 'wal2json'])
def test_unlogged_table_copied_again_at_finish(servers, ansible, tmp_path, plugin):
    src, dst = servers
    db = 'unlogged_%s' % plugin
    src.create_database(db)
    src.execute("CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY, v text); "
                "CREATE TABLE logged (id int PRIMARY KEY, v text); "
                "INSERT INTO scratch SELECT g, 's' || g FROM generate_series(1, 300) g; "
                "INSERT INTO logged SELECT g, 'l' || g FROM generate_series(1, 300) g", dbname=db)
    args = args_for(servers, tmp_path, 'unlogged_%s' % plugin, [db], plugin=plugin)
    status, verify = ansible.module('pgdts.migration.pg_dts_verify', verify_args(args))
    [item] = [c for c in verify['checks'] if c['id'] == 'tables.unlogged']
    assert item['status'] == 'warning' and 'copies them again' in item['message'], item
    start(ansible, args)
    assert dst.value('SELECT count(*) FROM scratch', dbname=db) == 300
    with src.connect(db) as conn:
        conn.execute("UPDATE scratch SET v = 'changed' WHERE id <= 50")
        conn.execute('DELETE FROM scratch WHERE id > 250')
        conn.execute("INSERT INTO scratch VALUES (1000, 'late')")
        conn.execute("UPDATE logged SET v = 'changed' WHERE id <= 50")
    status, result = synced(ansible, args)
    assert status == 'ok', result
    status, result = ansible.module('pgdts.migration.pg_dts_finish', finish_args(args))
    assert status == 'changed', result
    assert result['unlogged_recopied'] == [{'database': db, 'schema': 'public', 'table': 'scratch', 'rows': 251}]
    assert result['comparison_summary']['mismatch'] == 0
    assert 'scratch' in {c['table'] for c in result['comparison']}
    src.execute('ALTER DATABASE %s RESET default_transaction_read_only' % db)
    assert_same_contents(src, dst, db)
