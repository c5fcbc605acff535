"""migrate_roles on real servers: the source's roles arrive on the destination with their attributes, password
hashes, memberships and role-wide settings; owners and privileges of the copied tables are the source's; roles that
already exist are left alone; no hash reaches a log, an event or the task state; a superuser role that the destination
login may not create fails the task and creates nothing."""

from __future__ import annotations

import json
import threading
import time

import psycopg
import pytest
from psycopg import sql

from ansible_collections.pgdts.migration.plugins.module_utils import checks, roles
from ansible_collections.pgdts.migration.plugins.module_utils import worker_process as worker
from ansible_collections.pgdts.migration.plugins.module_utils.connection import ServerSpec
from ansible_collections.pgdts.migration.plugins.module_utils.task_state import TaskStore
from tests.harness.faults import create_login_role

OWNER_PW = 'Owner-Pw-8817'
USER_PW = 'User-Pw-4410'
BATCH_PW = 'Batch-Pw-5523'
ADMIN_PW = 'Admin-Pw-6634'
KEPT_SRC_PW = 'Kept-Src-Pw-7745'
KEPT_DST_PW = 'Kept-Dst-Pw-8856'
CREATOR_PW = 'Creator-Pw-9967'
USER = 'App User ü'          # quotes, blank, upper case and non-ASCII in a role name
MIGRATED = ['app_admin', 'app_batch', 'app_owner', 'app_readers', USER]

ROLE_ROWS = """
SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication, rolbypassrls,
       rolconnlimit, CASE WHEN isfinite(rolvaliduntil) THEN extract(epoch FROM rolvaliduntil)::text
                          ELSE rolvaliduntil::text END, rolpassword
  FROM pg_authid WHERE rolname = ANY(%s) ORDER BY rolname"""
MEMBERSHIP_ROWS = """
SELECT g.rolname, m.rolname, a.admin_option
  FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid JOIN pg_roles m ON m.oid = a.member
 WHERE m.rolname = ANY(%s) ORDER BY 1, 2"""
SETTING_ROWS = """
SELECT r.rolname, s.setdatabase <> 0, s.setconfig
  FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole WHERE r.rolname = ANY(%s) ORDER BY 1, 2"""
OBJECT_ROWS = """
SELECT 'schema', nspname, '', pg_get_userbyid(nspowner), nspacl::text FROM pg_namespace WHERE nspname = 'app'
UNION ALL
SELECT 'relation', n.nspname, c.relname, pg_get_userbyid(c.relowner), c.relacl::text
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'app' AND c.relkind IN ('r', 'S', 'v')
 ORDER BY 1, 2, 3"""


def rows(cluster, query, params=None, dbname='postgres'):
    return [tuple(r) for r in cluster.execute(query, params, dbname=dbname)]


def hashes(cluster, names):
    return [r[0] for r in cluster.execute('SELECT rolpassword FROM pg_authid WHERE rolname = ANY(%s) '
                                          'AND rolpassword IS NOT NULL', (names,))]


def server_spec(cluster, user='postgres', password=None):
    return ServerSpec.from_dict(cluster.spec(user=user, password=password))


def role_events(log):
    return [e['message'] for e in log or [] if e['message'].startswith('roles: ')]


# -- a task started the way the module starts it, without the module's checks ------------------------------------

def start_task(src, dst, tmp_path, name, databases, destination=None):
    source = server_spec(src)
    destination = destination or server_spec(dst)
    spec = {'name': name, 'databases': databases, 'tables': None, 'exclude_tables': None, 'plugin': 'pgoutput',
            'incremental': False, 'jobs': 2, 'start_at': None, 'protect_destination': True, 'migrate_roles': True,
            'retry_timeout': 30, 'source': source.public_dict(), 'destination': destination.public_dict()}
    with TaskStore(destination) as store:
        store.open(create=True)
        store.create_task(name, spec, 'schema')
    paths = worker.TaskPaths(str(tmp_path / 'workers'), name)
    resume_task(paths, spec, source, destination)
    return paths, spec, source, destination


def resume_task(paths, spec, source, destination):
    worker.prepare_task_dir(paths, spec, source, destination)
    worker.spawn_worker(paths)


def wait_stage(destination, name, stages, timeout=180):
    deadline = time.time() + timeout
    task = None
    with TaskStore(destination) as store:
        store.open(create=False)
        while time.time() < deadline:
            task = store.get_task(name)
            if task['stage'] in stages:
                return task
            time.sleep(0.2)
    raise AssertionError('task %s did not reach %s (stage %s)' % (name, stages, task and task['stage']))


def wait_worker_gone(paths, timeout=30):
    deadline = time.time() + timeout
    while worker.worker_pid(paths) and time.time() < deadline:
        time.sleep(0.1)
    assert worker.worker_pid(paths) is None


# -- the full picture through the module ------------------------------------------------------------------------

def make_source_roles(src):
    create_login_role(src, 'app_owner', OWNER_PW, "CREATEDB CONNECTION LIMIT 7 VALID UNTIL '2099-01-01 00:00:00+00'")
    create_login_role(src, USER, USER_PW)
    create_login_role(src, 'app_batch', BATCH_PW, "NOINHERIT REPLICATION BYPASSRLS CREATEROLE VALID UNTIL 'infinity'")
    create_login_role(src, 'app_admin', ADMIN_PW, 'SUPERUSER')
    create_login_role(src, 'app_kept', KEPT_SRC_PW, 'CREATEDB')
    with src.connect() as conn:
        conn.execute('CREATE ROLE app_readers NOLOGIN')
        conn.execute(sql.SQL('GRANT app_readers TO {} WITH ADMIN OPTION').format(sql.Identifier(USER)))
        conn.execute('GRANT app_readers TO app_batch')
        conn.execute('GRANT app_readers TO app_kept')
        conn.execute('GRANT pg_read_all_settings TO app_owner')
        conn.execute(sql.SQL('ALTER ROLE {} SET search_path = app, "$user", public').format(sql.Identifier(USER)))
        conn.execute(sql.SQL("ALTER ROLE {} SET statement_timeout = '5s'").format(sql.Identifier(USER)))
        conn.execute("ALTER ROLE app_owner SET work_mem = '8MB'")
        conn.execute("ALTER ROLE app_owner IN DATABASE postgres SET work_mem = '16MB'")    # one database only
        conn.execute("ALTER ROLE app_kept SET work_mem = '2MB'")
    src.create_database('rdb')
    with src.connect('rdb') as conn:
        conn.execute('CREATE SCHEMA app AUTHORIZATION app_owner')
        conn.execute('GRANT USAGE ON SCHEMA app TO app_readers')
        conn.execute('CREATE TABLE app.orders (id int PRIMARY KEY, note text)')
        conn.execute('INSERT INTO app.orders SELECT g, md5(g::text) FROM generate_series(1, 100) g')
        conn.execute('ALTER TABLE app.orders OWNER TO app_owner')
        conn.execute('CREATE TABLE app.kept_things (id int PRIMARY KEY)')
        conn.execute('ALTER TABLE app.kept_things OWNER TO app_kept')
        conn.execute('SET ROLE app_owner')
        conn.execute('GRANT SELECT ON app.orders TO app_readers')
        conn.execute(sql.SQL('GRANT INSERT, UPDATE (note) ON app.orders TO {}').format(sql.Identifier(USER)))
        conn.execute('RESET ROLE')
        conn.execute('GRANT SELECT ON app.kept_things TO app_batch')


def test_migrate_roles_brings_roles_owners_and_privileges(pg_factory, ansible, tmp_path):
    src = pg_factory('rsrc')
    dst = pg_factory('rdst', settings={'log_statement': 'all'})
    make_source_roles(src)
    create_login_role(dst, 'app_kept', KEPT_DST_PW)                  # exists on the destination, and differs
    dst.execute('ALTER ROLE app_kept NOLOGIN CONNECTION LIMIT 3')
    kept_before = rows(dst, ROLE_ROWS, (['app_kept'],)) + rows(dst, SETTING_ROWS, (['app_kept'],))
    source_hashes = hashes(src, MIGRATED + ['app_kept'])
    assert len(source_hashes) == 5

    args = {'name': 'roles_task', 'source': src.spec(), 'destination': dst.spec(), 'databases': ['rdb'],
            'migrate_roles': True, 'incremental': False, 'wait': 'copied', 'wait_timeout': 300, 'jobs': 2,
            'worker_dir': str(tmp_path / 'workers')}
    status, result = ansible.module('pgdts.migration.pg_dts_migrate', args)
    assert status == 'changed', result
    assert result['task']['stage'] == 'finished', result['task']

    # the roles, with the same attributes and password hashes
    assert rows(dst, ROLE_ROWS, (MIGRATED,)) == rows(src, ROLE_ROWS, (MIGRATED,))
    assert [r[0] for r in rows(dst, ROLE_ROWS, (MIGRATED,))] == sorted(MIGRATED)
    # memberships (with ADMIN OPTION), also the one of the existing role in a created role
    assert rows(dst, MEMBERSHIP_ROWS, (MIGRATED + ['app_kept'],)) == rows(src, MEMBERSHIP_ROWS, (MIGRATED + ['app_kept'],))
    assert ('app_readers', USER, True) in rows(dst, MEMBERSHIP_ROWS, (MIGRATED,))
    # role-wide settings; the setting of one database only is not copied
    assert rows(dst, SETTING_ROWS, (MIGRATED,)) == [r for r in rows(src, SETTING_ROWS, (MIGRATED,)) if not r[1]]
    assert (USER, False, ['search_path=app, "$user", public', 'statement_timeout=5s']) in rows(dst, SETTING_ROWS,
                                                                                               (MIGRATED,))
    # the role that existed is as it was: attributes, password, settings
    assert rows(dst, ROLE_ROWS, (['app_kept'],)) + rows(dst, SETTING_ROWS, (['app_kept'],)) == kept_before
    # owners and privileges of the copied schema and tables
    assert rows(dst, OBJECT_ROWS, dbname='rdb') == rows(src, OBJECT_ROWS, dbname='rdb')
    assert ('relation', 'app', 'orders', 'app_owner') == rows(dst, OBJECT_ROWS, dbname='rdb')[1][:4]

    # the copied logins work on the destination with their passwords, with their settings and privileges
    with dst.connect('rdb', user=USER, password=USER_PW) as conn:
        assert conn.execute('SELECT count(*) FROM orders').fetchone()[0] == 100     # search_path app, via app_readers
        assert conn.execute('SHOW statement_timeout').fetchone()[0] == '5s'
        conn.execute("UPDATE app.orders SET note = 'x' WHERE id = 1")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute('DELETE FROM app.orders')
    with dst.connect('rdb', user='app_owner', password=OWNER_PW) as conn:
        assert conn.execute('SHOW work_mem').fetchone()[0] == '8MB'
    with pytest.raises(psycopg.OperationalError):
        dst.connect(user='app_kept', password=KEPT_SRC_PW).close()

    # what the task says: one event with the names and counts
    events = role_events(result['task']['log'])
    assert len(events) == 1, result['task']['log']
    assert events[0].startswith('roles: 5 created (%s); 1 already on the destination, left as they are ("app_kept"); '
                                '4 membership(s) granted; 3 role setting(s) set'
                                % ', '.join('"%s"' % n for n in sorted(MIGRATED))), events
    assert 'without password' not in events[0]

    # no hash anywhere: the module's result, the worker log, the task state, the destination's server log
    with open(result['worker_log']) as handle:
        worker_log = handle.read()
    assert events[0] in worker_log
    state = rows(dst, 'SELECT row_to_json(t)::text FROM pgdts.task t', dbname='pgdts')
    state += rows(dst, "SELECT row_to_json(d)::text, encode(d.schema_dump, 'escape') FROM pgdts.task_database d",
                  dbname='pgdts')
    with open(dst.logfile, errors='replace') as handle:
        server_log = handle.read()
    places = {'result': json.dumps(result), 'worker log': worker_log, 'task state': json.dumps(state),
              'destination server log': server_log}
    for secret in source_hashes + [OWNER_PW, USER_PW, BATCH_PW, ADMIN_PW, KEPT_SRC_PW]:
        for where, text in places.items():
            assert secret not in text, 'a password or hash is in the %s' % where
            assert secret.split('$')[-1] not in text, 'part of a hash is in the %s' % where
    assert 'SET LOCAL "log_statement"' in server_log       # log_statement = all was on, and was turned off
    assert 'CREATE ROLE "app_owner"' not in server_log


def test_roles_once_per_task_and_skipped_on_resume(pg_factory, tmp_path):
    src, dst = pg_factory('rrsrc'), pg_factory('rrdst')
    create_login_role(src, 'res_owner', OWNER_PW)
    src.create_database('rres')
    src.execute('CREATE TABLE t (id int PRIMARY KEY)', dbname='rres')
    src.execute('INSERT INTO t SELECT generate_series(1, 50)', dbname='rres')
    src.execute('ALTER TABLE t OWNER TO res_owner', dbname='rres')
    # the destination database has a table in the way: the first schema restore fails, after the roles
    dst.create_database('rres')
    dst.execute('CREATE TABLE t (other text)', dbname='rres')

    paths, spec, source, destination = start_task(src, dst, tmp_path, 'res_task', ['rres'])
    failed = wait_stage(destination, 'res_task', ('failed',))
    assert failed['error']['stage'] == 'schema' and 'already exists' in failed['error']['message'], failed['error']
    assert role_events(failed['log']) == ['roles: 1 created ("res_owner"); 0 already on the destination, left as '
                                          'they are; 0 membership(s) granted; 0 role setting(s) set']
    assert hashes(dst, ['res_owner']) == hashes(src, ['res_owner'])
    wait_worker_gone(paths)

    # the destination's own table is never dropped by a resume (it was there before the task): the user makes room
    dst.execute('ALTER TABLE t RENAME TO t_before', dbname='rres')
    # a role added on the source now is not brought by the resumed task: its roles were done
    create_login_role(src, 'late_role', USER_PW)
    resume_task(paths, spec, source, destination)
    finished = wait_stage(destination, 'res_task', ('finished', 'failed'))
    assert finished['stage'] == 'finished', finished['error']
    assert len(role_events(finished['log'])) == 1, finished['log']
    assert dst.value('SELECT count(*) FROM pg_roles WHERE rolname = %s', ('late_role',)) == 0
    assert dst.value('SELECT count(*) FROM t', dbname='rres') == 50
    assert dst.value("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 't'", dbname='rres') == 'res_owner'
    assert dst.value('SELECT count(*) FROM t_before', dbname='rres') == 0      # the destination's own, kept
    with open(paths.log) as handle:
        assert sum(1 for line in handle if ' roles: ' in line) == 1


def test_superuser_role_needs_a_superuser_destination_and_nothing_is_created(pg_factory, tmp_path):
    src, dst = pg_factory('rssrc'), pg_factory('rsdst')
    create_login_role(src, 'boss_su', ADMIN_PW, 'SUPERUSER')
    create_login_role(src, 'helper', USER_PW)
    src.execute('CREATE ROLE helper_group NOLOGIN')
    src.execute('GRANT helper_group TO helper')
    src.create_database('rsu')
    src.execute('CREATE TABLE t (id int)', dbname='rsu')
    create_login_role(dst, 'dst_creator', CREATOR_PW, 'CREATEDB CREATEROLE')
    creator = server_spec(dst, 'dst_creator', CREATOR_PW)
    roles_before = rows(dst, 'SELECT rolname FROM pg_roles ORDER BY 1')

    paths, _spec, _source, _destination = start_task(src, dst, tmp_path, 'su_task', ['rsu'], destination=creator)
    failed = wait_stage(creator, 'su_task', ('failed', 'finished'))
    assert failed['stage'] == 'failed'
    error = failed['error']
    assert error['stage'] == 'schema', error
    assert 'role "boss_su" is a superuser on the source' in error['message'], error
    assert 'destination user "dst_creator" is not one' in error['message'] and 'No role was created' in \
        error['message'], error
    assert rows(dst, 'SELECT rolname FROM pg_roles ORDER BY 1') == roles_before
    assert dst.value("SELECT count(*) FROM pg_database WHERE datname = 'rsu'") == 0
    wait_worker_gone(paths)
    assert hashes(src, ['boss_su'])[0] not in json.dumps(failed, default=str)

    # an error of the server in the middle of the transaction (a setting only a superuser may give): rolled back
    src.execute('DROP ROLE boss_su')
    src.execute("ALTER ROLE helper SET log_min_messages = 'debug1'")
    with pytest.raises(roles.RolesError) as caught:
        roles.migrate_roles(server_spec(src), creator)
    assert 'setting log_min_messages of role "helper" on the destination failed: permission denied' in \
        str(caught.value), caught.value
    assert rows(dst, 'SELECT rolname FROM pg_roles ORDER BY 1') == roles_before


def test_without_superuser_on_the_source_roles_come_without_password(pg_factory):
    src, dst = pg_factory('rnsrc'), pg_factory('rndst')
    create_login_role(src, 'np_login', USER_PW, 'CREATEDB')
    src.execute('CREATE ROLE np_group NOLOGIN')
    src.execute('GRANT np_group TO np_login')
    create_login_role(src, 'src_reader', CREATOR_PW)            # the source login: not a superuser
    result = roles.migrate_roles(server_spec(src, 'src_reader', CREATOR_PW), server_spec(dst))
    assert result['passwords_read'] is False
    assert result['created'] == ['np_group', 'np_login', 'src_reader']
    assert result['without_password'] == ['np_login', 'src_reader']
    assert result['memberships'] == [{'role': 'np_group', 'member': 'np_login', 'admin_option': False}]
    assert dst.value('SELECT rolcreatedb AND rolpassword IS NULL FROM pg_authid WHERE rolname = %s', ('np_login',))
    assert 'created without password' in roles.describe(result)
    # a second run keeps everything and creates nothing
    again = roles.migrate_roles(server_spec(src, 'src_reader', CREATOR_PW), server_spec(dst))
    assert again['created'] == [] and again['memberships'] == []
    assert again['kept'] == ['np_group', 'np_login', 'src_reader']


def test_state_database_of_an_older_version_gets_the_roles_flag(pg_factory):
    from ansible_collections.pgdts.migration.plugins.module_utils import task_state
    dst = pg_factory('rodst')
    dst.create_database(task_state.STATE_DATABASE)
    with dst.connect(task_state.STATE_DATABASE) as conn:       # the task table as the first release created it
        for ddl in task_state._STATE_DDL:     # pylint: disable=protected-access
            conn.execute(ddl.replace(",\n        roles_done boolean NOT NULL DEFAULT false", ''))
        conn.execute("INSERT INTO pgdts.task (name, spec, stage) VALUES ('old_task', '{}', 'schema')")
    assert dst.value("SELECT count(*) FROM pg_attribute WHERE attrelid = 'pgdts.task'::regclass "
                     "AND attname = 'roles_done'", dbname=task_state.STATE_DATABASE) == 0
    with TaskStore(server_spec(dst)) as store:
        store.open(create=True)
        assert store.roles_done('old_task') is False
        store.set_roles_done('old_task')
        assert store.roles_done('old_task') is True
    with TaskStore(server_spec(dst)) as store:          # opening again changes nothing
        store.open(create=True)
        assert store.roles_done('old_task') is True


def test_verify_reports_the_roles_and_a_task_that_could_not_create_them_does_not_start(pg_factory, ansible, tmp_path):
    src, dst = pg_factory('rvsrc'), pg_factory('rvdst')
    create_login_role(src, 'v_boss', ADMIN_PW, 'SUPERUSER')
    create_login_role(src, 'v_user', USER_PW)
    src.create_database('rv')
    src.execute('CREATE TABLE t (id int PRIMARY KEY)', dbname='rv')
    create_login_role(dst, 'v_creator', CREATOR_PW, 'CREATEDB CREATEROLE')
    creator = server_spec(dst, 'v_creator', CREATOR_PW)
    roles_before = rows(dst, 'SELECT rolname FROM pg_roles ORDER BY 1')

    def roles_item(source, destination, migrate_roles=True):
        items = checks.run_checks(source, destination, 'rv_task', databases=['rv'], migrate_roles=migrate_roles)
        return [i for i in items if i['id'] == 'destination.roles'][0]

    item = roles_item(server_spec(src), creator)
    assert item['status'] == 'failed', item
    assert 'role "v_boss" is a superuser on the source' in item['message'], item
    assert {'type': 'role', 'name': 'v_boss', 'action': 'create'} in item['objects']
    assert roles_item(server_spec(src), creator, migrate_roles=False)['status'] == 'pass'

    # the module refuses to start the task: nothing is created, no worker runs
    args = {'name': 'rv_task', 'source': src.spec(), 'destination': dict(dst.spec(), user='v_creator',
                                                                         password=CREATOR_PW),
            'databases': ['rv'], 'migrate_roles': True, 'worker_dir': str(tmp_path / 'workers')}
    status, result = ansible.module('pgdts.migration.pg_dts_migrate', args)
    assert status == 'failed', result
    assert 'destination.roles' in result['msg'] and 'v_boss' in result['msg'], result['msg']
    assert rows(dst, 'SELECT rolname FROM pg_roles ORDER BY 1') == roles_before
    assert dst.value("SELECT count(*) FROM pg_database WHERE datname = 'rv'") == 0
    assert ADMIN_PW not in json.dumps(result) and hashes(src, ['v_boss'])[0] not in json.dumps(result)

    # a superuser destination may create them all; a source login that may not read pg_authid gives a warning
    item = roles_item(server_spec(src), server_spec(dst))
    assert item['status'] == 'pass', item
    assert item['message'].startswith('2 role(s) to create'), item
    create_login_role(src, 'v_reader', CREATOR_PW)
    item = roles_item(server_spec(src, 'v_reader', CREATOR_PW), server_spec(dst))
    assert item['status'] == 'warning', item
    assert 'created without a password' in item['message'] and '"v_user"' in item['message'], item


def test_two_tasks_bringing_the_same_roles_at_once_both_succeed(pg_factory):
    src, dst = pg_factory('rcsrc'), pg_factory('rcdst')
    create_login_role(src, 'c_login', USER_PW)
    src.execute('CREATE ROLE c_group NOLOGIN')
    src.execute('GRANT c_group TO c_login')
    results, errors = [], []

    def bring():
        try:
            results.append(roles.migrate_roles(server_spec(src), server_spec(dst)))
        except Exception as exc:  # pylint: disable=broad-except
            errors.append(exc)

    # hold the roles lock so that both calls are inside migrate_roles before either may go on
    with dst.connect() as holder:
        holder.execute('SELECT pg_advisory_lock(%s)', (roles.ROLES_LOCK,))
        threads = [threading.Thread(target=bring) for _call in range(2)]
        for thread in threads:
            thread.start()
        deadline = time.time() + 30
        while time.time() < deadline and dst.value(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted") < 2:
            time.sleep(0.05)
        assert dst.value("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted") == 2
        holder.execute('SELECT pg_advisory_unlock(%s)', (roles.ROLES_LOCK,))
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(sorted(r['created']) for r in results) == [[], ['c_group', 'c_login']]
    assert sorted(sorted(r['kept']) for r in results)[1] == ['c_group', 'c_login']
    assert dst.value("SELECT count(*) FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
                     "JOIN pg_roles u ON u.oid = m.member WHERE g.rolname = 'c_group' AND u.rolname = 'c_login'") == 1
