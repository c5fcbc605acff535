"""The write fence of pg_dts_finish is proven, not assumed: writers that get past it are applied and named (or make
finish fail), sessions named like pgdts are ended, each database gets its own setting back, and a finish that fails,
is interrupted or killed does not leave the source fenced."""

from __future__ import annotations

import os
import signal
import threading
import time

import psycopg
import pytest
from psycopg import sql

from tests.harness.data import assert_same_contents
from tests.harness.faults import BackgroundPlay, create_login_role, play

MIGRATE = 'pgdts.migration.pg_dts_migrate'
FINISH = 'pgdts.migration.pg_dts_finish'


@pytest.fixture(scope='module')
def servers(module_pg_factory):
    return module_pg_factory('fnsrc'), module_pg_factory('fndst')


def task_args(servers, tmp_path, name, dbname):
    src, dst = servers
    return {'name': name, 'source': src.spec(), 'destination': dst.spec(), 'worker_dir': str(tmp_path / 'workers'),
            'databases': [dbname]}


def finish_args(args, **extra):
    out = {k: args[k] for k in ('name', 'source', 'destination', 'worker_dir')}
    out.update(extra)
    return out


def make_database(src, dbname, settings=()):
    src.create_database(dbname)
    src.execute('CREATE TABLE ledger (id bigserial PRIMARY KEY, who text NOT NULL, '
                'at timestamptz NOT NULL DEFAULT clock_timestamp())', dbname=dbname)
    src.execute("INSERT INTO ledger (who) SELECT 'seed' FROM generate_series(1, 500)", dbname=dbname)
    for name, value in settings:
        src.execute(set_sql(dbname, name, value))


def set_sql(dbname, name, value):
    statement = sql.SQL('ALTER DATABASE {} SET {} = {}')
    return statement.format(sql.Identifier(dbname), sql.Identifier(name), sql.Literal(value))


def db_settings(cluster, dbname):
    """The database's own settings (pg_db_role_setting, all roles), exactly."""
    return cluster.value('SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase '
                         'WHERE d.datname = %s AND s.setrole = 0', (dbname,))


def start(ansible, args):
    status, result = ansible.module(MIGRATE, dict(args, jobs=2, wait='synced', wait_timeout=300))
    assert status == 'changed', result
    assert result['task']['stage'] == 'sync'


class Writer(threading.Thread):
    """An application that keeps inserting into ledger, reconnecting when its session is ended. `mode`:
    role     logs in as a role with ALTER ROLE ... SET default_transaction_read_only = off
    begin    BEGIN READ WRITE around each insert
    options  -c default_transaction_read_only=off in its connection options
    plain    nothing special (its writes fail once the database is read-only)
    After its first session was ended it commits `after_fence` rows more and stops (None: until stop())."""

    def __init__(self, cluster, dbname, mode, application_name, after_fence=None, user='postgres', password=None):
        super().__init__(daemon=True)
        self.cluster, self.dbname, self.mode = cluster, dbname, mode
        self.application_name, self.after_fence = application_name, after_fence
        self.user, self.password = user, password
        self.stopping = threading.Event()
        self.commits = 0
        self.fenced_commits = 0
        self.refused = 0
        self.reconnects = 0
        self.error = None

    def connect(self):
        return psycopg.connect(host=self.cluster.host, port=self.cluster.port, dbname=self.dbname, user=self.user,
                               password=self.password or self.cluster.password, autocommit=True,
                               application_name=self.application_name, connect_timeout=10,
                               options='-c default_transaction_read_only=off' if self.mode == 'options' else None)

    def write(self, conn):
        if self.mode == 'begin':
            conn.execute('BEGIN READ WRITE')
            conn.execute('INSERT INTO ledger (who) VALUES (%s)', (self.application_name,))
            conn.execute('COMMIT')
        else:
            conn.execute('INSERT INTO ledger (who) VALUES (%s)', (self.application_name,))

    def run(self):
        conn = None
        try:
            while not self.stopping.is_set():
                if conn is None:
                    conn = self.connect()
                try:
                    self.write(conn)
                except psycopg.errors.ReadOnlySqlTransaction:
                    self.refused += 1
                    if self.mode == 'begin':
                        conn.execute('ROLLBACK')
                except psycopg.OperationalError:
                    conn.close()
                    conn = None
                    self.reconnects += 1
                    continue
                else:
                    self.commits += 1
                    if self.reconnects:
                        self.fenced_commits += 1
                        if self.after_fence is not None and self.fenced_commits >= self.after_fence:
                            return
                self.stopping.wait(0.05)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            if conn is not None:
                conn.close()

    def stop(self):
        self.stopping.set()
        self.join(30)
        assert not self.is_alive()


def leaky_login(src, dbname):
    if not src.value("SELECT count(*) FROM pg_roles WHERE rolname = 'leaky'"):
        create_login_role(src, 'leaky', 'leaky-secret-1')
    src.execute('ALTER ROLE leaky SET default_transaction_read_only = off')
    grant_leaky(src, dbname)
    return 'leaky', 'leaky-secret-1'


def grant_leaky(src, dbname):
    src.execute('GRANT ALL ON ALL TABLES IN SCHEMA public TO leaky', dbname=dbname)
    src.execute('GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO leaky', dbname=dbname)


OWN_SETTINGS = [('default_transaction_read_only', 'off'), ('work_mem', '8MB')]


@pytest.mark.parametrize('mode', ['role', 'begin', 'options'])
def test_writer_through_the_fence_fails_finish(servers, ansible, tmp_path, mode):
    """A client that keeps writing past the fence (a role setting, BEGIN READ WRITE, -c options): with the default
    on_fence_leak=fail finish fails naming it, the fence is lifted with the database's own settings exactly as before,
    the sync keeps running and brings every row."""
    src, dst = servers
    dbname = 'leak_%s' % mode
    make_database(src, dbname, OWN_SETTINGS)
    before = db_settings(src, dbname)
    assert sorted(before) == ['default_transaction_read_only=off', 'work_mem=8MB']
    user, password = 'postgres', None
    if mode == 'role':
        user, password = leaky_login(src, dbname)
    args = task_args(servers, tmp_path, 'fence_%s' % mode, dbname)
    start(ansible, args)
    writer = Writer(src, dbname, mode, 'shop-%s' % mode, user=user, password=password)
    writer.start()
    try:
        time.sleep(1)
        assert writer.commits > 0 and writer.error is None
        status, result = ansible.module(FINISH, finish_args(args))
        assert status == 'failed', result
        assert 'fence leaked' in result['msg'] and 'shop-%s' % mode in result['msg'], result['msg']
        [leak] = result['fence_leaks']
        assert leak['database'] == dbname and leak['transaction_count'] >= 1
        assert all(t['tables'] == ['public.ledger'] for t in leak['transactions'])
        assert (user, 'shop-%s' % mode) in {(w['usename'], w['application_name']) for w in leak['writers']}
        assert any(s['application_name'] == 'shop-%s' % mode for s in result['fenced_sessions'])
        assert result['task']['stage'] == 'sync'
        assert db_settings(src, dbname) == before
        time.sleep(0.5)
        assert writer.fenced_commits > 0
    finally:
        writer.stop()
    assert writer.error is None, writer.error
    assert src.value("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE %s",
                     ('pgdts_fence_%s_%%' % mode,)) == 1
    status, synced = ansible.module(MIGRATE, dict(args, wait='synced'))
    assert status == 'ok', synced
    assert_same_contents(src, dst, dbname)
    if mode == 'role':
        # a finish that fails for another reason (a mismatch) gives the settings back exactly too, and so does the
        # cancel
        with dst.connect(dbname) as conn:
            conn.execute('SET default_transaction_read_only = off')
            conn.execute("UPDATE ledger SET who = 'tampered' WHERE id = 7")
        status, result = ansible.module(FINISH, finish_args(args))
        assert status == 'failed' and 'mismatch' in result['msg'], result
        assert not result.get('fence_leaks'), result.get('fence_leaks')
        assert db_settings(src, dbname) == before
    status, result = ansible.module(MIGRATE, dict(args, state='absent', drop_destination=True))
    assert status == 'changed', result
    assert db_settings(src, dbname) == before


def test_writer_through_the_fence_is_applied_and_named(servers, ansible, tmp_path):
    """on_fence_leak=warn: the rows a writer committed past the fence reach the destination and finish names it in
    its result and a warning instead of reporting a clean cutover."""
    src, dst = servers
    dbname = 'leak_warn'
    make_database(src, dbname)
    args = task_args(servers, tmp_path, 'fence_warn', dbname)
    leaky_login(src, dbname)
    start(ansible, args)
    writer = Writer(src, dbname, 'role', 'shop-warn', after_fence=5, user='leaky', password='leaky-secret-1')
    writer.start()
    time.sleep(1)
    assert writer.commits > 0 and writer.error is None
    status, result = ansible.module(FINISH, finish_args(args, on_fence_leak='warn', keep_source_fence=False))
    writer.stop()
    assert writer.error is None, writer.error
    assert writer.fenced_commits == 5, 'the writer should have written 5 rows past the fence'
    assert status == 'changed', result
    assert result['task']['stage'] == 'finished'
    [leak] = result['fence_leaks']
    # the writer's first commit after its session was ended can land before finish reads the fence point (finish
    # waits for the ended sessions to go, then reads it): that one is before the fence and synced like any other
    assert leak['database'] == dbname and leak['transaction_count'] >= writer.fenced_commits - 1
    assert ('leaky', 'shop-warn') in {(w['usename'], w['application_name']) for w in leak['writers']}
    assert any('fence leaked' in w for w in result.get('warnings', [])), result.get('warnings')
    # nothing is lost: every row the writer committed, before and after the fence, is on the destination
    assert_same_contents(src, dst, dbname)
    assert db_settings(src, dbname) is None


def test_a_session_named_like_pgdts_is_not_spared(servers, ansible, tmp_path):
    """application_name 'pgdts-fake' does not exempt a session from the fence: it is ended, its next writes are
    refused, and after the cutover source and destination hold the same rows."""
    src, dst = servers
    dbname = 'fake_name'
    make_database(src, dbname)
    args = task_args(servers, tmp_path, 'fence_fake', dbname)
    start(ansible, args)
    writer = Writer(src, dbname, 'plain', 'pgdts-fake')
    writer.start()
    try:
        time.sleep(1)
        status, result = ansible.module(FINISH, finish_args(args))
        assert status == 'changed', result
        time.sleep(1)
    finally:
        writer.stop()
    assert writer.error is None, writer.error
    assert any(s['application_name'] == 'pgdts-fake' for s in result['fenced_sessions']), result['fenced_sessions']
    assert result['fence_leaks'] == []
    assert writer.refused > 0, 'the fenced session should have been refused'
    assert_same_contents(src, dst, dbname)
    src.execute(sql.SQL('ALTER DATABASE {} RESET default_transaction_read_only').format(sql.Identifier(dbname)))


def finish_processes(background):
    """The module processes of pg_dts_finish under a background play."""
    found = []
    for pid in background.module_processes():
        try:
            with open('/proc/%d/cmdline' % pid, 'rb') as handle:
                argv = handle.read().decode('utf-8', 'replace')
        except OSError:
            continue
        if 'AnsiballZ_pg_dts_finish' in argv and 'python' in argv.split('\0')[0]:
            found.append(pid)
    return found


def wait_fenced(src, dbname, background, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if 'default_transaction_read_only=on' in (db_settings(src, dbname) or []):
            return
        assert background.proc.poll() is None, background.output()
        time.sleep(0.01)
    raise AssertionError('finish did not fence %s' % dbname)


class held_catch_up:  # noqa: N801  (a context manager)
    """Keep finish waiting, fenced, for its catch-up: the destination's ledger is locked and the source has a change
    for it that the worker cannot apply until the lock goes."""

    def __init__(self, servers, dbname):
        self.src, self.dst, self.dbname = servers[0], servers[1], dbname

    def __enter__(self):
        self.conn = self.dst.connect(self.dbname, autocommit=False)
        self.conn.execute('SET default_transaction_read_only = off')
        self.conn.commit()
        self.conn.execute('LOCK TABLE ledger IN ACCESS EXCLUSIVE MODE')
        self.src.execute("INSERT INTO ledger (who) VALUES ('held')", dbname=self.dbname)
        return self

    def release(self):
        if self.conn is not None:
            self.conn.rollback()
            self.conn.close()
            self.conn = None

    def __exit__(self, *exc):
        self.release()


def background_finish(ansible, args, **extra):
    return BackgroundPlay(ansible, play([{'name': 'finish', FINISH: finish_args(args, wait_timeout=300, **extra)}]))


def dst_stage(servers, task):
    return servers[1].value('SELECT stage FROM pgdts.task WHERE name = %s', (task,), dbname='pgdts')


def test_sigterm_to_finish_lifts_the_fence(servers, ansible, tmp_path):
    """SIGTERM to the finish module while it has the source fenced: it lifts the fence on its way out (the
    database's own setting back), and the task keeps syncing."""
    src, dst = servers
    dbname = 'fence_term'
    make_database(src, dbname, [('default_transaction_read_only', 'off')])
    before = db_settings(src, dbname)
    args = task_args(servers, tmp_path, 'fence_term', dbname)
    start(ansible, args)
    with held_catch_up(servers, dbname):
        background = background_finish(ansible, args)
        wait_fenced(src, dbname, background)
        time.sleep(0.5)
        pids = finish_processes(background)
        assert pids, 'the finish module should be running'
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        background.wait(120)
        assert db_settings(src, dbname) == before, background.output()[-3000:]
        assert 'interrupted' in background.output()
    assert dst_stage(servers, 'fence_term') == 'sync'
    status, synced = ansible.module(MIGRATE, dict(args, wait='synced'))
    assert status == 'ok', synced
    assert_same_contents(src, dst, dbname)
    status, result = ansible.module(MIGRATE, dict(args, state='absent', drop_destination=True))
    assert status == 'changed', result


@pytest.mark.parametrize('then', ['cancel', 'finish'])
def test_killed_finish_leaves_no_fence(servers, ansible, tmp_path, then):
    """The whole play is killed (SIGKILL) while finish has the source fenced: the next finish or a cancel gives the
    database its own setting back."""
    src, dst = servers
    dbname = 'fence_kill_%s' % then
    make_database(src, dbname, [('default_transaction_read_only', 'off')])
    before = db_settings(src, dbname)
    args = task_args(servers, tmp_path, 'fence_kill_%s' % then, dbname)
    start(ansible, args)
    with held_catch_up(servers, dbname):
        background = background_finish(ansible, args)
        wait_fenced(src, dbname, background)
        time.sleep(0.5)
        background.kill()
        assert finish_processes(background) == []
    assert 'default_transaction_read_only=on' in db_settings(src, dbname)      # left fenced by the killed run
    if then == 'cancel':
        status, result = ansible.module(MIGRATE, dict(args, state='absent', drop_destination=True))
        assert status == 'changed', result
        assert db_settings(src, dbname) == before
    else:
        status, result = ansible.module(FINISH, finish_args(args, keep_source_fence=False))
        assert status == 'changed', result
        assert result['comparison_summary']['mismatch'] == 0
        assert db_settings(src, dbname) == before
        assert_same_contents(src, dst, dbname)


def test_logical_replication_subscription_is_ended_or_named(servers, module_pg_factory, ansible, tmp_path):
    """A native subscription writes into a table of a migrated source database: finish ends its apply worker, and
    what it still writes past the fence is applied and named by its subscription."""
    src, _dst = servers
    upstream = module_pg_factory('fnup')
    upstream.create_database('pubdb')
    upstream.execute('CREATE TABLE feed (id bigserial PRIMARY KEY, v text)', dbname='pubdb')
    upstream.execute('CREATE PUBLICATION feedpub FOR TABLE feed', dbname='pubdb')
    dbname = 'subdb'
    make_database(src, dbname)
    src.execute('CREATE TABLE feed (id bigint PRIMARY KEY, v text)', dbname=dbname)
    conninfo = 'host=%s port=%d dbname=pubdb user=postgres password=%s' % (upstream.host, upstream.port,
                                                                           upstream.password)
    src.execute(sql.SQL('CREATE SUBSCRIPTION feedsub CONNECTION {} PUBLICATION feedpub').format(sql.Literal(conninfo)),
                dbname=dbname)
    args = task_args(servers, tmp_path, 'fence_sub', dbname)
    start(ansible, args)
    stop = threading.Event()

    def feed():
        with upstream.connect('pubdb') as conn:
            while not stop.is_set():
                conn.execute("INSERT INTO feed (v) VALUES ('x')")
                stop.wait(0.05)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        deadline = time.time() + 60
        while not src.value('SELECT count(*) FROM feed', dbname=dbname) and time.time() < deadline:
            time.sleep(0.2)
        assert src.value('SELECT count(*) FROM feed', dbname=dbname) > 0, 'the subscription should be applying'
        status, result = ansible.module(FINISH, finish_args(args, keep_source_fence=False))
    finally:
        stop.set()
        feeder.join(30)
        src.execute('ALTER SUBSCRIPTION feedsub DISABLE', dbname=dbname)
    print('finish: %s %s' % (status, result.get('msg')))
    ended = [s for s in result['fenced_sessions'] if s['backend_type'].startswith('logical replication')]
    assert ended, result['fenced_sessions']
    if status == 'failed':
        # the apply worker came back and wrote past the fence: named by its subscription (pgoutput sends the origin)
        assert 'fence leaked' in result['msg'] and 'feedsub' in result['msg'], result['msg']
        assert result['fence_leaks'][0]['subscriptions'] == ['feedsub'], result['fence_leaks']
        assert result['task']['stage'] == 'sync'
        status, result = ansible.module(MIGRATE, dict(args, state='absent', drop_destination=True))
    assert status == 'changed', result
    src.execute('ALTER SUBSCRIPTION feedsub SET (slot_name = NONE)', dbname=dbname)
    src.execute('DROP SUBSCRIPTION feedsub', dbname=dbname)


@pytest.mark.parametrize('end', ['cancel', 'finish'])
def test_destination_database_gets_its_own_setting_back(servers, ansible, tmp_path, end):
    """A destination database that existed with its own default_transaction_read_only: the worker protects it
    read-only during the sync, and the cancel or the finish gives it back its own value, not a RESET."""
    src, dst = servers
    dbname = 'dst_own_%s' % end
    make_database(src, dbname)
    dst.create_database(dbname)
    for name, value in OWN_SETTINGS:
        dst.execute(set_sql(dbname, name, value))
    before = db_settings(dst, dbname)
    args = task_args(servers, tmp_path, 'dst_own_%s' % end, dbname)
    start(ansible, args)
    assert 'default_transaction_read_only=on' in db_settings(dst, dbname)      # protected during the sync
    if end == 'cancel':
        status, result = ansible.module(MIGRATE, dict(args, state='absent', drop_destination=True))
    else:
        status, result = ansible.module(FINISH, finish_args(args, keep_source_fence=False))
        assert_same_contents(src, dst, dbname)
    assert status == 'changed', result
    assert db_settings(dst, dbname) == before
    assert db_settings(src, dbname) is None
