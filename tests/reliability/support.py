"""Helpers of the reliability suite: a write load whose rows record every change, task polling, worker killing,
background plays, and snapshots of everything a bad input must leave alone.

The data set: pgbench tables (scale 1-3) plus
  ledger   (k, v)              insert-only, NO key: a change applied twice shows up as an extra row, a lost one as
                               a missing row;
  counters (k PK, n, total)    `n = n + 1, total = total + v` in the same transaction as the ledger insert, so on
                               every consistent copy counters.n = count(ledger) and counters.total = sum(ledger.v)
                               per k;
  churn    (id PK, v)          inserts, updates and deletes of keyed rows.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import tempfile
import threading
import time

import psycopg
import yaml
from psycopg import sql

from tests.harness.data import assert_same_database

MIGRATE = 'pgdts.migration.pg_dts_migrate'
FINISH = 'pgdts.migration.pg_dts_finish'
INFO = 'pgdts.migration.pg_dts_info'
VERIFY = 'pgdts.migration.pg_dts_verify'

LOAD_SCHEMA = '''
CREATE TABLE ledger (k integer NOT NULL, v integer NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE counters (k integer PRIMARY KEY, n bigint NOT NULL DEFAULT 0, total bigint NOT NULL DEFAULT 0);
CREATE TABLE churn (id integer PRIMARY KEY, v text NOT NULL);
INSERT INTO counters (k) SELECT g FROM generate_series(0, 19) g;
WITH seed AS (SELECT g % 20 AS k, 1 + g % 97 AS v FROM generate_series(1, 20000) g),
     ins AS (INSERT INTO ledger (k, v) SELECT k, v FROM seed)
UPDATE counters c SET n = s.n, total = s.total
  FROM (SELECT k, count(*) AS n, sum(v) AS total FROM seed GROUP BY k) s WHERE s.k = c.k;
INSERT INTO churn SELECT g, md5(g::text) FROM generate_series(1, 2000) g;
'''


def create_load_database(cluster, dbname, scale=1, extra_indexes=False, views=0):
    """pgbench tables plus the ledger tables (see the module docstring); `views` views and functions more make the
    schema stage last longer."""
    cluster.create_database(dbname)
    cluster.run_client('pgbench', ['-i', '-s', str(scale), '-q', '--foreign-keys', dbname], dbname=dbname,
                       capture_output=True)
    with cluster.connect(dbname) as conn:
        conn.execute(LOAD_SCHEMA)
        if views:
            conn.execute('CREATE SCHEMA extra')
            for n in range(views):
                conn.execute(sql.SQL('CREATE VIEW {} AS SELECT k, n, total FROM public.counters WHERE k = {}').format(
                    sql.Identifier('extra', 'counter_%d' % n), sql.Literal(n % 20)))
                conn.execute(sql.SQL('CREATE FUNCTION {}(integer) RETURNS integer LANGUAGE sql IMMUTABLE '
                                     'AS $$ SELECT $1 + {} $$').format(sql.Identifier('extra', 'plus_%d' % n),
                                                                       sql.Literal(n)))
        if extra_indexes:
            # more post-data work, so that the index stage lasts long enough to be hit
            conn.execute('CREATE INDEX accounts_bal_idx ON pgbench_accounts (abalance, aid)')
            conn.execute('CREATE INDEX accounts_bid_idx ON pgbench_accounts (bid, aid)')
            conn.execute('CREATE INDEX accounts_filler_idx ON pgbench_accounts (md5(aid::text))')
            conn.execute('CREATE INDEX ledger_k_idx ON ledger (k, v)')


def ledger_invariants(cluster, dbname):
    """Per k: (ledger rows, ledger sum) and (counters.n, counters.total); equal on any consistent database."""
    with cluster.connect(dbname) as conn:
        ledger = dict((r[0], (r[1], r[2])) for r in conn.execute(
            'SELECT k, count(*), sum(v) FROM ledger GROUP BY k ORDER BY k').fetchall())
        counters = dict((r[0], (r[1], r[2])) for r in conn.execute(
            'SELECT k, n, total FROM counters WHERE n > 0 ORDER BY k').fetchall())
    return ledger, counters


def pgbench_invariants(cluster, dbname):
    """pgbench's own bookkeeping: every transaction adds delta to one account, teller and branch and logs it."""
    return cluster.execute('SELECT (SELECT coalesce(sum(delta), 0) FROM pgbench_history), '
                           '(SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(tbalance) FROM pgbench_tellers), '
                           '(SELECT sum(bbalance) FROM pgbench_branches), (SELECT count(*) FROM pgbench_history)',
                           dbname=dbname)[0]


def assert_exactly_once(src, dst, dbname):
    """The test's own judgement: same rows on both sides (duplicates count), sequences, large objects and definitions
    (read from both catalogs, without pgdts code), and the bookkeeping adds up."""
    rows = assert_same_database(src, dst, dbname)
    ledger, counters = ledger_invariants(dst, dbname)
    assert ledger == counters, 'destination ledger and counters disagree: %s vs %s' % (ledger, counters)
    hist, acc, tel, bra, _count = pgbench_invariants(dst, dbname)
    assert hist == acc == tel == bra, 'destination pgbench sums disagree: %s' % ((hist, acc, tel, bra),)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Write load

class Writer(threading.Thread):
    """Commits small transactions on the source until stopped; reconnects after any error (restarts, fences).

    Each transaction: one ledger insert + the matching counters update, and every 5th a churn insert/update/delete.
    Plus a pgbench-like transaction on the pgbench tables. `commits` counts transactions known to be committed."""

    def __init__(self, cluster, dbname, seed=0, interval=0.005):
        super().__init__(name='writer-%s' % dbname, daemon=True)
        self.cluster = cluster
        self.dbname = dbname
        self.rng = random.Random(seed)
        self.interval = interval
        self.stop_event = threading.Event()
        self.commits = 0
        self.errors = 0
        self.last_error = None

    def _transaction(self, conn):
        rng = self.rng
        k, v = rng.randrange(20), rng.randrange(1, 1000)
        conn.execute('INSERT INTO ledger (k, v) VALUES (%s, %s)', (k, v))
        conn.execute('UPDATE counters SET n = n + 1, total = total + %s WHERE k = %s', (v, k))
        aid, tid, bid, delta = rng.randrange(1, 100001), rng.randrange(1, 11), 1, rng.randrange(-5000, 5001)
        conn.execute('UPDATE pgbench_accounts SET abalance = abalance + %s WHERE aid = %s', (delta, aid))
        conn.execute('UPDATE pgbench_tellers SET tbalance = tbalance + %s WHERE tid = %s', (delta, tid))
        conn.execute('UPDATE pgbench_branches SET bbalance = bbalance + %s WHERE bid = %s', (delta, bid))
        conn.execute('INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (%s, %s, %s, %s, now())',
                     (tid, bid, aid, delta))
        if rng.random() < 0.2:
            key = rng.randrange(1, 3000)
            op = rng.choice(('ins', 'upd', 'del'))
            if op == 'ins':
                conn.execute('INSERT INTO churn VALUES (%s, %s) ON CONFLICT (id) DO UPDATE SET v = excluded.v',
                             (key, 'i%d' % self.commits))
            elif op == 'upd':
                conn.execute('UPDATE churn SET v = v || %s WHERE id = %s', ('u', key))
            else:
                conn.execute('DELETE FROM churn WHERE id = %s', (key,))

    def run(self):
        conn = None
        while not self.stop_event.is_set():
            try:
                if conn is None:
                    conn = psycopg.connect(host=self.cluster.host, port=self.cluster.port, user='postgres',
                                           password=self.cluster.password, dbname=self.dbname, connect_timeout=3,
                                           application_name='test-writer')
                self._transaction(conn)
                conn.commit()
                self.commits += 1
            except psycopg.Error as exc:
                self.errors += 1
                self.last_error = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                try:
                    conn.close()
                except Exception:  # pylint: disable=broad-except
                    pass
                conn = None
                self.stop_event.wait(0.2)
                continue
            self.stop_event.wait(self.interval)
        if conn is not None:
            conn.close()

    def stop(self):
        self.stop_event.set()
        self.join(30)
        return self.commits


class writing:  # noqa: N801  (used as a context manager)
    def __init__(self, cluster, dbname, seed=0, interval=0.005):
        self.writer = Writer(cluster, dbname, seed, interval)

    def __enter__(self):
        self.writer.start()
        return self.writer

    def __exit__(self, *exc):
        self.writer.stop()


# ---------------------------------------------------------------------------------------------------------------
# Task state and the worker

class TaskPoller:
    """Reads pgdts.task on the destination directly; tolerates the destination or the table being absent."""

    def __init__(self, dst, task):
        self.dst = dst
        self.task = task
        self.conn = None

    def row(self):
        try:
            if self.conn is None or self.conn.closed:
                self.conn = psycopg.connect(host=self.dst.host, port=self.dst.port, user='postgres',
                                            password=self.dst.password, dbname='pgdts', autocommit=True,
                                            connect_timeout=3)
            row = self.conn.execute('SELECT stage, error, request FROM pgdts.task WHERE name = %s',
                                    (self.task,)).fetchone()
            return {'stage': row[0], 'error': row[1], 'request': row[2]} if row else None
        except psycopg.Error:
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            return None

    def stage(self):
        row = self.row()
        return row['stage'] if row else None

    def wait_stage(self, stages, timeout=120, interval=0.01):
        stages = (stages,) if isinstance(stages, str) else tuple(stages)
        deadline = time.time() + timeout
        seen = None
        while time.time() < deadline:
            seen = self.stage()
            if seen in stages:
                return seen
            time.sleep(interval)
        raise AssertionError('task %s did not reach %s within %d s (stage %s)' % (self.task, stages, timeout, seen))

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def task_dir(worker_dir, task):
    return os.path.join(str(worker_dir), task)


def process_alive(pid):
    """True for a running process (zombies count as dead)."""
    try:
        with open('/proc/%d/stat' % pid) as handle:
            return handle.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except (OSError, IndexError):
        return False


def worker_pid(worker_dir, task):
    """The pid in <worker_dir>/<task>/worker.pid when that process is alive and is this task's worker."""
    try:
        with open(os.path.join(task_dir(worker_dir, task), 'worker.pid')) as handle:
            pid = int(handle.read().strip())
    except (OSError, ValueError):
        return None
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as handle:
            cmdline = handle.read().decode('utf-8', 'replace')
    except OSError:
        return None
    if 'worker' not in cmdline or not process_alive(pid):
        return None
    return pid


def wait_worker(worker_dir, task, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        pid = worker_pid(worker_dir, task)
        if pid:
            return pid
        time.sleep(0.01)
    raise AssertionError('no live worker for task %s after %d s' % (task, timeout))


def kill_worker(worker_dir, task, pid=None):
    """SIGKILL the task's worker; returns the pid killed (None when there was none)."""
    pid = pid or worker_pid(worker_dir, task)
    if not pid:
        return None
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return None
    deadline = time.time() + 10
    while process_alive(pid) and time.time() < deadline:
        time.sleep(0.01)
    assert not process_alive(pid), 'worker %d survived SIGKILL' % pid
    return pid


def worker_log(worker_dir, task):
    try:
        with open(os.path.join(task_dir(worker_dir, task), 'worker.log')) as handle:
            return handle.read()
    except OSError:
        return ''


# ---------------------------------------------------------------------------------------------------------------
# Plays

def play(tasks, name='pgdts reliability'):
    return {'name': name, 'hosts': 'localhost', 'gather_facts': False, 'tasks': tasks}


class BackgroundPlay:
    """ansible-playbook started without waiting for it, in its own process group (so it can be killed whole)."""

    def __init__(self, ansible, playbook, verbosity=0):
        self.ansible = ansible
        fd, self.path = tempfile.mkstemp(suffix='.yml', dir=ansible.workdir)
        with os.fdopen(fd, 'w') as handle:
            yaml.safe_dump(playbook if isinstance(playbook, list) else [playbook], handle, sort_keys=False)
        fd, self.results_file = tempfile.mkstemp(suffix='.jsonl', dir=ansible.workdir)
        os.close(fd)
        env = ansible.env()
        env['PGDTS_RESULTS_FILE'] = self.results_file
        cmd = [os.path.join(os.path.dirname(os.path.abspath(os.sys.executable)), 'ansible-playbook'),
               '-i', ansible.inventory, self.path]
        if verbosity:
            cmd.append('-' + 'v' * verbosity)
        self.out = tempfile.TemporaryFile(mode='w+')
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.out, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)

    def kill(self):
        """SIGKILL the playbook and everything it started - Ansible's forks and the module processes, which Ansible
        puts into sessions of their own - except a detached pgdts worker: the controller host disappears."""
        doomed = self.module_processes() + [self.proc.pid]
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(30)
        deadline = time.time() + 10
        while any(process_alive(p) for p in doomed) and time.time() < deadline:
            time.sleep(0.05)

    def wait(self, timeout=600):
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        return self.proc.returncode

    def output(self):
        self.out.seek(0)
        return self.out.read()

    def results(self):
        with open(self.results_file) as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def module_processes(self):
        """Live descendants of the playbook process (Ansible forks, module processes), without a pgdts worker and its
        children."""
        return [pid for pid in descendants(self.proc.pid) if process_alive(pid)]


def _parents():
    parents = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open('/proc/%s/stat' % entry) as handle:
                    parents[int(entry)] = int(handle.read().rsplit(')', 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    return parents


def _is_pgdts_worker(pid):
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as handle:
            return b'plugins.module_utils.worker' in handle.read()
    except OSError:
        return False


def descendants(root):
    """Every descendant of `root`, leaving out pgdts workers and what they run."""
    children = {}
    for pid, parent in _parents().items():
        children.setdefault(parent, []).append(pid)
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if _is_pgdts_worker(pid):
            continue
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def run_module(ansible, module, args, **kwargs):
    return ansible.module(module, args, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Snapshots for bad input: everything a failed call must leave exactly as it was

def server_snapshot(cluster):
    """Databases, roles, slots, origins, and per database the publications, schemas, tables and row counts."""
    snap = {}
    with cluster.connect() as conn:
        snap['databases'] = [r[0] for r in conn.execute(
            'SELECT datname FROM pg_database ORDER BY 1').fetchall()]
        snap['database_settings'] = [tuple(map(str, r)) for r in conn.execute(
            'SELECT setdatabase, setrole, setconfig FROM pg_db_role_setting ORDER BY 1, 2').fetchall()]
        snap['roles'] = [tuple(r) for r in conn.execute(
            'SELECT rolname, rolsuper, rolreplication, rolcreatedb FROM pg_roles ORDER BY 1').fetchall()]
        snap['slots'] = [tuple(map(str, r)) for r in conn.execute(
            'SELECT slot_name, plugin, database, temporary FROM pg_replication_slots ORDER BY 1').fetchall()]
        snap['origins'] = [r[0] for r in conn.execute('SELECT roname FROM pg_replication_origin ORDER BY 1').fetchall()]
        snap['settings'] = [tuple(r) for r in conn.execute(
            "SELECT name, setting FROM pg_settings WHERE source NOT IN ('default', 'override', 'session', 'client') "
            'ORDER BY 1').fetchall()]
    for dbname in snap['databases']:
        if dbname in ('template0',):
            continue
        try:
            with cluster.connect(dbname) as conn:
                per = {'publications': [r[0] for r in conn.execute('SELECT pubname FROM pg_publication ORDER BY 1')],
                       'schemas': [r[0] for r in conn.execute(
                           "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' ORDER BY 1")],
                       'relations': {}}
                for schema, name, kind in conn.execute(
                        "SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON "
                        "n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', "
                        "'pg_toast') ORDER BY 1, 2").fetchall():
                    count = None
                    if kind in ('r', 'p'):
                        count = conn.execute(sql.SQL('SELECT count(*) FROM {}').format(
                            sql.Identifier(schema, name))).fetchone()[0]
                    per['relations']['%s.%s' % (schema, name)] = (kind, count)
                snap['db:' + dbname] = per
        except psycopg.Error as exc:
            snap['db:' + dbname] = 'unreadable: %s' % exc.__class__.__name__
    for name in ('postgresql.conf', 'postgresql.auto.conf', 'pg_hba.conf'):
        with open(os.path.join(cluster.datadir, name), 'rb') as handle:
            snap['file:' + name] = handle.read()
    return snap


def disk_snapshot(*paths):
    """Every file under the paths with its size and mode (a path that does not exist is recorded as absent)."""
    snap = {}
    for root in paths:
        root = str(root)
        if not os.path.exists(root):
            snap[root] = 'absent'
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames) + ['.']:
                path = os.path.join(dirpath, name) if name != '.' else dirpath
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                snap[path] = (st.st_size if name != '.' else 0, oct(st.st_mode))
    return snap


def diff_snapshots(before, after):
    """A readable list of what differs between two snapshots (empty when equal)."""
    out = []
    for key in sorted(set(before) | set(after), key=str):
        if before.get(key) != after.get(key):
            out.append('%s: %r -> %r' % (key, _short(before.get(key)), _short(after.get(key))))
    return out


def _short(value):
    text = repr(value)
    return text if len(text) < 300 else text[:300] + '...'


def slot_wal_status(cluster, slot_prefix):
    return cluster.execute('SELECT slot_name, wal_status, active FROM pg_replication_slots WHERE slot_name LIKE %s',
                           (slot_prefix + '%',))


def task_slots(cluster, task):
    """Replication slots of a task (pgdts_<task>_<8 hex>, and temporary ones with a _t<n> suffix)."""
    return [r[0] for r in cluster.execute('SELECT slot_name FROM pg_replication_slots WHERE slot_name ~ %s ORDER BY 1',
                                          ('^pgdts_%s_[0-9a-f]{8}(_t[0-9]+)?$' % task,))]


def task_origins(cluster, task):
    return [r[0] for r in cluster.execute('SELECT roname FROM pg_replication_origin WHERE roname ~ %s ORDER BY 1',
                                          ('^pgdts_%s_[0-9a-f]{8}$' % task,))]


def slot_lag(cluster, task):
    """Bytes between the source's WAL end and what the task's slot confirmed (readable with the destination down)."""
    return cluster.value('SELECT max(pg_wal_lsn_diff(pg_current_wal_flush_lsn(), confirmed_flush_lsn))::bigint '
                         'FROM pg_replication_slots WHERE slot_name ~ %s', ('^pgdts_%s_[0-9a-f]{8}$' % task,))


def cleanup_task(src, dst, worker_dir, task, databases):
    """After a test (also a failed one): no worker, no slot, no database left behind."""
    kill_worker(worker_dir, task)
    for cluster in (src, dst):
        if not cluster.running():
            cluster.start()
    for slot in task_slots(src, task):
        src.execute('SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots '
                    'WHERE slot_name = %s AND active_pid IS NOT NULL', (slot,))
        for _attempt in range(50):
            try:
                src.execute('SELECT pg_drop_replication_slot(%s)', (slot,))
                break
            except psycopg.errors.ObjectInUse:
                time.sleep(0.1)
    for dbname in databases:
        for cluster in (src, dst):
            cluster.execute(sql.SQL('DROP DATABASE IF EXISTS {} WITH (FORCE)').format(sql.Identifier(dbname)))


def create_login_role(cluster, role, password, attributes=''):
    """A login role whose password reaches the server only as a SCRAM verifier (never in clear text, never logged)."""
    with cluster.connect() as conn:
        verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b'scram-sha-256').decode()
        conn.execute(sql.SQL('CREATE ROLE {} LOGIN {} PASSWORD {}').format(
            sql.Identifier(role), sql.SQL(attributes), sql.Literal(verifier)))


# -- task arguments and the final cutover, as the fault tests use them ------------------------------------------------

def task_args(servers, tmp_path, name, dbname, **extra):
    """pg_dts_migrate arguments of a one-database task between the test servers (jobs 2)."""
    src, dst = servers
    args = {'name': name, 'source': src.spec(), 'destination': dst.spec(), 'worker_dir': str(tmp_path / 'workers'),
            'jobs': 2, 'databases': [dbname], 'replica_identity': 'full'}     # ledger, pgbench_history: no key
    args.update(extra)
    return args


def finish_args(args):
    return {k: args[k] for k in ('name', 'source', 'destination', 'worker_dir')}


def finish_and_compare(ansible, servers, args, dbname, finished_before=False):
    """Run pg_dts_finish (it may already have finished when `finished_before`), then judge the destination: every
    change exactly once, and nothing of the task left on either server."""
    src, dst = servers
    status, result = ansible.module(FINISH, finish_args(args))
    assert status in (('changed', 'ok') if finished_before else ('changed',)), result
    assert result['task']['stage'] == 'finished'
    if status == 'changed':
        assert result['comparison_summary']['mismatch'] == 0
    rows = assert_exactly_once(src, dst, dbname)
    print('destination equals source: %d rows' % rows)
    assert task_slots(src, args['name']) == [] and task_origins(dst, args['name']) == []
    return result


@contextlib.contextmanager
def judged_scenario(servers, worker_dir, task, databases, poller=None):
    """Around a fault scenario: when it fails, print the end of the worker's log; always close the poller and remove
    the task and its databases from both servers."""
    src, dst = servers
    try:
        yield
    except Exception:
        print(worker_log(worker_dir, task)[-6000:])
        raise
    finally:
        if poller is not None:
            poller.close()
        cleanup_task(src, dst, worker_dir, task, databases)
