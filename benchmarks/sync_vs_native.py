# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Incremental sync of a pgdts task against native logical replication: backlog catch-up and lag under load.

    .venv/bin/python benchmarks/sync_vs_native.py [--scale 10] [--transactions 200000] [--rate 500] [--seconds 30]

Set-up on one source database (pgbench tables plus a one-row heartbeat table):
- native: `CREATE PUBLICATION ... FOR ALL TABLES` on the source; a copy of the idle source (pg_dump | psql) in a
  second destination database; `CREATE SUBSCRIPTION ... WITH (copy_data = false)` there (its slot starts where the
  copy ended, the source being idle), then the subscription is disabled;
- pgdts: a task with incremental sync started the way pg_dts_migrate starts it (task_control, real detached worker),
  left to reach the sync stage and catch up; then its worker is stopped (request 'stop', as finish does).

Catch-up: one pgbench backlog (`-c 4 -j 2 -t`) is written while both are stopped; a marker (heartbeat row) is
committed after it. Then pgdts's worker is started again (TaskControl.ensure(), what a re-run of pg_dts_migrate
does) and timed until the marker is visible in its destination database; then the subscription is enabled and timed
the same way. Each one runs alone on the machine. The backlog is replayed once by each (one run: the backlog alone
takes minutes to write); the totals of every pgbench table are compared on all three databases afterwards.

Lag under steady load: pgbench `-c 4 -j 2 --rate R` while a heartbeat row on the source gets
`ts = clock_timestamp()` every 100 ms and the destination is read every 100 ms: the lag sample is the age of the
newest heartbeat visible there (destination clock_timestamp() - ts; one machine, one clock), read at jittered
intervals of 50-150 ms. A sample thus includes 0-100 ms of heartbeat period (50 ms on average) on top of the
replication delay. pgdts is measured with the subscription disabled,
native with pgdts's worker stopped.

benchmarks/sync_bench.py (the sync developer's) times the decode/apply loop alone, in one process; this script
times the task as a user runs it (the worker, started and resumed by task_control). bench.py runs both.

Figures only: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import say, sql  # noqa: E402

PGBENCH_TABLES = ('pgbench_accounts', 'pgbench_branches', 'pgbench_tellers', 'pgbench_history')
HEARTBEAT_DDL = ('CREATE TABLE bench_heartbeat (id integer PRIMARY KEY, n bigint NOT NULL, '
                 'ts timestamptz NOT NULL)')


def percentile(values, pct):
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(pct / 100.0 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


class SyncBench:
    def __init__(self, servers, dbname='sync_bench', scale=10, clients=4):
        self.servers = servers
        self.src = servers.src
        self.dst = servers.dst
        self.dbname = dbname
        self.native_db = dbname + '_native'
        self.scale = scale
        self.clients = clients
        self.task = common.OurTask(servers, 'bench_%s' % dbname, dbname, jobs=4, incremental=True)
        self.publication = 'bench_native_pub'
        self.subscription = 'bench_native_sub'
        self.results = {'scale': scale}

    # -- set-up ------------------------------------------------------------------------------------------------
    def prepare(self):
        say('sync: pgbench -i -s %d and the heartbeat table on the source' % self.scale)
        common.pgbench_init(self.src, self.dbname, self.scale)
        with self.src.connect(self.dbname) as conn:
            conn.execute(HEARTBEAT_DDL)
            conn.execute('INSERT INTO bench_heartbeat VALUES (1, 0, clock_timestamp())')
            conn.execute(sql.SQL('CREATE PUBLICATION {} FOR ALL TABLES').format(sql.Identifier(self.publication)))
        self.results['size_bytes'] = common.database_size(self.src, self.dbname)
        say('sync: native subscriber database (copy of the idle source, subscription without copy_data)')
        common.drop_database(self.dst, self.native_db)
        with common.passfile(self.src, self.dst) as env:
            common.run([common.client('createdb'), '-h', self.dst.host, '-p', str(self.dst.port), '-U', 'postgres',
                        self.native_db], env=env, what='createdb')
            common.run(['set -o pipefail; %s -d %s | %s -q -X -v ON_ERROR_STOP=1 -d %s' % (
                common.client('pg_dump'), common.uri(self.src, self.dbname), common.client('psql'),
                common.uri(self.dst, self.native_db))], env=env, shell=True, what='pg_dump | psql')
        conninfo = 'host=%s port=%d user=postgres password=%s dbname=%s' % (
            self.src.host, self.src.port, self.src.password, self.dbname)
        with self.dst.connect(self.native_db) as conn:
            conn.execute(sql.SQL('CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (copy_data = false)').format(
                sql.Identifier(self.subscription), sql.Literal(conninfo), sql.Identifier(self.publication)))
        self.native_enabled(False)
        say('sync: starting the pgdts task (incremental) and waiting until it has caught up')
        self.task.start()
        self.task.wait(('sync',), timeout=1200)
        self.wait_marker(self.dbname, self.bump_marker(), timeout=600)

    def native_enabled(self, enabled):
        with self.dst.connect(self.native_db) as conn:
            conn.execute(sql.SQL('ALTER SUBSCRIPTION {} {}').format(
                sql.Identifier(self.subscription), sql.SQL('ENABLE' if enabled else 'DISABLE')))
            if not enabled:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and conn.execute(
                        'SELECT count(*) FROM pg_stat_subscription WHERE subname = %s AND pid IS NOT NULL',
                        (self.subscription,)).fetchone()[0]:
                    time.sleep(0.05)

    def cleanup(self):
        try:
            with self.dst.connect(self.native_db) as conn:
                conn.execute(sql.SQL('ALTER SUBSCRIPTION {} DISABLE').format(sql.Identifier(self.subscription)))
                conn.execute(sql.SQL('DROP SUBSCRIPTION {}').format(sql.Identifier(self.subscription)))
        except Exception as exc:  # pylint: disable=broad-except
            say('sync: clean-up of the subscription: %s' % exc)
        self.task.cancel()
        for cluster, dbname in ((self.dst, self.native_db), (self.dst, self.dbname), (self.src, self.dbname)):
            try:
                common.drop_database(cluster, dbname)
            except Exception as exc:  # pylint: disable=broad-except
                say('sync: dropping %s: %s' % (dbname, exc))

    # -- markers -----------------------------------------------------------------------------------------------
    def bump_marker(self):
        return self.src.value('UPDATE bench_heartbeat SET n = n + 1, ts = clock_timestamp() WHERE id = 1 RETURNING n',
                              dbname=self.dbname)

    def wait_marker(self, dbname, marker, timeout=1200, poll=0.02):
        deadline = time.monotonic() + timeout
        with self.dst.connect(dbname) as conn:
            while True:
                row = conn.execute('SELECT n FROM bench_heartbeat WHERE id = 1').fetchone()
                if row and row[0] >= marker:
                    return time.monotonic()
                if time.monotonic() > deadline:
                    raise RuntimeError('%s did not reach heartbeat %d within %d s' % (dbname, marker, timeout))
                time.sleep(poll)

    def totals(self, cluster, dbname):
        with cluster.connect(dbname) as conn:
            return conn.execute('SELECT (SELECT count(*) FROM pgbench_history), (SELECT coalesce(sum(delta), 0) FROM '
                                'pgbench_history), (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(tbalance) '
                                'FROM pgbench_tellers), (SELECT sum(bbalance) FROM pgbench_branches)').fetchone()

    def pgbench(self, extra, wait=True):
        argv = [common.client('pgbench'), '-n', '-c', str(self.clients), '-j', str(min(2, self.clients))] + extra + \
            [self.dbname]
        proc = subprocess.Popen(argv, env=self.src.libpq_env(self.dbname), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        if not wait:
            return proc
        output = proc.communicate()[0]
        if proc.returncode != 0:
            raise RuntimeError('pgbench failed: %s' % output[-2000:])
        return output

    # -- catch-up ----------------------------------------------------------------------------------------------
    def catch_up(self, transactions):
        say('sync: stopping the pgdts worker; the subscription is disabled')
        self.task.stop_worker()
        self.native_enabled(False)
        per_client = transactions // self.clients
        say('sync: writing a backlog of %d pgbench transactions (load %s)' % (per_client * self.clients, common.loadavg_text()))
        started = time.monotonic()
        self.pgbench(['-t', str(per_client)])
        produce = time.monotonic() - started
        marker = self.bump_marker()
        backlog = per_client * self.clients
        wal = self.src.value("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn) FROM "
                             "pg_replication_slots WHERE slot_name = %s", (self.subscription,))
        wal = float(wal or 0)
        self.results['backlog'] = {'transactions': backlog, 'produce_seconds': produce, 'source_tps': backlog / produce,
                                   'wal_bytes': int(wal or 0)}
        say('sync: backlog written in %.1f s (%.0f tx/s), %.0f MB of WAL; pgdts catching up (load %s)'
            % (produce, backlog / produce, (wal or 0) / 1e6, common.loadavg_text()))
        log_offset = os.path.getsize(self.task.paths.log) if os.path.exists(self.task.paths.log) else 0
        started = time.monotonic()
        with common.PeakMemory(self.task.worker_pid) as memory:
            self.task.start()
            ours = self.wait_marker(self.dbname, marker) - started
        with open(self.task.paths.log, errors='replace') as handle:
            handle.seek(log_offset)
            self.results['catch_up_log'] = handle.read().splitlines()[:40]
        for line in self.results['catch_up_log']:
            say('sync: worker log: %s' % line)
        say('sync: pgdts caught up in %.2f s (%.0f tx/s); native catching up (load %s)'
            % (ours, backlog / ours, common.loadavg_text()))
        started = time.monotonic()
        self.native_enabled(True)
        native = self.wait_marker(self.native_db, marker) - started
        say('sync: native caught up in %.2f s (%.0f tx/s)' % (native, backlog / native))
        src_totals = self.totals(self.src, self.dbname)
        self.results['catch_up'] = {
            'ours_seconds': ours, 'native_seconds': native, 'ratio': ours / native,
            'ours_tps': backlog / ours, 'native_tps': backlog / native,
            'ours_equal': self.totals(self.dst, self.dbname) == src_totals,
            'native_equal': self.totals(self.dst, self.native_db) == src_totals,
            'worker_hwm_kb': memory.hwm_kb, 'worker_tree_rss_kb': memory.tree_rss_kb,
        }
        return self.results['catch_up']

    # -- lag under steady load ---------------------------------------------------------------------------------
    def lag(self, which, dbname, rate, seconds, warmup=2.0):
        stop = threading.Event()
        errors = []

        def heartbeat():
            try:
                with self.src.connect(self.dbname) as conn:
                    tick = time.monotonic()
                    while not stop.is_set():
                        conn.execute('UPDATE bench_heartbeat SET n = n + 1, ts = clock_timestamp() WHERE id = 1')
                        tick += 0.1
                        stop.wait(max(0.0, tick - time.monotonic()))
            except Exception as exc:  # pylint: disable=broad-except
                errors.append(exc)

        samples = []

        def sampler():
            # every 100 ms on average, with jitter, so that the samples do not run in step with the heartbeat
            jitter = random.Random(4711)
            try:
                with self.dst.connect(dbname) as conn:
                    tick = time.monotonic()
                    while not stop.is_set():
                        samples.append(float(conn.execute(
                            'SELECT extract(epoch FROM clock_timestamp() - ts) FROM bench_heartbeat WHERE id = 1'
                        ).fetchone()[0]))
                        tick += jitter.uniform(0.05, 0.15)
                        stop.wait(max(0.0, tick - time.monotonic()))
            except Exception as exc:  # pylint: disable=broad-except
                errors.append(exc)

        say('sync: lag of %s under pgbench --rate %d for %d s (load %s)' % (which, rate, seconds, common.loadavg_text()))
        beat = threading.Thread(target=heartbeat, daemon=True)
        beat.start()
        load = self.pgbench(['-R', str(rate), '-T', str(int(seconds + warmup))], wait=False)
        time.sleep(warmup)
        sample = threading.Thread(target=sampler, daemon=True)
        memory = common.PeakMemory(self.task.worker_pid) if which == 'pgdts' else None
        if memory:
            memory.__enter__()
        sample.start()
        output = load.communicate()[0]
        stop.set()
        sample.join()
        beat.join()
        if memory:
            memory.__exit__(None, None, None)
        if load.returncode != 0:
            raise RuntimeError('pgbench failed: %s' % output[-2000:])
        if errors:
            raise errors[0]
        tps = None
        for line in output.splitlines():
            if line.startswith('tps = '):
                tps = float(line.split()[2])
        item = {'rate': rate, 'seconds': seconds, 'samples': len(samples), 'source_tps': tps,
                'p50': percentile(samples, 50), 'p90': percentile(samples, 90), 'p99': percentile(samples, 99),
                'max': max(samples) if samples else None}
        if memory:
            item['worker_hwm_kb'] = memory.hwm_kb
        if not samples:
            raise RuntimeError('no lag sample was taken on %s' % dbname)
        say('sync: %s lag p50 %.3f s, p99 %.3f s, max %.3f s (%d samples, source %.0f tx/s)' % (
            which, item['p50'] or 0, item['p99'] or 0, item['max'] or 0, len(samples), tps or 0))
        return item

    def lags(self, rate, seconds):
        out = {}
        # pgdts: its worker runs (it was started for the catch-up), the subscription is disabled
        self.native_enabled(False)
        self.task.wait(('sync',))
        self.wait_marker(self.dbname, self.bump_marker())
        out['pgdts'] = self.lag('pgdts', self.dbname, rate, seconds)
        # native: pgdts's worker stopped, the subscription enabled and caught up first
        self.task.stop_worker()
        self.native_enabled(True)
        self.wait_marker(self.native_db, self.bump_marker())
        out['native'] = self.lag('native', self.native_db, rate, seconds)
        self.native_enabled(False)
        self.results['lag'] = out
        return out


def run(servers, scale=10, transactions=200000, rate=500, seconds=30, dbname='sync_bench', skip_lag=False):
    bench = SyncBench(servers, dbname=dbname, scale=scale)
    try:
        bench.prepare()
        bench.catch_up(transactions)
        if not skip_lag:
            bench.lags(rate, seconds)
    finally:
        bench.cleanup()
    return bench.results


def print_results(results):
    print()
    catch = results['catch_up']
    backlog = results['backlog']
    print('Incremental sync, pgbench scale %d (%.0f MB)' % (results['scale'], results['size_bytes'] / 1e6))
    print('  backlog: %d transactions, %.0f MB of WAL, written in %.1f s (%.0f tx/s on the source)' % (
        backlog['transactions'], backlog['wal_bytes'] / 1e6, backlog['produce_seconds'], backlog['source_tps']))
    print('  catch-up: pgdts %.2f s (%.0f tx/s), native %.2f s (%.0f tx/s), ratio %.2f (target <= 1.0: %s); '
          'data equal: pgdts %s, native %s' % (
              catch['ours_seconds'], catch['ours_tps'], catch['native_seconds'], catch['native_tps'], catch['ratio'],
              'met' if catch['ratio'] <= 1.0 else 'MISSED', catch['ours_equal'], catch['native_equal']))
    print('  worker peak memory during catch-up: VmHWM %s' % common.fmt_mb(catch['worker_hwm_kb']))
    for which in ('pgdts', 'native') if 'lag' in results else ():
        item = results['lag'][which]
        print('  lag %-6s at %d tx/s: p50 %.3f s, p90 %.3f s, p99 %.3f s, max %.3f s (%d samples)%s' % (
            which, item['rate'], item['p50'], item['p90'], item['p99'], item['max'], item['samples'],
            '' if which != 'pgdts' else '  (target p99 < 0.5 s: %s)' % ('met' if item['p99'] < 0.5 else 'MISSED')))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--scale', type=int, default=10)
    parser.add_argument('--transactions', type=int, default=200000)
    parser.add_argument('--rate', type=int, default=500, help='pgbench --rate of the steady load (tx/s)')
    parser.add_argument('--seconds', type=int, default=30, help='length of each lag measurement')
    parser.add_argument('--skip-lag', action='store_true', help='catch-up only')
    parser.add_argument('--keep', action='store_true')
    args = parser.parse_args(argv)
    with common.Servers(keep=args.keep) as servers:
        results = run(servers, args.scale, args.transactions, args.rate, args.seconds, skip_lag=args.skip_lag)
    print_results(results)
    return 0


if __name__ == '__main__':
    sys.exit(main())
