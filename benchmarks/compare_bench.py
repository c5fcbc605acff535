"""Benchmark of the data comparison (compare.py): comparison time next to the time of reading the same data once.

Starts two throw-away clusters (tests/harness), loads the same tables on both, then prints
- the time to read every table once on each server (`COPY (SELECT * FROM t) TO STDOUT` drained by psycopg),
  one server after the other and both at the same time,
- the time of compare_tables() in count mode and in checksum mode (identical data),
- the time of a checksum comparison that finds one changed row (drill-down included).

Usage: .venv/bin/python benchmarks/compare_bench.py [--rows 1000000] [--jobs 4] [--chunk-rows 100000]
Not a test: it prints figures and asserts nothing about time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common as bench_env  # noqa: E402

bench_env.link_collection()

from psycopg import sql  # noqa: E402

from ansible_collections.pgdts.migration.plugins.module_utils import catalog, compare  # noqa: E402
from ansible_collections.pgdts.migration.plugins.module_utils import connection as pgconn  # noqa: E402
from tests.harness.cluster import PgCluster, make_base_dir  # noqa: E402

DB = 'bench'
TABLES = {
    'orders': ('CREATE TABLE public.orders (id bigint PRIMARY KEY, customer text, amount numeric(12,2), '
               'created timestamptz, score float8, tags text[], doc jsonb)',
               "INSERT INTO public.orders SELECT g, 'customer ' || (g % 9973), (g % 100000) / 100.0, "
               "'2024-01-01 00:00:00+00'::timestamptz + g * interval '17 s', g / 7.0, ARRAY['t' || (g % 5), 'x'], "
               "jsonb_build_object('g', g, 'even', g % 2 = 0) FROM generate_series(1, %(rows)s) g"),
    'lines': ('CREATE TABLE public.lines (order_id bigint, line int, sku text, qty int, PRIMARY KEY (order_id, line))',
              "INSERT INTO public.lines SELECT g / 4, g % 4, md5(g::text), g % 13 FROM generate_series(1, %(rows)s) g"),
    'events': ('CREATE TABLE public.events (at timestamptz, kind text, payload text)',
               "INSERT INTO public.events SELECT '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 s', "
               "'kind ' || (g % 17), repeat('p', g % 50) FROM generate_series(1, %(rows)s / 2) g"),
}


def spec_of(cluster):
    return pgconn.ServerSpec.from_options(cluster.spec(dbname=DB), environ={})


def load(src, dst, rows):
    for cluster in (src, dst):
        cluster.create_database(DB)
        with cluster.connect(DB) as conn:
            for ddl, _fill in TABLES.values():
                conn.execute(ddl)
    with src.connect(DB) as conn:
        for _ddl, fill in TABLES.values():
            conn.execute(fill.replace('%(rows)s', str(int(rows))))
    with src.connect(DB) as sconn, dst.connect(DB) as dconn:
        for name in TABLES:
            ident = sql.Identifier('public', name)
            with sconn.cursor().copy(sql.SQL('COPY {} TO STDOUT').format(ident)) as reader, \
                    dconn.cursor().copy(sql.SQL('COPY {} FROM STDIN').format(ident)) as writer:
                for block in reader:
                    writer.write(block)
    for cluster in (src, dst):
        with cluster.connect(DB) as conn:
            conn.execute('VACUUM ANALYZE')


def read_all(cluster):
    """Read every table once, the way a copy would: COPY out, drained by psycopg."""
    total = 0
    with cluster.connect(DB) as conn:
        for name in TABLES:
            query = sql.SQL('COPY (SELECT * FROM {}) TO STDOUT').format(sql.Identifier('public', name))
            with conn.cursor().copy(query) as reader:
                for block in reader:
                    total += len(block)
    return total


def timed(func, *args, **kwargs):
    start = time.perf_counter()
    value = func(*args, **kwargs)
    return time.perf_counter() - start, value


def read_both_parallel(src, dst):
    threads = [threading.Thread(target=read_all, args=(c,)) for c in (src, dst)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rows', type=int, default=1000000, help='rows of the largest tables (default 1000000)')
    parser.add_argument('--jobs', type=int, default=4)
    parser.add_argument('--chunk-rows', type=int, default=100000)
    parser.add_argument('--repeat', type=int, default=2, help='runs per measurement; the best is printed')
    args = parser.parse_args(argv)

    base = make_base_dir('pgdts-bench-')
    src = PgCluster(base, 'bench-src').init().start()
    dst = PgCluster(base, 'bench-dst').init().start()
    try:
        print('loading %d rows into %d tables on both servers ...' % (args.rows, len(TABLES)), flush=True)
        load(src, dst, args.rows)
        with pgconn.connect(spec_of(src)) as conn:
            tables = [t for t in catalog.load_tables(conn, DB) if t.name in TABLES]
        size = src.value("SELECT pg_size_pretty(sum(pg_table_size(oid))) FROM pg_class WHERE relname = ANY(%s)",
                         (list(TABLES),), dbname=DB)
        rows = sum(src.value(sql.SQL('SELECT count(*) FROM {}').format(sql.Identifier('public', n)).as_string(None),
                             dbname=DB) for n in TABLES)
        print('data: %d rows, %s per server (%s)' % (rows, size, ', '.join(
            '%s key=%s' % (t.name, t.key_columns or 'none') for t in tables)))

        def best(func, *fargs, **fkwargs):
            runs = [timed(func, *fargs, **fkwargs) for _run in range(args.repeat)]
            return min(r[0] for r in runs), runs[-1][1]

        read_src, nbytes = best(read_all, src)
        read_dst = best(read_all, dst)[0]
        read_par = best(read_both_parallel, src, dst)[0]
        kwargs = dict(jobs=args.jobs, chunk_rows=args.chunk_rows)
        count_t, count_res = best(compare.compare_tables, spec_of(src), spec_of(dst), DB, tables, mode='count', **kwargs)
        sum_t, sum_res = best(compare.compare_tables, spec_of(src), spec_of(dst), DB, tables, **kwargs)
        md5_t, md5_res = best(compare.compare_tables, spec_of(src), spec_of(dst), DB, tables, hash_method='md5', **kwargs)
        dst.execute('UPDATE public.orders SET amount = amount + 1 WHERE id = %s', (args.rows // 2 + 1,), dbname=DB)
        diff_t, diff_res = best(compare.compare_tables, spec_of(src), spec_of(dst), DB, tables, **kwargs)

        print()
        print('%-66s %8s' % ('measurement', 'seconds'))
        print('%-66s %8.2f' % ('read once via COPY TO STDOUT, source (%.0f MB of text)' % (nbytes / 1e6), read_src))
        print('%-66s %8.2f' % ('read once via COPY TO STDOUT, destination', read_dst))
        print('%-66s %8.2f' % ('read once, source then destination', read_src + read_dst))
        print('%-66s %8.2f' % ('read once, both servers at the same time', read_par))
        print('%-66s %8.2f' % ('compare count mode (jobs=%d)' % args.jobs, count_t))
        print('%-66s %8.2f' % ('compare checksum, hashtextextended (jobs=%d, chunk_rows=%d)'
                               % (args.jobs, args.chunk_rows), sum_t))
        print('%-66s %8.2f' % ('compare checksum, md5 (portable fallback)', md5_t))
        print('%-66s %8.2f' % ('compare checksum with one changed row (drill-down)', diff_t))
        print()
        print('checksum / reading both servers at the same time: %.2f' % (sum_t / read_par))
        print('checksum / reading source then destination:        %.2f' % (sum_t / (read_src + read_dst)))
        print('results: count %s, checksum %s, md5 %s, changed row %s' % (
            compare.summarize(count_res), compare.summarize(sum_res), compare.summarize(md5_res),
            [(r['table'], r['result'], r['sample_keys']) for r in diff_res if r['result'] != 'match']))
        print('chunks per table: %s' % {r['table']: r['chunks'] for r in sum_res})
    finally:
        for cluster in (src, dst):
            cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
