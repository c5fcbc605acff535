# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared pieces of the benchmark scripts: servers, data sets, timing, memory sampling and driving a task.

Nothing here asserts a speed: the scripts print figures and docs/performance.md records them.

"Ours" is always measured through the engine the module uses: `task_control.TaskControl.ensure()` (the checks, the
task row, the detached worker process that `pg_dts_migrate` starts), then the task's durable state is polled until
the wanted stage. The worker is the real one, so its memory can be read from /proc/<pid>/status.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tests.harness.collection import link_collection  # noqa: E402  (after the path set-up)

link_collection()

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from ansible_collections.pgdts.migration.plugins.module_utils import cutover, task_control, task_state  # noqa: E402
from ansible_collections.pgdts.migration.plugins.module_utils import worker as worker_runner  # noqa: E402
from ansible_collections.pgdts.migration.plugins.module_utils import worker_process as worker  # noqa: E402
from ansible_collections.pgdts.migration.plugins.module_utils.connection import ServerSpec  # noqa: E402
from tests.harness.cluster import PgCluster, make_base_dir, pg_bindir  # noqa: E402

# Settings of both benchmark servers on top of the harness defaults (fsync off, full_page_writes off, ...): room for
# bulk loads without forced checkpoints and for index builds, the same for every tool measured. synchronous_commit
# goes back to PostgreSQL's default (on): with the harness's `off`, a commit reaches WAL senders and logical decoding
# only at the next WAL writer flush (wal_writer_delay, 200 ms), which would be measured as replication lag.
BENCH_SETTINGS = {
    'synchronous_commit': 'on',
    'shared_buffers': '256MB',
    'max_wal_size': '8GB',
    'checkpoint_timeout': '30min',
    'maintenance_work_mem': '256MB',
    'max_replication_slots': '20',
    'max_wal_senders': '20',
    'max_logical_replication_workers': '8',
    # the logical replication launcher starts apply workers at most once per this interval (default 5 s): without
    # this, enabling a subscription shortly after another worker start would be measured as slow catch-up
    'wal_retrieve_retry_interval': '200ms',
}

T0 = time.monotonic()


def say(message):
    """Progress line on stderr with the time since the start of the run (stdout is for the results)."""
    sys.stderr.write('[%7.1f s] %s\n' % (time.monotonic() - T0, message))
    sys.stderr.flush()


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt_s(value):
    return '-' if value is None else ('%.2f s' % value if value < 100 else '%.0f s' % value)


def fmt_mb(kb):
    return '-' if kb is None else '%.0f MB' % (kb / 1024.0)


# ---------------------------------------------------------------------------------------------------------------
# Servers

class Servers:
    """Two throw-away clusters (tests/harness/cluster.py): `src` and `dst`; destroyed on exit."""

    def __init__(self, settings=None, keep=False):
        self.base = make_base_dir('pgdts-bench-')
        self.settings = dict(BENCH_SETTINGS)
        self.settings.update(settings or {})
        self.keep = keep
        self.src = None
        self.dst = None
        self.worker_dir = os.path.join(self.base, 'workers')
        self.scratch = os.path.join(self.base, 'scratch')
        os.makedirs(self.scratch, exist_ok=True)

    def __enter__(self):
        try:
            self.src = PgCluster(self.base, 'src', settings=self.settings).init().start()
            self.dst = PgCluster(self.base, 'dst', settings=self.settings).init().start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.keep:
            say('keeping the clusters under %s' % self.base)
            return
        for cluster in (self.src, self.dst):
            if cluster is not None:
                cluster.destroy()
        shutil.rmtree(self.base, ignore_errors=True)

    @staticmethod
    def spec(cluster, dbname='postgres'):
        return ServerSpec.from_options(cluster.spec(dbname=dbname), environ={})

    def harness_settings(self):
        from tests.harness.cluster import DEFAULT_SETTINGS
        merged = dict(DEFAULT_SETTINGS)
        merged.update(self.settings)
        return merged


def drop_database(cluster, dbname):
    with cluster.connect() as conn:
        conn.execute(sql.SQL('DROP DATABASE IF EXISTS {} WITH (FORCE)').format(sql.Identifier(dbname)))


def checkpoint(*clusters):
    for cluster in clusters:
        cluster.execute('CHECKPOINT')


def database_size(cluster, dbname):
    return cluster.value('SELECT pg_database_size(%s)', (dbname,))


def table_count(cluster, dbname):
    return cluster.value("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                         "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
                         dbname=dbname)


@contextlib.contextmanager
def passfile(*clusters):
    """A 0600 libpq password file for the clusters; yields an environment that uses it (no password in argv)."""
    fd, path = tempfile.mkstemp(prefix='pgpass-')
    with os.fdopen(fd, 'w') as handle:
        for cluster in clusters:
            handle.write('%s:%d:*:postgres:%s\n' % (cluster.host, cluster.port, cluster.password))
    os.chmod(path, 0o600)
    env = dict(os.environ)
    for key in list(env):
        if key.startswith('PG'):
            env.pop(key)
    env['PGPASSFILE'] = path
    try:
        yield env
    finally:
        os.unlink(path)


def uri(cluster, dbname):
    """A connection URI without password (the password comes from the password file)."""
    return 'postgresql://postgres@%s:%d/%s' % (cluster.host, cluster.port, dbname)


def client(name):
    return os.path.join(pg_bindir(), name)


def run(argv, env=None, what=None, shell=False):
    """Run a command; raise with its stderr tail when it fails. Returns seconds."""
    started = time.monotonic()
    proc = subprocess.run(argv, env=env, shell=shell, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          check=False, executable='/bin/bash' if shell else None)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        tail = proc.stderr.decode('utf-8', 'replace').strip().splitlines()[-8:]
        raise RuntimeError('%s failed (exit %d): %s' % (what or argv[0], proc.returncode, ' | '.join(tail)))
    return elapsed


# ---------------------------------------------------------------------------------------------------------------
# Data sets

def pgbench_init(cluster, dbname, scale):
    """A pgbench database (tables, data, primary keys, vacuumed); returns its size in bytes."""
    drop_database(cluster, dbname)
    cluster.create_database(dbname)
    cluster.run_client('pgbench', ['-i', '-q', '-s', str(scale), dbname], dbname=dbname, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    return database_size(cluster, dbname)


MANY_TABLES_BUILD = """
DO $build$
DECLARE
  s int; t int; sch text; tbl text;
BEGIN
  FOR s IN 1..current_setting('bench.schemas')::int LOOP
    sch := 'app_' || s;
    EXECUTE format('CREATE SCHEMA %I', sch);
    FOR t IN 1..current_setting('bench.tables')::int LOOP
      tbl := 't_' || t;
      EXECUTE format('CREATE TABLE %I.%I (id bigserial PRIMARY KEY, name text NOT NULL, amount numeric(12,2), '
                     'created timestamptz NOT NULL, note text)', sch, tbl);
      EXECUTE format('INSERT INTO %I.%I (name, amount, created, note) SELECT ''name '' || (g %% 97), g / 7.0, '
                     '''2025-01-01 00:00+00''::timestamptz + g * interval ''1 min'', md5(g::text) '
                     'FROM generate_series(1, %s) g', sch, tbl, current_setting('bench.rows'));
      EXECUTE format('CREATE INDEX ON %I.%I (name)', sch, tbl);
      EXECUTE format('CREATE INDEX ON %I.%I (created)', sch, tbl);
    END LOOP;
  END LOOP;
END
$build$;
"""


def many_tables_init(cluster, dbname, tables=1000, rows=1000, schemas=10):
    """`tables` tables in `schemas` schemas, each with a bigserial primary key, two more indexes and `rows` rows."""
    drop_database(cluster, dbname)
    cluster.create_database(dbname)
    with cluster.connect(dbname) as conn:
        conn.execute("SELECT set_config('bench.schemas', %s, false), set_config('bench.tables', %s, false), "
                     "set_config('bench.rows', %s, false)", (str(schemas), str(tables // schemas), str(rows)))
        conn.execute(MANY_TABLES_BUILD)
        conn.execute('VACUUM ANALYZE')
    return database_size(cluster, dbname)


# ---------------------------------------------------------------------------------------------------------------
# Memory of a process (and its children), read from /proc

def _status_kb(pid, field):
    try:
        with open('/proc/%d/status' % pid) as handle:
            for line in handle:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _cpu_seconds(pid):
    try:
        with open('/proc/%d/stat' % pid) as handle:
            fields = handle.read().rsplit(')', 1)[1].split()
    except (OSError, IndexError):
        return None
    # fields[0] is field 3 (state): utime, stime, cutime, cstime are fields 14-17
    ticks = sum(int(v) for v in fields[11:15])
    return ticks / float(os.sysconf('SC_CLK_TCK'))


def _children(pid):
    out = []
    try:
        for tid in os.listdir('/proc/%d/task' % pid):
            with open('/proc/%d/task/%s/children' % (pid, tid)) as handle:
                out.extend(int(p) for p in handle.read().split())
    except OSError:
        pass
    return out


def _tree(pid):
    todo, seen = [pid], []
    while todo:
        current = todo.pop()
        seen.append(current)
        todo.extend(_children(current))
    return seen


class Sampler:
    """A daemon thread that runs `_run()` (polling until `_stop` is set) for the duration of a `with` block."""

    def __init__(self, name):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self):
        raise NotImplementedError

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class PeakMemory(Sampler):
    """Samples a process every `interval` seconds: its VmHWM (kernel's peak RSS) and the RSS sum of it and its children.

    `pid_of` is a callable returning the current pid or None (the worker may start late, exit, or be restarted).
    """

    def __init__(self, pid_of, interval=0.1):
        self.pid_of = pid_of
        self.interval = interval
        self.hwm_kb = None
        self.tree_rss_kb = None
        self.pids = set()
        self.cpu = {}
        super().__init__('peak-memory')

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self):
        pid = self.pid_of()
        if not pid or pid < 0:
            return
        self.pids.add(pid)
        cpu = _cpu_seconds(pid)
        if cpu is not None:
            self.cpu[pid] = cpu
        hwm = _status_kb(pid, 'VmHWM')
        if hwm is not None:
            self.hwm_kb = max(self.hwm_kb or 0, hwm)
        total = 0
        for member in _tree(pid):
            total += _status_kb(member, 'VmRSS') or 0
        if total:
            self.tree_rss_kb = max(self.tree_rss_kb or 0, total)

    @property
    def cpu_seconds(self):
        """CPU time (user + system) of the sampled processes and their waited-for children, as last seen."""
        return sum(self.cpu.values()) if self.cpu else None


# ---------------------------------------------------------------------------------------------------------------
# Our task, driven through the engine exactly as pg_dts_migrate / pg_dts_finish do it

class OurTask:
    """One pgdts task between the benchmark servers (TaskControl = what pg_dts_migrate calls)."""

    def __init__(self, servers, name, dbname, jobs=4, incremental=False, plugin='pgoutput'):
        self.servers = servers
        self.name = name
        self.dbname = dbname
        self.params = {
            'name': name, 'state': 'present', 'databases': [dbname], 'tables': None, 'exclude_tables': None,
            'plugin': plugin, 'incremental': incremental, 'jobs': jobs, 'start_at': None, 'drop_destination': False,
            'protect_destination': True, 'migrate_roles': False, 'retry_timeout': 600,
            'replica_identity': 'full',     # pgbench_history has no key (insert-only: FULL costs nothing)
            'worker_dir': servers.worker_dir, 'worker_python': sys.executable,
        }
        self.source = Servers.spec(servers.src)
        self.destination = Servers.spec(servers.dst)
        self.paths = worker.TaskPaths(servers.worker_dir, name)

    def control(self, **params):
        merged = dict(self.params)
        merged.update(params)
        return task_control.TaskControl(merged, self.source, self.destination)

    def start(self):
        """What pg_dts_migrate does with wait=none: checks, task row, detached worker. Resumes a stopped task."""
        return self.control().ensure()

    def store(self):
        store = task_state.TaskStore(self.destination, 'pgdts-bench')
        store.open(create=False)
        return store

    def worker_pid(self):
        return worker.worker_pid(self.paths)

    def wait(self, stages, timeout=3600, poll=0.1, store=None):
        """Poll the durable state until the task is in one of `stages`; raises on failed."""
        own = store is None
        store = store or self.store()
        try:
            deadline = time.monotonic() + timeout
            while True:
                task = store.get_task(self.name)
                if task and task['stage'] in stages:
                    return task
                if task and task['stage'] == 'failed':
                    raise RuntimeError('task %s failed: %s (see %s)' % (self.name, task['error'], self.paths.log))
                if time.monotonic() > deadline:
                    raise RuntimeError('task %s: timed out waiting for %s (stage %s)'
                                       % (self.name, stages, task and task['stage']))
                time.sleep(poll)
        finally:
            if own:
                store.close()

    def stop_worker(self):
        """Ask the worker to stop (request 'stop'), wait for it, then clear the request so a resume runs."""
        with self.store() as store:
            store.set_request(self.name, 'stop')
            worker.stop_worker(self.paths, timeout=60)
            store.set_request(self.name, None)

    def finish(self, **params):
        """What pg_dts_finish does (fence read_only, catch up, sequences, compare, end the sync)."""
        merged = {'fence': 'read_only', 'compare': 'checksum', 'on_mismatch': 'fail', 'sync_sequences': True,
                  'keep_source_fence': True, 'wait_timeout': 600, 'jobs': self.params['jobs']}
        merged.update(params)
        return cutover.Finisher(self.control(), merged).run()

    def cancel(self):
        with contextlib.suppress(Exception):
            self.control(state='absent').cancel()

    def log_events(self):
        """(seconds since the first line, message) of worker.log (millisecond timestamps)."""
        events = []
        pattern = re.compile(r'^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) \[\d+\] (.*)$')
        try:
            with open(self.paths.log) as handle:
                for line in handle:
                    match = pattern.match(line.rstrip('\n'))
                    if match:
                        stamp = datetime.datetime.fromisoformat(match.group(1))
                        events.append((stamp, match.group(2)))
        except OSError:
            return []
        return events


def copy_breakdown(events, task_started_wall):
    """Split a full-copy run into phases from the worker's log lines (wall clock datetimes)."""
    marks = {}
    copied_lines = []
    for stamp, message in events:
        if 'worker started' in message and 'start' not in marks:
            marks['start'] = stamp
        elif ' slot ' in message and ' created at ' in message:
            marks.setdefault('slot', stamp)
        elif 'schema (pre-data) restored' in message:
            marks.setdefault('schema', stamp)
        elif message.startswith('copied '):
            copied_lines.append(stamp)
        elif 'table(s) copied' in message:
            marks.setdefault('copy', stamp)
        elif 'indexes and constraints built' in message:
            marks.setdefault('index', stamp)
        elif 'full copy finished' in message:
            marks.setdefault('end', stamp)
    out = {}
    if 'start' in marks:
        out['checks_and_spawn'] = (marks['start'] - task_started_wall).total_seconds()
    order = [('start', 'slot', 'slot'), ('slot', 'schema', 'schema'), ('schema', 'copy', 'copy'),
             ('copy', 'index', 'index_sequences_analyze'), ('index', 'end', 'cleanup')]
    for first, last, label in order:
        if first in marks and last in marks:
            out[label] = (marks[last] - marks[first]).total_seconds()
    return out


# ---------------------------------------------------------------------------------------------------------------
# The machine

def _read(path):
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ''


def _version(argv):
    try:
        lines = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False,
                               text=True).stdout.strip().splitlines()
    except OSError:
        return 'not installed'
    for line in lines:
        match = re.search(r'(\S+ version \S+|\(PostgreSQL\) \S+.*)$', line)
        if match:
            return match.group(1) if 'version' in match.group(1) else line.strip()
    return lines[0] if lines else 'unknown'


def machine_description(servers=None):
    cpu = re.search(r'^model name\s*:\s*(.*)$', _read('/proc/cpuinfo'), re.M)
    mem = re.search(r'^MemTotal:\s*(\d+)', _read('/proc/meminfo'), re.M)
    info = {
        'nproc': os.cpu_count(),
        'cpu_model': cpu.group(1).strip() if cpu else platform.processor() or 'unknown',
        'memory_gib': round(int(mem.group(1)) / 1024.0 / 1024.0, 1) if mem else None,
        'kernel': platform.release(),
        'os': (re.search(r'^PRETTY_NAME="?(.*?)"?$', _read('/etc/os-release'), re.M) or [None, 'unknown'])[1],
        'python': platform.python_version(),
        'psycopg': psycopg.__version__,
        'pg_dump': _version([client('pg_dump'), '--version']),
        'pgcopydb': _version(['pgcopydb', '--version']),
        'loadavg': os.getloadavg(),
    }
    if servers is not None and servers.src is not None:
        info['postgresql'] = servers.src.value('SELECT version()')
        info['settings'] = servers.harness_settings()
    return info


def engine_description():
    """The engine code measured: git commit, whether plugins/ had uncommitted changes, a few timing constants."""
    def git(*args):
        try:
            return subprocess.run(['git', '-C', REPO] + list(args), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  text=True, check=False).stdout.strip()
        except OSError:
            return ''
    source = _read(os.path.join(REPO, 'plugins', 'module_utils', 'worker.py'))
    poll = re.search(r"'poll_interval', ([0-9.]+)", source)
    return {'commit': git('rev-parse', '--short', 'HEAD') or 'unknown',
            'uncommitted_plugin_files': len([line for line in git('status', '--porcelain', '--', 'plugins').splitlines()
                                             if line.strip()]),
            'watch_seconds': getattr(worker_runner, 'WATCH_SECONDS', None),
            'poll_interval': float(poll.group(1)) if poll else None}


def loadavg_text():
    return '%.2f %.2f %.2f' % os.getloadavg()


def write_json(path, data):
    with open(path, 'w') as handle:
        json.dump(data, handle, indent=2, sort_keys=True, default=str)
