# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Incremental sync throughput: catch up a backlog of pgbench transactions, and compare with native replication.

    .venv/bin/python benchmarks/sync_bench.py --transactions 200000 [--plugin pgoutput|wal2json] [--native]

Starts two throw-away clusters (tests/harness/cluster.py), initialises pgbench on the source, creates the slot with
an exported snapshot and copies the tables under it (as the real copy stage does), runs pgbench to build a backlog,
then times decoding.SlotReader + apply.Applier catching up, checks both sides are equal and prints tx/s.
With --native, the same backlog is also replayed by a native subscription on a third database for comparison.
With --repeat N, the same backlog is caught up N times from the copied state (one peek window, slot not advanced) and
the best and median rates are printed: the machine is shared, single runs vary a lot.
Figures only: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common as bench_env  # noqa: E402

bench_env.link_collection()

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from ansible_collections.pgdts.migration.plugins.module_utils import apply as pgapply  # noqa: E402
from ansible_collections.pgdts.migration.plugins.module_utils import catalog  # noqa: E402
from ansible_collections.pgdts.migration.plugins.module_utils import decoding  # noqa: E402
from ansible_collections.pgdts.migration.plugins.module_utils.lsn import lsn_to_int  # noqa: E402
from tests.harness.cluster import PgCluster, make_base_dir  # noqa: E402

TABLES = ['pgbench_accounts', 'pgbench_branches', 'pgbench_tellers', 'pgbench_history']


def table_digest(conn, table):
    query = sql.SQL("SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {} t").format(
        sql.Identifier('public', table))
    return conn.execute(query).fetchone()


def copy_tables(src_cluster, dst_conn, snapshot):
    with src_cluster.connect('bench', autocommit=False) as src:
        src.execute('SET TRANSACTION ISOLATION LEVEL REPEATABLE READ')
        src.execute(sql.SQL('SET TRANSACTION SNAPSHOT {}').format(sql.Literal(snapshot)))
        for table in TABLES:
            ident = sql.Identifier('public', table)
            with src.cursor().copy(sql.SQL('COPY {} TO STDOUT (FORMAT binary)').format(ident)) as out:
                with dst_conn.cursor().copy(sql.SQL('COPY {} FROM STDIN (FORMAT binary)').format(ident)) as into:
                    for chunk in out:
                        into.write(chunk)
        src.rollback()
    dst_conn.commit()


def catch_up(args, source, dest, dbname, src_conn, tables, copy_lsn, target, trial, keep_slot):
    """Read and apply the whole backlog into `dbname` on the destination; print and return tx/s."""
    dst_conn = psycopg.connect(autocommit=False, **_kw(dest, dbname))
    origin = 'bench_origin_%d' % trial
    applier = pgapply.Applier(dst_conn, origin, tables, {k: copy_lsn for k in tables}, net=not args.ordered)
    applier.setup()
    window = args.window
    advance_interval = args.advance_interval
    if keep_slot:
        window = max(window, args.transactions * 8)     # one window: a new one would advance the slot
        advance_interval = 1e9
    if args.stream:
        repl = psycopg.connect(autocommit=True, replication='database', **_kw(source, 'bench'))
        reader = decoding.StreamReader(src_conn, repl, 'bench_slot', args.plugin, publication='bench_pub',
                                       tables=list(tables) if args.plugin == 'wal2json' else None,
                                       queue_changes=max(4 * args.batch, 50000))
    else:
        reader = decoding.SlotReader(src_conn, 'bench_slot', args.plugin, publication='bench_pub',
                                     tables=list(tables) if args.plugin == 'wal2json' else None, window_changes=window,
                                     advance_interval=advance_interval, prefetch=not args.no_prefetch)
    profiler = None
    if args.profile:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    cpu_started = time.process_time()
    started = time.monotonic()
    read_s = apply_s = confirm_s = 0.0
    applied = changes = 0
    while True:
        t0 = time.monotonic()
        txns, done = reader.read(upto_lsn=target, max_changes=args.batch)
        t1 = time.monotonic()
        result = applier.apply(txns)
        t2 = time.monotonic()
        read_s += t1 - t0
        apply_s += t2 - t1
        applied += result['transactions']
        changes += result['changes']
        reader.confirm(applier.applied_lsn())
        confirm_s += time.monotonic() - t2
        if done:
            break
    if not keep_slot:
        reader.flush()
    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu_started
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
    reader.close()
    print('pgdts %s: %d transactions (%d changes) in %.2f s = %.0f tx/s (read+decode %.2f s, apply %.2f s, '
          'confirm %.2f s; peek windows %d, server peek %.2f s; slot advances %d, %.2f s; batches %s, fallbacks %d, '
          'set-based statements %.2f s; client CPU %.2f s)'
          % (args.plugin, applied, changes, elapsed, applied / elapsed, read_s, apply_s, confirm_s,
             reader.stats['windows'], reader.stats['peek_seconds'], reader.stats['advances'],
             reader.stats['advance_seconds'], applier.stats['batches'], applier.stats['fallbacks'],
             applier.stats['net_seconds'], cpu))
    equal = all(table_digest(src_conn, t) == table_digest(dst_conn, t) for t in TABLES)
    dst_conn.rollback()
    print('tables equal on both sides: %s' % equal)
    applier.close()
    dst_conn.close()
    with dest.connect(dbname) as conn:
        pgapply.drop_origin(conn, origin)
    return applied / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--transactions', type=int, default=50000, help='pgbench transactions in the backlog')
    parser.add_argument('--scale', type=int, default=10)
    parser.add_argument('--clients', type=int, default=4)
    parser.add_argument('--plugin', default='pgoutput', choices=decoding.PLUGINS)
    parser.add_argument('--batch', type=int, default=20000, help='max_changes per read/apply batch')
    parser.add_argument('--window', type=int, default=500000, help='rows per peek window')
    parser.add_argument('--ordered', action='store_true', help='disable set-based apply')
    parser.add_argument('--stream', action='store_true', help='StreamReader (replication protocol) instead of SlotReader')
    parser.add_argument('--no-prefetch', action='store_true', help='decode the next batch only when asked')
    parser.add_argument('--repeat', type=int, default=1, help='catch up the same backlog this many times')
    parser.add_argument('--advance-interval', type=float, default=0.0, help='SlotReader advance_interval (seconds)')
    parser.add_argument('--switch-interval', type=float, default=None, help='sys.setswitchinterval() for the run')
    parser.add_argument('--native', action='store_true', help='also time a native subscription on the same backlog')
    parser.add_argument('--keep', action='store_true', help='leave the clusters running')
    parser.add_argument('--profile', help='write a cProfile of the catch-up loop to this file')
    args = parser.parse_args()
    if args.stream and args.repeat > 1:
        parser.error('--repeat needs the SQL reader (a stream confirms what it applied)')

    base = make_base_dir('pgdts-bench-')
    clusters = []
    try:
        source = PgCluster(base, 'src').init().start()
        clusters.append(source)
        dest = PgCluster(base, 'dst').init().start()
        clusters.append(dest)
        source.create_database('bench')
        dest.create_database('bench')
        source.run_client('pgbench', ['-i', '-q', '-s', str(args.scale)], dbname='bench', stdout=open(os.devnull, 'w'),
                          stderr=open(os.devnull, 'w'))
        dest.run_client('pgbench', ['-i', '-q', '-I', 'dtp', '-s', str(args.scale)], dbname='bench',
                        stdout=open(os.devnull, 'w'), stderr=open(os.devnull, 'w'))
        src_conn = source.connect('bench')
        if args.plugin == 'pgoutput':
            decoding.create_publication(src_conn, 'bench_pub', [('public', t) for t in TABLES])
        native_slot_lsn = None
        if args.native:
            dest.create_database('native')
            dest.run_client('pgbench', ['-i', '-q', '-I', 'dtp', '-s', str(args.scale)], dbname='native',
                            stdout=open(os.devnull, 'w'), stderr=open(os.devnull, 'w'))
            if args.plugin != 'pgoutput':
                decoding.create_publication(src_conn, 'bench_pub', [('public', t) for t in TABLES])
        repl = psycopg.connect(autocommit=True, replication='database', **_kw(source, 'bench'))
        copy_lsn, snapshot = decoding.create_slot_with_snapshot(repl, 'bench_slot', args.plugin)
        dst_conn = psycopg.connect(autocommit=False, **_kw(dest, 'bench'))
        copy_tables(source, dst_conn, snapshot)
        if args.native:
            native_conn = psycopg.connect(autocommit=False, **_kw(dest, 'native'))
            native_slot_lsn, native_snapshot = decoding.create_slot_with_snapshot(repl, 'native_slot', 'pgoutput')
            copy_tables(source, native_conn, native_snapshot)
            native_conn.close()
        repl.close()

        started = time.monotonic()
        source.run_client('pgbench', ['-n', '-c', str(args.clients), '-j', str(min(args.clients, 2)), '-t',
                                      str(args.transactions // args.clients)], dbname='bench',
                          stdout=open(os.devnull, 'w'), stderr=open(os.devnull, 'w'))
        produce = time.monotonic() - started
        # everything committed so far (commits are asynchronous here: wait until the WAL is flushed that far)
        target = lsn_to_int(source.value('SELECT pg_current_wal_insert_lsn()::text', dbname='bench'))
        while lsn_to_int(source.value('SELECT pg_current_wal_flush_lsn()::text', dbname='bench')) < target:
            time.sleep(0.05)
        backlog = args.transactions // args.clients * args.clients
        print('backlog: %d pgbench transactions (scale %d) produced in %.1f s (%.0f tx/s on the source)'
              % (backlog, args.scale, produce, backlog / produce))

        tables = {(t.schema, t.name): pgapply.TableMeta.from_table(t)
                  for t in catalog.load_tables(src_conn, 'bench') if t.name in TABLES}
        dst_conn.close()
        repeat = max(args.repeat, 1)
        if repeat > 1:
            # every trial starts from the copied state and reads the same backlog again (the slot is not advanced)
            with dest.connect() as admin:
                admin.execute('CREATE DATABASE bench_base TEMPLATE bench')
        rates = []
        for trial in range(repeat):
            dbname = 'bench'
            if repeat > 1:
                dbname = 'bench_trial'
                with dest.connect() as admin:
                    admin.execute('DROP DATABASE IF EXISTS bench_trial')
                    admin.execute('CREATE DATABASE bench_trial TEMPLATE bench_base')
            rates.append(catch_up(args, source, dest, dbname, src_conn, tables, copy_lsn, target, trial,
                                  keep_slot=repeat > 1))
        if repeat > 1:
            print('pgdts best of %d: %.0f tx/s (median %.0f tx/s)' % (repeat, max(rates), sorted(rates)[repeat // 2]))

        if args.native:
            native_admin = dest.connect('native')
            passfile = os.path.join(dest.root, 'bench.pgpass')     # the password stays out of the catalog
            with open(passfile, 'w') as handle:
                handle.write('%s:%d:*:postgres:%s\n' % (source.host, source.port, source.password))
            os.chmod(passfile, 0o600)
            if os.geteuid() == 0:
                shutil.chown(passfile, 'postgres')
            started = time.monotonic()
            native_admin.execute(sql.SQL(
                "CREATE SUBSCRIPTION bench_sub CONNECTION {} PUBLICATION bench_pub "
                "WITH (create_slot = false, slot_name = 'native_slot', copy_data = false)").format(
                    sql.Literal('host=%s port=%d user=postgres passfile=%s dbname=bench'
                                % (source.host, source.port, passfile))))
            while True:
                row = source.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                                     "WHERE slot_name = 'native_slot'", dbname='bench')[0]
                if lsn_to_int(row[0]) >= target:
                    break
                time.sleep(0.05)
            native_elapsed = time.monotonic() - started
            print('native logical replication: %d transactions in %.2f s = %.0f tx/s'
                  % (backlog, native_elapsed, backlog / native_elapsed))
            native_admin.execute('ALTER SUBSCRIPTION bench_sub DISABLE')
            native_admin.execute('ALTER SUBSCRIPTION bench_sub SET (slot_name = NONE)')
            native_admin.execute('DROP SUBSCRIPTION bench_sub')
            native_admin.close()
        src_conn.close()
        dst_conn.close()
    finally:
        if not args.keep:
            for cluster in clusters:
                cluster.destroy()
            shutil.rmtree(base, ignore_errors=True)
    return 0


def _kw(cluster, dbname):
    return {'host': cluster.host, 'port': cluster.port, 'user': 'postgres', 'password': cluster.password,
            'dbname': dbname}


if __name__ == '__main__':
    sys.exit(main())
