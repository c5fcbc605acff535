# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Full copy: pgdts against pg_dump | psql, pg_dump -Fd -j2 + pg_restore -j2 and pgcopydb clone; scaling; memory.

    .venv/bin/python benchmarks/copy_bench.py [--scale 50] [--tables 1000] [--runs 3]
                                              [--scales 10,50,100] [--jobs 1,2,4] [--skip-peers] [--skip-scaling]

Every method copies the same source database into a fresh destination database of the same name on the same
destination server (dropped and checkpointed before each run; both servers are checkpointed once after the data
load). Methods run round-robin (one run of each, then the next round, each round starting with the next method) so
that a burst of load from elsewhere does not hit one method only. The median of the runs is reported.

pgdts ("ours") = the task pg_dts_migrate starts with incremental=false: checks, slot with exported snapshot, schema
(pre-data), parallel COPY during which each copied table gets its own indexes and key constraints (pg_restore of
those dump entries) and is analyzed, then the rest of the post-data (foreign keys, triggers, partition indexes, ...),
sequences and ANALYZE of what is left. In the phase breakdown, "copy" therefore includes most index building and
ANALYZE, and "index_sequences_analyze" only what is left at the end. It runs in the
real detached worker (task_control.TaskControl.ensure(), as the module does); the time runs from that call until the
task's stage is `finished`. The worker's peak memory (VmHWM) and the peak RSS of the worker and its children are read
from /proc while it runs.

Figures only: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import say  # noqa: E402

OURS = 'pgdts'
DUMP_PSQL = 'pg_dump | psql'
DUMP_DIR = 'pg_dump -Fd -j2 + pg_restore -j2'
PGCOPYDB = 'pgcopydb clone'
METHODS = (OURS, DUMP_PSQL, DUMP_DIR, PGCOPYDB)


class CopyBench:
    def __init__(self, servers, jobs=4, pgcopydb_jobs=4):
        self.servers = servers
        self.jobs = jobs
        self.pgcopydb_jobs = pgcopydb_jobs
        self.counter = 0

    # -- one run of each method --------------------------------------------------------------------------------
    def fresh_destination(self, dbname, create):
        common.drop_database(self.servers.dst, dbname)
        common.checkpoint(self.servers.dst)
        if create:
            self.servers.dst.create_database(dbname)

    def ours(self, dbname, jobs=None, analyze_probe=True):
        """One full copy by a pgdts task; returns seconds, memory and the phase breakdown."""
        jobs = jobs or self.jobs
        self.fresh_destination(dbname, create=False)
        self.counter += 1
        task = common.OurTask(self.servers, 'bench_copy_%d' % self.counter, dbname, jobs=jobs, incremental=False)
        wall = datetime.datetime.now()
        started = time.monotonic()
        with common.PeakMemory(task.worker_pid) as memory:
            task.start()
            task.wait(('finished',), poll=0.05)
        seconds = time.monotonic() - started
        breakdown = common.copy_breakdown(task.log_events(), wall)
        if analyze_probe:
            # ANALYZE is part of the post-data phase in the worker's log; time it again alone to split that phase
            with self.servers.dst.connect(dbname) as conn:
                probe = time.monotonic()
                conn.execute('ANALYZE')
                breakdown['analyze_alone'] = time.monotonic() - probe
        self.check_copy(dbname)
        return {'seconds': seconds, 'hwm_kb': memory.hwm_kb, 'tree_rss_kb': memory.tree_rss_kb,
                'breakdown': breakdown, 'jobs': jobs, 'worker_cpu_seconds': memory.cpu_seconds}

    def dump_psql(self, dbname):
        self.fresh_destination(dbname, create=False)
        with common.passfile(self.servers.src, self.servers.dst) as env:
            started = time.monotonic()
            common.run([common.client('createdb'), '-h', self.servers.dst.host, '-p', str(self.servers.dst.port),
                        '-U', 'postgres', dbname], env=env, what='createdb')
            command = '%s -d %s | %s -q -X -v ON_ERROR_STOP=1 -d %s' % (
                common.client('pg_dump'), common.uri(self.servers.src, dbname), common.client('psql'),
                common.uri(self.servers.dst, dbname))
            common.run(['set -o pipefail; ' + command], env=env, what='pg_dump | psql', shell=True)
            seconds = time.monotonic() - started
        self.check_copy(dbname)
        return {'seconds': seconds}

    def dump_dir(self, dbname, jobs=2):
        self.fresh_destination(dbname, create=False)
        path = os.path.join(self.servers.scratch, 'dump-%s' % dbname)
        shutil.rmtree(path, ignore_errors=True)
        with common.passfile(self.servers.src, self.servers.dst) as env:
            started = time.monotonic()
            common.run([common.client('createdb'), '-h', self.servers.dst.host, '-p', str(self.servers.dst.port),
                        '-U', 'postgres', dbname], env=env, what='createdb')
            dump = common.run([common.client('pg_dump'), '-Fd', '-j', str(jobs), '-f', path, '-d',
                               common.uri(self.servers.src, dbname)], env=env, what='pg_dump -Fd')
            common.run([common.client('pg_restore'), '-j', str(jobs), '--exit-on-error', '-d',
                        common.uri(self.servers.dst, dbname), path], env=env, what='pg_restore')
            seconds = time.monotonic() - started
        shutil.rmtree(path, ignore_errors=True)
        self.check_copy(dbname)
        return {'seconds': seconds, 'breakdown': {'dump': dump, 'restore': seconds - dump}}

    def pgcopydb(self, dbname):
        self.fresh_destination(dbname, create=True)
        path = os.path.join(self.servers.scratch, 'pgcopydb-%s' % dbname)
        shutil.rmtree(path, ignore_errors=True)
        with common.passfile(self.servers.src, self.servers.dst) as env:
            started = time.monotonic()
            common.run(['pgcopydb', 'clone', '--source', common.uri(self.servers.src, dbname), '--target',
                        common.uri(self.servers.dst, dbname), '--dir', path, '--table-jobs', str(self.pgcopydb_jobs),
                        '--index-jobs', str(self.pgcopydb_jobs), '--no-owner', '--no-acl'], env=env,
                       what='pgcopydb clone')
            seconds = time.monotonic() - started
        shutil.rmtree(path, ignore_errors=True)
        self.check_copy(dbname)
        return {'seconds': seconds}

    def run_method(self, method, dbname):
        if method == OURS:
            return self.ours(dbname)
        if method == DUMP_PSQL:
            return self.dump_psql(dbname)
        if method == DUMP_DIR:
            return self.dump_dir(dbname)
        if method == PGCOPYDB:
            return self.pgcopydb(dbname)
        raise ValueError(method)

    OBJECTS = ("SELECT count(*) FILTER (WHERE c.relkind = 'r'), count(*) FILTER (WHERE c.relkind = 'i'), "
               "count(*) FILTER (WHERE c.relkind = 'S') FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
               "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')")

    def check_copy(self, dbname):
        """Every method must have copied everything: same tables, indexes, sequences and rows as the source."""
        src = tuple(self.servers.src.execute(self.OBJECTS, dbname=dbname)[0])
        dst = tuple(self.servers.dst.execute(self.OBJECTS, dbname=dbname)[0])
        if src != dst:
            raise RuntimeError('copy of %s is incomplete: source has %s tables/indexes/sequences, destination %s'
                               % (dbname, src, dst))
        rows_src = self.row_total(self.servers.src, dbname)
        rows_dst = self.row_total(self.servers.dst, dbname)
        if rows_src != rows_dst:
            raise RuntimeError('copy of %s is incomplete: %d rows on the source, %d on the destination'
                               % (dbname, rows_src, rows_dst))

    @staticmethod
    def row_total(cluster, dbname):
        from psycopg import sql
        with cluster.connect(dbname) as conn:
            tables = conn.execute("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON "
                                  "n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname NOT IN "
                                  "('pg_catalog', 'information_schema')").fetchall()
            if not tables:
                return 0
            query = sql.SQL(' + ').join(sql.SQL('(SELECT count(*) FROM {})').format(sql.Identifier(s, t))
                                        for s, t in tables)
            return conn.execute(sql.SQL('SELECT {}').format(query)).fetchone()[0]

    # -- the figures -------------------------------------------------------------------------------------------
    def compare(self, dbname, runs, methods=METHODS):
        """Round-robin runs of every method; {method: [result, ...]}."""
        results = {m: [] for m in methods}
        for round_no in range(runs):
            # each round starts with another method: whatever the first run after the data load or after another
            # data set meets (dirty buffers of the load written out, caches) does not always fall on the same method
            shift = round_no % len(methods)
            for method in tuple(methods[shift:]) + tuple(methods[:shift]):
                say('copy %s: %s, run %d/%d (load %s)' % (dbname, method, round_no + 1, runs, common.loadavg_text()))
                result = self.run_method(method, dbname)
                say('    %.2f s' % result['seconds'])
                results[method].append(result)
        common.drop_database(self.servers.dst, dbname)
        return results


def floor(servers, dbname, table, runs, maintenance_work_mem='512MB'):
    """The part of a copy of `dbname` that no method can avoid, measured on its largest table alone: one COPY stream
    of the table from the source straight into a new empty table on the destination (psql | psql, binary, TRUNCATE
    and FREEZE, no Python, no other table), then its indexes and constraints (pg_dump's post-data of the table, with
    this maintenance_work_mem), then its ANALYZE. Median seconds of each step over `runs`."""
    scratch = 'floor_%s' % dbname
    qualified = 'public.%s' % table
    steps = {'copy': [], 'index': [], 'analyze': [], 'copy_2_streams': []}
    src_uri, dst_uri = common.uri(servers.src, dbname), common.uri(servers.dst, scratch)
    with common.passfile(servers.src, servers.dst) as env:
        post_data = os.path.join(servers.scratch, 'floor-post-data.sql')
        common.run([common.client('pg_dump'), '--section=post-data', '-t', qualified, '-f', post_data, '-d', src_uri],
                   env=env, what='floor: post-data dump')
        pages = servers.src.value('SELECT relpages FROM pg_class WHERE oid = %s::regclass', (qualified,), dbname=dbname)

        def empty_table():
            common.drop_database(servers.dst, scratch)
            servers.dst.create_database(scratch)
            common.run(['set -o pipefail; %s --section=pre-data -t %s -d %s | %s -q -X -v ON_ERROR_STOP=1 -d %s' % (
                common.client('pg_dump'), qualified, src_uri, common.client('psql'), dst_uri)], env=env,
                what='floor: pre-data', shell=True)
            common.checkpoint(servers.dst)

        for _run in range(runs):
            empty_table()
            # the same rows in two parallel streams (halves by heap block), into an empty table
            halves = ["ctid < '(%d,0)'" % (pages // 2), "ctid >= '(%d,0)'" % (pages // 2)]
            steps['copy_2_streams'].append(common.run([' & '.join(
                '(set -o pipefail; %s -X -q -d %s -c "COPY (SELECT * FROM %s WHERE %s) TO STDOUT (FORMAT binary)" '
                '| %s -X -q -v ON_ERROR_STOP=1 -d %s -c "COPY %s FROM STDIN (FORMAT binary)")' % (
                    common.client('psql'), src_uri, qualified, half, common.client('psql'), dst_uri, qualified)
                for half in halves) + ' & wait -n && wait -n'], env=env, what='floor: COPY in 2 streams', shell=True))
            empty_table()
            steps['copy'].append(common.run([
                'set -o pipefail; %s -X -q -d %s -c "COPY %s TO STDOUT (FORMAT binary)" | %s -X -q -v ON_ERROR_STOP=1 '
                '-d %s -c "BEGIN" -c "TRUNCATE %s" -c "COPY %s FROM STDIN (FORMAT binary, FREEZE)" -c "COMMIT"' % (
                    common.client('psql'), src_uri, qualified, common.client('psql'), dst_uri, qualified,
                    qualified)], env=env, what='floor: COPY', shell=True))
            index_env = dict(env, PGOPTIONS='-c maintenance_work_mem=%s' % maintenance_work_mem)
            steps['index'].append(common.run([common.client('psql'), '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d',
                                              dst_uri, '-f', post_data], env=index_env, what='floor: indexes'))
            steps['analyze'].append(common.run([common.client('psql'), '-X', '-q', '-d', dst_uri, '-c',
                                                'ANALYZE %s' % qualified], env=env, what='floor: ANALYZE'))
        os.unlink(post_data)
    common.drop_database(servers.dst, scratch)
    result = {step: common.median(times) for step, times in steps.items()}
    result['total'] = result['copy'] + result['index'] + result['analyze']
    result['runs'] = steps
    result['table'] = table
    return result


def floor_vs_peer(bench, dbname, table, runs):
    """floor() and a pg_dump | psql copy of `dbname` back to back, `runs` times: the ratio floor / peer of each pair
    is measured under the same load. Returns the floor result of the pairs' medians plus 'pairs'."""
    pairs, floors = [], []
    for _run in range(runs):
        low = floor(bench.servers, dbname, table, 1)
        peer = bench.dump_psql(dbname)['seconds']
        floors.append(low)
        pairs.append({'floor': low['total'], 'peer': peer, 'ratio': low['total'] / peer})
    common.drop_database(bench.servers.dst, dbname)
    result = {step: common.median([f[step] for f in floors])
              for step in ('copy', 'index', 'analyze', 'copy_2_streams', 'total')}
    result.update(table=table, pairs=pairs, runs={step: [f['runs'][step][0] for f in floors]
                                                  for step in ('copy', 'index', 'analyze', 'copy_2_streams')},
                  peer=common.median([p['peer'] for p in pairs]),
                  ratio=common.median([p['ratio'] for p in pairs]))
    return result


def print_floor(result, fastest_name, fastest_seconds):
    print('  floor on %s alone: COPY %.2f s (in 2 parallel streams %.2f s) + indexes %.2f s + ANALYZE %.2f s = '
          '%.2f s = %.2f of %s (%.2f s); 0.8 of it is %.2f s' % (
              result['table'], result['copy'], result['copy_2_streams'], result['index'], result['analyze'],
              result['total'], result['total'] / fastest_seconds, fastest_name, fastest_seconds,
              0.8 * fastest_seconds))
    if result.get('pairs'):
        print('  floor / pg_dump | psql, run back to back: %s (median %.2f)' % (
            ', '.join('%.2f/%.2f s = %.2f' % (p['floor'], p['peer'], p['ratio']) for p in result['pairs']),
            result['ratio']))


def summarize(results):
    """{method: {'median': s, 'runs': [...], ...}} with the ratio of ours to the fastest peer."""
    out = {}
    for method, runs in results.items():
        if not runs:
            continue
        times = [r['seconds'] for r in runs]
        item = {'median': common.median(times), 'runs': times}
        if method == OURS:
            item['hwm_kb'] = max(r['hwm_kb'] or 0 for r in runs) or None
            item['tree_rss_kb'] = max(r['tree_rss_kb'] or 0 for r in runs) or None
            keys = sorted({k for r in runs for k in r['breakdown']})
            item['breakdown'] = {k: common.median([r['breakdown'].get(k) for r in runs]) for k in keys}
        elif runs[0].get('breakdown'):
            keys = sorted({k for r in runs for k in r['breakdown']})
            item['breakdown'] = {k: common.median([r['breakdown'].get(k) for r in runs]) for k in keys}
        out[method] = item
    peers = [(m, v['median']) for m, v in out.items() if m != OURS]
    if OURS in out and peers:
        fastest = min(peers, key=lambda p: p[1])
        out['_fastest_peer'] = fastest[0]
        out['_ratio_to_fastest'] = out[OURS]['median'] / fastest[1]
    return out


def print_comparison(title, summary, size_bytes):
    print()
    print('%s (%.0f MB on the source)' % (title, size_bytes / 1e6))
    print('  %-36s %10s %10s   %s' % ('method', 'median', 'ours/peer', 'runs'))
    ours = summary.get(OURS, {}).get('median')
    for method in METHODS:
        if method not in summary:
            continue
        item = summary[method]
        ratio = '' if method == OURS or not ours else '%.2f' % (ours / item['median'])
        runs = ', '.join('%.2f' % t for t in item['runs'])
        print('  %-36s %10s %10s   %s' % (method, common.fmt_s(item['median']), ratio, runs))
    if '_ratio_to_fastest' in summary:
        ratio = summary['_ratio_to_fastest']
        print('  ours / fastest peer (%s): %.2f  (target <= 0.8: %s)' % (
            summary['_fastest_peer'], ratio, 'met' if ratio <= 0.8 else 'MISSED'))
    if OURS in summary:
        print('  pgdts phases (median s): %s' % ', '.join('%s %.2f' % kv for kv in summary[OURS]['breakdown'].items()))
        print('  pgdts worker peak memory: VmHWM %s, worker+children RSS %s' % (
            common.fmt_mb(summary[OURS]['hwm_kb']), common.fmt_mb(summary[OURS]['tree_rss_kb'])))


def scaling(bench, databases, jobs_list, runs_for, base_db=None, known=None):
    """Ours at several data sizes (default jobs) and with several jobs on base_db.

    databases: [(scale, dbname)]; runs_for(scale) -> number of runs. known: {(dbname, jobs): [results]} already
    measured (reused, not run again). Returns {'scales': [...], 'jobs': [...]}.
    """
    known = dict(known or {})
    out = {'scales': [], 'jobs': []}

    def measure(dbname, jobs, runs):
        have = list(known.get((dbname, jobs), []))
        while len(have) < runs:
            say('scaling: %s with jobs=%d, run %d/%d (load %s)' % (dbname, jobs, len(have) + 1, runs, common.loadavg_text()))
            result = bench.ours(dbname, jobs=jobs)
            say('    %.2f s, worker VmHWM %s' % (result['seconds'], common.fmt_mb(result['hwm_kb'])))
            have.append(result)
        known[(dbname, jobs)] = have
        common.drop_database(bench.servers.dst, dbname)
        return have

    for scale, dbname in databases:
        runs = measure(dbname, bench.jobs, runs_for(scale))
        out['scales'].append({'scale': scale, 'dbname': dbname, 'jobs': bench.jobs,
                              'size_bytes': common.database_size(bench.servers.src, dbname),
                              'median': common.median([r['seconds'] for r in runs]),
                              'runs': [r['seconds'] for r in runs],
                              'hwm_kb': max(r['hwm_kb'] or 0 for r in runs) or None,
                              'tree_rss_kb': max(r['tree_rss_kb'] or 0 for r in runs) or None,
                              'breakdown': median_breakdown(runs)})
    if base_db is not None:
        scale, dbname = base_db
        for jobs in jobs_list:
            runs = measure(dbname, jobs, runs_for(scale))
            out['jobs'].append({'scale': scale, 'jobs': jobs, 'median': common.median([r['seconds'] for r in runs]),
                                'runs': [r['seconds'] for r in runs],
                                'hwm_kb': max(r['hwm_kb'] or 0 for r in runs) or None,
                                'breakdown': median_breakdown(runs)})
    return out


def median_breakdown(runs):
    keys = sorted({k for r in runs for k in r.get('breakdown', {})})
    return {k: common.median([r['breakdown'].get(k) for r in runs]) for k in keys}


def print_scaling(result):
    print()
    print('Scaling of the pgdts full copy')
    print('  %-10s %6s %10s %10s %12s %10s   %s' % ('data', 'jobs', 'size', 'median', 's per GB', 'VmHWM', 'runs'))
    for item in result['scales']:
        print('  %-10s %6d %8.0f MB %10s %12.1f %10s   %s' % (
            'scale %d' % item['scale'], item['jobs'], item['size_bytes'] / 1e6, common.fmt_s(item['median']),
            item['median'] / (item['size_bytes'] / 1e9), common.fmt_mb(item['hwm_kb']),
            ', '.join('%.2f' % t for t in item['runs'])))
    for item in result['jobs']:
        print('  %-10s %6d %11s %10s %12s %10s   %s' % (
            'scale %d' % item['scale'], item['jobs'], '', common.fmt_s(item['median']), '',
            common.fmt_mb(item['hwm_kb']), ', '.join('%.2f' % t for t in item['runs'])))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--scale', type=int, default=50, help='pgbench scale of the comparison (default 50)')
    parser.add_argument('--tables', type=int, default=1000, help='tables of the "many tables" set (default 1000)')
    parser.add_argument('--rows-per-table', type=int, default=1000)
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--jobs', type=int, default=4, help='jobs of pgdts and pgcopydb in the comparison')
    parser.add_argument('--scales', default='10,50,100', help='scales of the scaling figure')
    parser.add_argument('--scaling-jobs', default='1,2,4')
    parser.add_argument('--skip-peers', action='store_true')
    parser.add_argument('--skip-scaling', action='store_true')
    parser.add_argument('--keep', action='store_true', help='leave the clusters running')
    args = parser.parse_args(argv)

    with common.Servers(keep=args.keep) as servers:
        bench = CopyBench(servers, jobs=args.jobs, pgcopydb_jobs=args.jobs)
        scales = sorted({int(s) for s in args.scales.split(',')} | {args.scale})
        databases = {}
        for scale in scales:
            say('pgbench -i -s %d on the source' % scale)
            databases[scale] = 'pgbench_s%d' % scale
            common.pgbench_init(servers.src, databases[scale], scale)
        say('building %d tables on the source' % args.tables)
        many_size = common.many_tables_init(servers.src, 'many_tables', args.tables, args.rows_per_table)
        methods = (OURS,) if args.skip_peers else METHODS
        # write out what the data load left in shared buffers before anything is measured
        common.checkpoint(servers.src, servers.dst)
        main_db = databases[args.scale]
        pgbench_results = bench.compare(main_db, args.runs, methods)
        many_results = bench.compare('many_tables', args.runs, methods)
        pgbench_summary = summarize(pgbench_results)
        print_comparison('Full copy of pgbench scale %d' % args.scale, pgbench_summary,
                         common.database_size(servers.src, main_db))
        if not args.skip_peers:
            fastest = pgbench_summary['_fastest_peer']
            print_floor(floor_vs_peer(bench, main_db, 'pgbench_accounts', args.runs), fastest,
                        pgbench_summary[fastest]['median'])
        print_comparison('Full copy of %d tables with indexes' % args.tables, summarize(many_results), many_size)
        if not args.skip_scaling:
            result = scaling(bench, [(s, databases[s]) for s in sorted(int(x) for x in args.scales.split(','))],
                             [int(j) for j in args.scaling_jobs.split(',')],
                             lambda scale: 1 if scale >= 100 else args.runs, base_db=(args.scale, main_db),
                             known={(main_db, args.jobs): pgbench_results[OURS]})
            print_scaling(result)
    return 0


if __name__ == '__main__':
    sys.exit(main())
