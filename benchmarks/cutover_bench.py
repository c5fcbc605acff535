# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Cutover downtime: pg_dts_finish of a synced pgbench database while pgbench keeps writing.

    .venv/bin/python benchmarks/cutover_bench.py [--scale 10] [--rate 500] [--settle 5]

A task with incremental sync is started the way pg_dts_migrate starts it and waited for like `wait: synced`
(task_control). pgbench then writes at a fixed rate (`-c 4 -j 2 --rate R`); after `settle` seconds the finish runs
as pg_dts_finish runs it (cutover.Finisher with the module's defaults: fence read_only, wait for the destination,
sequences, checksum comparison, end of the sync). The downtime is the module's `downtime_seconds`: from the fence
(writers refused and their sessions ended) until the destination is complete and compared.

Afterwards, on the same data (source and destination now equal), the comparison is timed alone and next to reading
every table once on both servers at the same time (COPY TO STDOUT drained), to show what part of the downtime the
comparison is and how it relates to a plain read.

Figures only: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import say, sql  # noqa: E402

from ansible_collections.pgdts.migration.plugins.module_utils import catalog, compare  # noqa: E402
from ansible_collections.pgdts.migration.plugins.module_utils.connection import connect  # noqa: E402


def read_once(cluster, dbname, tables):
    """Read every table once the way a copy would (COPY TO STDOUT, drained); returns bytes read."""
    total = 0
    with cluster.connect(dbname) as conn:
        for table in tables:
            query = sql.SQL('COPY (SELECT * FROM {}) TO STDOUT').format(sql.Identifier(table.schema, table.name))
            with conn.cursor().copy(query) as reader:
                for block in reader:
                    total += len(block)
    return total


def read_both(src, dst, dbname, tables):
    sizes = {}
    threads = [threading.Thread(target=lambda c=c: sizes.__setitem__(c.name, read_once(c, dbname, tables)))
               for c in (src, dst)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - started, sizes.get(src.name, 0)


class FinishPhases(common.Sampler):
    """Watches the task row while the finish runs: the request goes to 'finish' once the source is fenced, and to
    'stop' once the destination is complete, the sequences are set and the comparison is done."""

    def __init__(self, task, started):
        self.task = task
        self.started = started
        self.marks = {}
        super().__init__('finish-phases')

    def _run(self):
        with self.task.store() as store:
            while not self._stop.is_set():
                row = store.get_task(self.task.name)
                now = time.monotonic() - self.started
                if row and row['request'] in ('finish', 'stop'):
                    self.marks.setdefault(row['request'], now)
                self._stop.wait(0.02)

    def split(self, total):
        fenced = self.marks.get('finish')
        complete = self.marks.get('stop')
        if fenced is None or complete is None:
            return None
        return {'fence': fenced, 'catch_up_sequences_compare': complete - fenced,
                'stop_worker_and_release': total - complete}


def run(servers, scale=10, rate=500, settle=5.0, dbname='cutover_bench', jobs=4):
    src, dst = servers.src, servers.dst
    results = {'scale': scale, 'rate': rate, 'settle': settle}
    task = common.OurTask(servers, 'bench_%s' % dbname, dbname, jobs=jobs, incremental=True)
    load = None
    try:
        say('cutover: pgbench -i -s %d on the source' % scale)
        results['size_bytes'] = common.pgbench_init(src, dbname, scale)
        say('cutover: starting the task and waiting until it is synced')
        control = task.control()
        control.wait(task.start(), 'synced', 1200, 0.2)
        say('cutover: pgbench --rate %d for %.0f s, then finish (load %s)' % (rate, settle, common.loadavg_text()))
        load = subprocess.Popen([common.client('pgbench'), '-n', '-c', '4', '-j', '2', '-R', str(rate), '-T', '600',
                                 dbname], env=src.libpq_env(dbname), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        time.sleep(settle)
        if load.poll() is not None:
            raise RuntimeError('pgbench stopped early: %s' % load.communicate()[0][-2000:])
        with task.store() as store:
            report = control.report(store)
        results['lag_before'] = {'bytes': report['lag_bytes'], 'seconds': report['lag_seconds']}
        started = time.monotonic()
        with FinishPhases(task, started) as phases:
            finish = task.finish()
        results['finish_wall_seconds'] = time.monotonic() - started
        results['phases'] = phases.split(results['finish_wall_seconds'])
        try:
            output = load.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            load.kill()
            output = load.communicate()[0]
        results['load_ended_by_fence'] = ('read-only' in output or 'terminating connection' in output
                                          or 'server closed' in output)
        results['downtime_seconds'] = finish['downtime_seconds']
        results['terminated_sessions'] = finish['terminated_sessions']
        results['comparison_summary'] = finish['comparison_summary']
        results['module_phases'] = finish.get('phase_seconds')
        say('cutover: downtime %.2f s (finish took %.2f s), comparison %s' % (
            finish['downtime_seconds'], results['finish_wall_seconds'], finish['comparison_summary']))

        # The comparison alone, and reading the data once, on the same (now equal) data
        source = common.Servers.spec(src)
        destination = common.Servers.spec(dst)
        with connect(source, dbname) as conn:
            tables = [t for t in catalog.load_tables(conn, dbname) if t.has_storage]
        started = time.monotonic()
        compared = compare.compare_tables(source, destination, dbname, tables, mode='checksum', jobs=jobs)
        results['compare_seconds'] = time.monotonic() - started
        results['compare_summary'] = compare.summarize(compared)
        results['read_both_seconds'], results['read_bytes'] = read_both(src, dst, dbname, tables)
        results['compare_over_read'] = results['compare_seconds'] / results['read_both_seconds']
        say('cutover: comparison alone %.2f s, reading both servers once %.2f s' % (
            results['compare_seconds'], results['read_both_seconds']))
    finally:
        if load is not None and load.poll() is None:
            load.kill()
            load.communicate()
        task.cancel()
        src.execute(sql.SQL('ALTER DATABASE {} RESET default_transaction_read_only').format(sql.Identifier(dbname)))
        common.drop_database(src, dbname)
        common.drop_database(dst, dbname)
    return results


def print_results(results):
    print()
    print('Cutover (pg_dts_finish) of pgbench scale %d (%.0f MB) under pgbench --rate %d' % (
        results['scale'], results['size_bytes'] / 1e6, results['rate']))
    print('  downtime %.2f s (target < 5 s: %s); finish call %.2f s; lag before finish %s s; %d writer session(s) '
          'ended by the fence; comparison %s' % (
              results['downtime_seconds'], 'met' if results['downtime_seconds'] < 5 else 'MISSED',
              results['finish_wall_seconds'], results['lag_before']['seconds'], results['terminated_sessions'],
              results['comparison_summary']))
    if results.get('module_phases'):
        print('  finish phases reported by the module (s): %s' % ', '.join(
            '%s %.2f' % kv for kv in results['module_phases'].items()))
    if results.get('phases'):
        print('  finish phases seen from the task row (s): %s' % ', '.join(
            '%s %.2f' % kv for kv in results['phases'].items()))
    print('  checksum comparison alone %.2f s; reading every table once on both servers at the same time %.2f s '
          '(%.0f MB); ratio %.2f' % (results['compare_seconds'], results['read_both_seconds'],
                                     results['read_bytes'] / 1e6, results['compare_over_read']))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--scale', type=int, default=10)
    parser.add_argument('--rate', type=int, default=500)
    parser.add_argument('--settle', type=float, default=5.0, help='seconds of load before the finish')
    parser.add_argument('--keep', action='store_true')
    args = parser.parse_args(argv)
    with common.Servers(keep=args.keep) as servers:
        results = run(servers, args.scale, args.rate, args.settle)
    print_results(results)
    return 0


if __name__ == '__main__':
    sys.exit(main())
