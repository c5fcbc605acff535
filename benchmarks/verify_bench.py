"""How long the verify catalogue takes on a source with 2,000 tables in 10 schemas.

Starts two throw-away clusters with the test harness, builds the schema, runs checks.run_checks() a few times and
prints the timings. Not a test: it only prints figures (the goal is under 10 seconds on the project machine).

    .venv/bin/python benchmarks/verify_bench.py [--schemas 10] [--tables-per-schema 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common as bench_env  # noqa: E402

bench_env.link_collection()

from ansible_collections.pgdts.migration.plugins.module_utils import checks  # noqa: E402
from ansible_collections.pgdts.migration.plugins.module_utils.connection import ServerSpec  # noqa: E402
from tests.harness.cluster import PgCluster, make_base_dir  # noqa: E402

# Each schema: tables with a serial key, a text column, an index, a foreign key to the previous table, and every
# tenth table without a primary key, every twentieth with a trigger (so the set-based queries have work to do).
BUILD = """
DO $build$
DECLARE
  s int; t int; sch text; tbl text; prev text;
BEGIN
  CREATE FUNCTION public.bench_touch() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
  FOR s IN 1..current_setting('bench.schemas')::int LOOP
    sch := 'app_' || s;
    EXECUTE format('CREATE SCHEMA %I', sch);
    prev := NULL;
    FOR t IN 1..current_setting('bench.tables')::int LOOP
      tbl := 't_' || t;
      IF t % 10 = 0 THEN
        EXECUTE format('CREATE TABLE %I.%I (id bigint, name text, amount numeric)', sch, tbl);
      ELSE
        EXECUTE format('CREATE TABLE %I.%I (id bigserial PRIMARY KEY, name text, amount numeric, parent_id bigint)',
                       sch, tbl);
        EXECUTE format('CREATE INDEX ON %I.%I (name)', sch, tbl);
        IF prev IS NOT NULL THEN
          EXECUTE format('ALTER TABLE %I.%I ADD FOREIGN KEY (parent_id) REFERENCES %I.%I (id)', sch, tbl, sch, prev);
        END IF;
        prev := tbl;
      END IF;
      IF t % 20 = 0 THEN
        EXECUTE format('CREATE TRIGGER touch BEFORE UPDATE ON %I.%I FOR EACH ROW EXECUTE FUNCTION public.bench_touch()',
                       sch, tbl);
      END IF;
    END LOOP;
  END LOOP;
END
$build$;
"""


def spec_of(cluster):
    return ServerSpec.from_options(cluster.spec(dbname='postgres'), environ={})


def timed(label, runs, **kwargs):
    times, items = [], None
    for _run in range(runs):
        start = time.perf_counter()
        items = checks.run_checks(**kwargs)
        times.append(time.perf_counter() - start)
    summary = checks.summarize(items)
    print('%-58s best %6.2f s   median %6.2f s   (%d items: %d pass, %d warning, %d failed)' % (
        label, min(times), sorted(times)[len(times) // 2], len(items), summary['pass'], summary['warning'],
        summary['failed']))
    return items, min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--schemas', type=int, default=10)
    parser.add_argument('--tables-per-schema', type=int, default=200)
    parser.add_argument('--runs', type=int, default=3)
    args = parser.parse_args(argv)
    total = args.schemas * args.tables_per_schema

    base = make_base_dir('pgdts-verify-bench-')
    clusters = []
    try:
        src = PgCluster(base, 'bench-src').init().start()
        clusters.append(src)
        dst = PgCluster(base, 'bench-dst').init().start()
        clusters.append(dst)
        for cluster in (src, dst):
            cluster.create_database('bench')
        started = time.perf_counter()
        with src.connect('bench') as conn:
            conn.execute("SELECT set_config('bench.schemas', %s, false), set_config('bench.tables', %s, false)",
                         (str(args.schemas), str(args.tables_per_schema)))
            conn.execute(BUILD)
            conn.execute('ANALYZE')
        elapsed = time.perf_counter() - started
        print('built %d tables in %d schemas on the source in %.1f s' % (total, args.schemas, elapsed))

        common = dict(source=spec_of(src), destination=spec_of(dst), task='bench', databases=['bench'])
        items, best = timed('whole database, empty destination database', args.runs, **common)
        selection = next(i for i in items if i['id'] == 'tables.selection')['message']
        print('    %s' % selection)
        timed('table patterns (app_*.t_1*), wal2json', args.runs, tables=['app_*.t_1*'], plugin='wal2json', **common)

        # Worst case for the destination side: every table already exists there (the conflict check looks into each).
        src.run_client('pg_dump', ['--schema-only', '--no-owner', '-f', os.path.join(base, 'schema.sql')], dbname='bench')
        dst.run_client('psql', ['-q', '-v', 'ON_ERROR_STOP=1', '-f', os.path.join(base, 'schema.sql')], dbname='bench',
                       stdout=subprocess.DEVNULL)
        _items, worst = timed('whole database, all %d tables exist on the destination' % total, args.runs, **common)
        print('RESULT: verifying %d tables in %d schemas took %.2f s (empty destination) and %.2f s (all tables '
              'present on the destination); goal < 10 s' % (total, args.schemas, best, worst))
    finally:
        for cluster in clusters:
            cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
