# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""`make bench`: every performance figure in one run, on the same two servers and data, written to
docs/performance.md (and the raw numbers to .tmp/bench/results.json).

    .venv/bin/python benchmarks/bench.py [--quick] [--only copy,scaling,sync,cutover,compare,verify] [--no-write]

Figures (each script can also be run alone, see its docstring):
- full copy of pgbench scale 50 and of 1,000 tables with indexes: pgdts against pg_dump | psql,
  pg_dump -Fd -j2 + pg_restore -j2 and pgcopydb clone (copy_bench.py);
- scaling of the pgdts full copy with data size (scales 10, 50, 100) and jobs (1, 2, 4) (copy_bench.py);
- incremental sync against native logical replication: catch-up of a 200,000-transaction backlog, lag under a
  steady load (sync_vs_native.py);
- cutover downtime under load and the data comparison next to reading the data once (cutover_bench.py and the
  functions of compare_bench.py);
- the verify catalogue on 2,000 tables (the schema of verify_bench.py);
- peak memory of the worker during copy and sync (from the copy and sync figures).

No figure is an assertion: a missed target is written down as missed. --quick runs everything on small data to try
the machinery (a few minutes); its figures mean little and it writes docs/performance.md only with --write.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import say  # noqa: E402

import copy_bench  # noqa: E402
import cutover_bench  # noqa: E402
import sync_vs_native  # noqa: E402

SECTIONS = ('copy', 'scaling', 'sync', 'sync_engine', 'cutover', 'compare', 'verify')
HERE = os.path.dirname(os.path.abspath(__file__))
DOC = os.path.join(common.REPO, 'docs', 'performance.md')
RAW = os.path.join(common.REPO, '.tmp', 'bench', 'results.json')            # the last full run (--report-only reads it)
RAW_PARTIAL = os.path.join(common.REPO, '.tmp', 'bench', 'results-partial.json')   # --quick, --only, --set runs

FULL = {
    'scale': 50, 'tables': 1000, 'rows_per_table': 1000, 'runs': 3, 'jobs': 4, 'scales': (10, 50, 100),
    'scaling_jobs': (1, 2, 4), 'sync_scale': 10, 'transactions': 200000, 'rate': 500, 'lag_seconds': 30,
    'cutover_scale': 10, 'settle': 5.0, 'compare_rows': 1000000, 'verify_schemas': 10, 'verify_tables': 200,
    'verify_runs': 3,
}
QUICK = {
    'scale': 2, 'tables': 50, 'rows_per_table': 100, 'runs': 1, 'jobs': 4, 'scales': (1, 2, 3),
    'scaling_jobs': (1, 2, 4), 'sync_scale': 1, 'transactions': 4000, 'rate': 100, 'lag_seconds': 5,
    'cutover_scale': 1, 'settle': 2.0, 'compare_rows': 20000, 'verify_schemas': 2, 'verify_tables': 20,
    'verify_runs': 1,
}


# ---------------------------------------------------------------------------------------------------------------
# Sections

def ensure_pgbench(servers, databases, scales):
    for scale in scales:
        if scale not in databases:
            say('data: pgbench -i -s %d on the source' % scale)
            databases[scale] = 'pgbench_s%d' % scale
            common.pgbench_init(servers.src, databases[scale], scale)


def section_copy(servers, cfg, out):
    bench = copy_bench.CopyBench(servers, jobs=cfg['jobs'], pgcopydb_jobs=cfg['jobs'])
    databases = out.setdefault('_databases', {})
    ensure_pgbench(servers, databases, [cfg['scale']])
    main_db = databases[cfg['scale']]
    say('data: %d tables with indexes on the source' % cfg['tables'])
    many_size = common.many_tables_init(servers.src, 'many_tables', cfg['tables'], cfg['rows_per_table'])
    common.checkpoint(servers.src, servers.dst)
    pgbench_runs = bench.compare(main_db, cfg['runs'])
    many_runs = bench.compare('many_tables', cfg['runs'])
    out['copy'] = {
        'pgbench': {'scale': cfg['scale'], 'size_bytes': common.database_size(servers.src, main_db),
                    'summary': copy_bench.summarize(pgbench_runs)},
        'many_tables': {'tables': cfg['tables'], 'rows_per_table': cfg['rows_per_table'], 'size_bytes': many_size,
                        'summary': copy_bench.summarize(many_runs)},
        'runs': cfg['runs'], 'jobs': cfg['jobs'],
    }
    summary = out['copy']['pgbench']['summary']
    if summary.get('_fastest_peer'):
        say('copy floor: pgbench_accounts alone, %d run(s)' % cfg['runs'])
        out['copy']['pgbench']['floor'] = copy_bench.floor_vs_peer(bench, main_db, 'pgbench_accounts', cfg['runs'])
    out['_copy_known'] = {(main_db, cfg['jobs']): pgbench_runs[copy_bench.OURS]}
    common.drop_database(servers.src, 'many_tables')
    copy_bench.print_comparison('Full copy of pgbench scale %d' % cfg['scale'], out['copy']['pgbench']['summary'],
                                out['copy']['pgbench']['size_bytes'])
    copy_bench.print_comparison('Full copy of %d tables with indexes' % cfg['tables'],
                                out['copy']['many_tables']['summary'], many_size)


def section_scaling(servers, cfg, out):
    bench = copy_bench.CopyBench(servers, jobs=cfg['jobs'])
    bench.counter = 1000
    databases = out.setdefault('_databases', {})
    ensure_pgbench(servers, databases, sorted(set(cfg['scales']) | {cfg['scale']}))
    biggest = max(cfg['scales'])
    result = copy_bench.scaling(
        bench, [(s, databases[s]) for s in sorted(cfg['scales'])], cfg['scaling_jobs'],
        lambda scale: 1 if scale == biggest and cfg['runs'] > 1 else cfg['runs'],
        base_db=(cfg['scale'], databases[cfg['scale']]), known=out.get('_copy_known'))
    result['runs_note'] = ('median of %d runs each; scale %d: 1 run (time budget)' % (cfg['runs'], biggest)
                           if cfg['runs'] > 1 else '1 run each')
    out['scaling'] = result
    for scale, dbname in databases.items():
        common.drop_database(servers.src, dbname)
    copy_bench.print_scaling(result)


def section_sync(servers, cfg, out):
    out['sync'] = sync_vs_native.run(servers, scale=cfg['sync_scale'], transactions=cfg['transactions'],
                                     rate=cfg['rate'], seconds=cfg['lag_seconds'])
    sync_vs_native.print_results(out['sync'])


ENGINE_LINE = re.compile(r'^(pgdts \S+|native logical replication): (\d+) transactions .*?in ([\d.]+) s = (\d+) tx/s')


def section_sync_engine(_servers, cfg, out):
    """benchmarks/sync_bench.py as it is (the sync developer's benchmark of the decode/apply loop without the worker,
    and of a native subscription on the same backlog), on its own two clusters."""
    argv = [sys.executable, os.path.join(HERE, 'sync_bench.py'), '--transactions', str(cfg['transactions']),
            '--scale', str(cfg['sync_scale']), '--native', '--stream']
    say('sync_engine: %s' % ' '.join(os.path.basename(a) for a in argv[1:]))
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1800,
                              check=False)
        output = proc.stdout
        failed = proc.returncode != 0
    except subprocess.TimeoutExpired as exc:
        output, failed = (exc.output or ''), True
    result = {'lines': [line for line in output.splitlines() if line.strip()][-6:], 'failed': failed}
    for line in output.splitlines():
        match = ENGINE_LINE.match(line)
        if match:
            key = 'native' if match.group(1).startswith('native') else 'pgdts'
            result[key] = {'transactions': int(match.group(2)), 'seconds': float(match.group(3)),
                           'tps': int(match.group(4))}
        if line.startswith('tables equal on both sides:'):
            result['equal'] = line.split(':', 1)[1].strip() == 'True'
    if 'pgdts' in result and 'native' in result:
        result['ratio'] = result['pgdts']['seconds'] / result['native']['seconds']
    out['sync_engine'] = result
    print()
    print('Decode/apply loop alone (benchmarks/sync_bench.py --native, its own clusters)%s' % (
        ': FAILED' if failed else ''))
    for line in result['lines']:
        print('  ' + line)


def section_cutover(servers, cfg, out):
    out['cutover'] = cutover_bench.run(servers, scale=cfg['cutover_scale'], rate=cfg['rate'], settle=cfg['settle'])
    cutover_bench.print_results(out['cutover'])


def section_compare(servers, cfg, out):
    """compare_bench.py's data and measurements, on these servers."""
    import compare_bench
    from ansible_collections.pgdts.migration.plugins.module_utils import catalog, compare
    from ansible_collections.pgdts.migration.plugins.module_utils import connection as pgconn
    for cluster in (servers.src, servers.dst):
        common.drop_database(cluster, compare_bench.DB)
    say('compare: loading %d rows (compare_bench.py tables) on both servers' % cfg['compare_rows'])
    compare_bench.load(servers.src, servers.dst, cfg['compare_rows'])
    try:
        source = compare_bench.spec_of(servers.src)
        destination = compare_bench.spec_of(servers.dst)
        with pgconn.connect(source) as conn:
            tables = [t for t in catalog.load_tables(conn, compare_bench.DB) if t.name in compare_bench.TABLES]
        runs = 2 if cfg['runs'] > 1 else 1

        def best(func, *args, **kwargs):
            return min(compare_bench.timed(func, *args, **kwargs)[0] for _run in range(runs))

        read_src = best(compare_bench.read_all, servers.src)
        read_both = best(compare_bench.read_both_parallel, servers.src, servers.dst)
        checksum = best(compare.compare_tables, source, destination, compare_bench.DB, tables, jobs=4)
        count = best(compare.compare_tables, source, destination, compare_bench.DB, tables, mode='count', jobs=4)
        result = compare.compare_tables(source, destination, compare_bench.DB, tables, jobs=4)
        out['compare'] = {
            'rows': sum(r['source_rows'] or 0 for r in result), 'summary': compare.summarize(result),
            'size_bytes': servers.src.value('SELECT pg_database_size(%s)', (compare_bench.DB,)),
            'read_source_seconds': read_src, 'read_both_seconds': read_both, 'checksum_seconds': checksum,
            'count_seconds': count, 'ratio_checksum_to_read_both': checksum / read_both, 'best_of': runs,
        }
    finally:
        for cluster in (servers.src, servers.dst):
            common.drop_database(cluster, compare_bench.DB)
    item = out['compare']
    print()
    print('Data comparison (compare_bench.py data: %d rows, %.0f MB per server), best of %d' % (
        item['rows'], item['size_bytes'] / 1e6, runs))
    values = (read_src, read_both, checksum, item['ratio_checksum_to_read_both'], count)
    print('  read once, source alone %.2f s; both servers at the same time %.2f s; checksum compare %.2f s '
          '(ratio %.2f); count compare %.2f s' % values)


def section_verify(servers, cfg, out):
    """verify_bench.py's 2,000-table schema, on these servers."""
    import subprocess
    import verify_bench
    from ansible_collections.pgdts.migration.plugins.module_utils import checks
    dbname = 'verify_bench'
    total = cfg['verify_schemas'] * cfg['verify_tables']
    for cluster in (servers.src, servers.dst):
        common.drop_database(cluster, dbname)
    say('verify: building %d tables on the source' % total)
    servers.src.create_database(dbname)
    try:
        with servers.src.connect(dbname) as conn:
            conn.execute("SELECT set_config('bench.schemas', %s, false), set_config('bench.tables', %s, false)",
                         (str(cfg['verify_schemas']), str(cfg['verify_tables'])))
            conn.execute(verify_bench.BUILD)
            conn.execute('ANALYZE')
        kwargs = dict(source=common.Servers.spec(servers.src), destination=common.Servers.spec(servers.dst),
                      task='bench_verify', databases=[dbname])

        def timed():
            times, items = [], None
            for _run in range(cfg['verify_runs']):
                started = time.monotonic()
                items = checks.run_checks(**kwargs)
                times.append(time.monotonic() - started)
            return common.median(times), times, checks.summarize(items)

        empty = timed()
        path = os.path.join(servers.scratch, 'verify-schema.sql')
        servers.src.run_client('pg_dump', ['--schema-only', '--no-owner', '-f', path], dbname=dbname)
        servers.dst.create_database(dbname)
        servers.dst.run_client('psql', ['-q', '-v', 'ON_ERROR_STOP=1', '-f', path], dbname=dbname,
                               stdout=subprocess.DEVNULL)
        present = timed()
    finally:
        for cluster in (servers.src, servers.dst):
            common.drop_database(cluster, dbname)
    out['verify'] = {'tables': total, 'schemas': cfg['verify_schemas'], 'runs': cfg['verify_runs'],
                     'empty_destination': {'median': empty[0], 'runs': empty[1], 'summary': empty[2]},
                     'tables_on_destination': {'median': present[0], 'runs': present[1], 'summary': present[2]}}
    print()
    values = (total, cfg['verify_schemas'], cfg['verify_runs'])
    print('Verify (checks.run_checks) on %d tables in %d schemas, median of %d' % values)
    print('  empty destination %.2f s; every table already on the destination %.2f s (target < 10 s: %s)' % (
        empty[0], present[0], 'met' if max(empty[0], present[0]) < 10 else 'MISSED'))


RUNNERS = {'copy': section_copy, 'scaling': section_scaling, 'sync': section_sync,
           'sync_engine': section_sync_engine, 'cutover': section_cutover,
           'compare': section_compare, 'verify': section_verify}


# ---------------------------------------------------------------------------------------------------------------
# The summary table and docs/performance.md

def verdict(met):
    return '-' if met is None else ('met' if met else '**missed**')


def summary_rows(out):
    """[(figure, pgdts, peer, ratio, target, result)] for every figure that ran."""
    rows = []
    copy = out.get('copy')
    if copy:
        for key, label in (('pgbench', 'Full copy, pgbench scale %d (%.0f MB)' % (
                copy['pgbench']['scale'], copy['pgbench']['size_bytes'] / 1e6)),
                ('many_tables', 'Full copy, %d tables with indexes (%.0f MB)' % (
                    copy['many_tables']['tables'], copy['many_tables']['size_bytes'] / 1e6))):
            summary = copy[key]['summary']
            ours = summary[copy_bench.OURS]['median']
            fastest = summary['_fastest_peer']
            ratio = summary['_ratio_to_fastest']
            rows.append((label, common.fmt_s(ours), '%s (%s)' % (common.fmt_s(summary[fastest]['median']), fastest),
                         '%.2f' % ratio, '<= 0.8 of the fastest', verdict(ratio <= 0.8)))
    sync = out.get('sync')
    if sync:
        catch = sync['catch_up']
        rows.append(('Sync catch-up, %d-transaction pgbench backlog' % sync['backlog']['transactions'],
                     '%s (%.0f tx/s)' % (common.fmt_s(catch['ours_seconds']), catch['ours_tps']),
                     '%s (%.0f tx/s, native)' % (common.fmt_s(catch['native_seconds']), catch['native_tps']),
                     '%.2f' % catch['ratio'], '<= 1.0', verdict(catch['ratio'] <= 1.0)))
        ours, native = sync['lag']['pgdts'], sync['lag']['native']
        rows.append(('Sync lag p50 / p99 at %d tx/s' % ours['rate'],
                     '%.3f / %.3f s' % (ours['p50'], ours['p99']),
                     '%.3f / %.3f s (native)' % (native['p50'], native['p99']),
                     '%.2f (p99)' % (ours['p99'] / native['p99']) if native['p99'] else '-',
                     'p99 < 0.5 s', verdict(ours['p99'] < 0.5)))
    engine = out.get('sync_engine')
    if engine and engine.get('ratio'):
        rows.append(('Decode/apply loop alone (sync_bench.py), %d transactions' % engine['pgdts']['transactions'],
                     '%s (%d tx/s)' % (common.fmt_s(engine['pgdts']['seconds']), engine['pgdts']['tps']),
                     '%s (%d tx/s, native)' % (common.fmt_s(engine['native']['seconds']), engine['native']['tps']),
                     '%.2f' % engine['ratio'], '-', '-'))
    elif engine:
        rows.append(('Decode/apply loop alone (sync_bench.py)', 'failed: %s' % (engine['lines'][-1:] or ['?'])[0],
                     '-', '-', '-', '-'))
    cutover = out.get('cutover')
    if cutover:
        rows.append(('Cutover downtime under load (pgbench scale %d, %d tx/s)' % (cutover['scale'], cutover['rate']),
                     common.fmt_s(cutover['downtime_seconds']), '-', '-', '< 5 s',
                     verdict(cutover['downtime_seconds'] < 5)))
        rows.append(('Checksum comparison of the cutover data vs reading it once',
                     common.fmt_s(cutover['compare_seconds']), '%s (read both once)' % common.fmt_s(
                         cutover['read_both_seconds']), '%.2f' % cutover['compare_over_read'], '-', '-'))
    compare = out.get('compare')
    if compare:
        rows.append(('Checksum comparison, %d rows (compare_bench.py data)' % compare['rows'],
                     common.fmt_s(compare['checksum_seconds']),
                     '%s (read both once)' % common.fmt_s(compare['read_both_seconds']),
                     '%.2f' % compare['ratio_checksum_to_read_both'], '-', '-'))
    verify = out.get('verify')
    if verify:
        worst = max(verify['empty_destination']['median'], verify['tables_on_destination']['median'])
        rows.append(('Verify on %d tables (empty / populated destination)' % verify['tables'],
                     '%.2f / %.2f s' % (verify['empty_destination']['median'],
                                        verify['tables_on_destination']['median']),
                     '-', '-', '< 10 s', verdict(worst < 10)))
    scaling = out.get('scaling')
    if scaling and scaling['scales']:
        values = ('/'.join(str(i['scale']) for i in scaling['scales']), scaling['scales'][0]['jobs'])
        rows.append(('Copy scaling, scales %s (jobs %d)' % values,
                     ' / '.join(common.fmt_s(i['median']) for i in scaling['scales']), '-', '-', '-', '-'))
    if scaling and scaling['jobs']:
        values = (scaling['jobs'][0]['scale'], '/'.join(str(i['jobs']) for i in scaling['jobs']))
        rows.append(('Copy scaling, scale %d with jobs %s' % values,
                     ' / '.join(common.fmt_s(i['median']) for i in scaling['jobs']), '-', '-', '-', '-'))
    memory = memory_figures(out)
    if memory:
        peak = max(kb for _label, kb in memory)
        rows.append(('Worker peak memory (VmHWM), copy and sync', ', '.join(
            '%s %s' % (label, common.fmt_mb(kb)) for label, kb in memory), '-', '-', 'flat, < 200 MB',
            verdict(peak < 200 * 1024 and memory_flat(out))))
    return rows


def memory_figures(out):
    items = []
    scaling = out.get('scaling')
    if scaling:
        for item in scaling['scales']:
            if item['hwm_kb']:
                items.append(('copy s%d' % item['scale'], item['hwm_kb']))
    elif out.get('copy'):
        item = out['copy']['pgbench']['summary'][copy_bench.OURS]
        if item.get('hwm_kb'):
            items.append(('copy s%d' % out['copy']['pgbench']['scale'], item['hwm_kb']))
    sync = out.get('sync')
    if sync:
        if sync['catch_up'].get('worker_hwm_kb'):
            items.append(('sync catch-up', sync['catch_up']['worker_hwm_kb']))
        if sync['lag']['pgdts'].get('worker_hwm_kb'):
            items.append(('sync steady', sync['lag']['pgdts']['worker_hwm_kb']))
    return items


def memory_flat(out):
    """Flat in data size: the largest copy's peak within 25 % (and 20 MB) of the smallest's."""
    scaling = out.get('scaling')
    if not scaling or len(scaling['scales']) < 2:
        return True
    values = [i['hwm_kb'] for i in scaling['scales'] if i['hwm_kb']]
    return not values or max(values) - min(values) <= max(0.25 * min(values), 20 * 1024)


def print_summary(out):
    rows = summary_rows(out)
    widths = [max(len(str(r[i])) for r in rows + [HEADER]) for i in range(len(HEADER))]
    print()
    print('=' * 40 + ' pgdts benchmark summary ' + '=' * 40)
    for row in [HEADER] + rows:
        print('  '.join(str(cell).replace('**', '').ljust(widths[i]) for i, cell in enumerate(row)))


HEADER = ('figure', 'pgdts', 'peer / reference', 'ratio', 'target', 'result')


def md_cell(value):
    return str(value).replace('|', '\\|')


def md_table(header, rows):
    lines = ['| ' + ' | '.join(md_cell(h) for h in header) + ' |', '|' + '|'.join(' --- ' for _h in header) + '|']
    for row in rows:
        lines.append('| ' + ' | '.join(md_cell(c) for c in row) + ' |')
    return '\n'.join(lines)


def write_doc(out, path):
    m = out['machine']
    lines = ['# Performance', '',
             'Written by `make bench` (`benchmarks/bench.py`) on %s; the whole run took %.1f minutes. Every figure '
             'comes from that one run, on the same two servers and data. The figures are what they are: no target '
             'is a test assertion, and a missed target is written down as missed.' % (
                 out['finished_at'], out['total_seconds'] / 60.0), '']
    if out.get('quick'):
        lines += ['**This is a `--quick` run on toy data: its figures say nothing about performance.**', '']
    lines += ['## Summary', '', md_table(HEADER, summary_rows(out)), '',
              'Ratios are pgdts / peer: below 1 pgdts is faster.', '']
    lines += ['## Machine', '', md_table(('what', 'value'), [
        ('CPUs (nproc)', m['nproc']), ('CPU model', m['cpu_model']), ('memory', '%s GiB' % m['memory_gib']),
        ('OS, kernel', '%s, %s' % (m['os'], m['kernel'])), ('PostgreSQL', m.get('postgresql', '-')),
        ('client programs', m['pg_dump']), ('pgcopydb', m['pgcopydb']),
        ('Python, psycopg', '%s, %s' % (m['python'], m['psycopg'])),
        ('pgdts code measured', engine_text(out)),
        ('load average at start / end', '%s / %s' % (out['load_start'], out['load_end'])),
        ('load average range seen during the run (1 min)', '%.2f - %.2f' % tuple(out['load_range'])),
    ]), '']
    lines += ['The machine is shared: other work ran during the benchmark when the load average exceeds the number '
              'of CPUs, which makes every figure slower and noisier (the methods run round-robin so that such load '
              'spreads over all of them).', '']
    settings = m.get('settings') or {}
    lines += ['Both servers are throw-away clusters of `tests/harness/cluster.py` on 127.0.0.1 (source and '
              'destination on the same machine), with these settings:', '', md_table(('setting', 'value'), sorted(
                  (k, '`%s`' % v) for k, v in settings.items() if k not in ('listen_addresses',))), '',
              '`fsync = off` and `full_page_writes = off` take the shared disk out of the figures; they apply to '
              'every method alike.', '']
    lines += method_section(out)
    lines += detail_sections(out)
    lines += findings(out)
    lines += ['## Raw data', '', 'The run also leaves every number in `.tmp/bench/results.json`.', '']
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as handle:
        handle.write('\n'.join(lines).rstrip() + '\n')


def method_section(out):
    cfg = out['config']
    return ['## How each figure is measured', '',
            '- **pgdts full copy** is what `pg_dts_migrate` does with `incremental: false`, driven through the engine '
            'the module calls (`task_control.TaskControl.ensure()`: the pre-migration checks, the task row, the real '
            'detached worker), timed from that call until the task is `finished`: checks, slot with exported '
            'snapshot, schema (pg_dump/pg_restore pre-data), parallel COPY with `jobs: %d` during which each table\'s '
            'indexes and key constraints are built and the table is analyzed as soon as its data is in, then the '
            'rest of the post-data (foreign keys, triggers, ...), sequences, ANALYZE of what is left, clean-up. The '
            'destination database is created by the task.' % cfg['jobs'],
            '- **pg_dump | psql**: `createdb`, then `pg_dump -d SRC | psql -X -v ON_ERROR_STOP=1 -d DST`.',
            '- **pg_dump -Fd -j2 + pg_restore -j2**: `createdb`, `pg_dump -Fd -j 2` to a local directory, '
            '`pg_restore -j 2 --exit-on-error`; the time covers both.',
            '- **pgcopydb clone**: `pgcopydb clone --table-jobs %d --index-jobs %d --no-owner --no-acl` into a '
            'created database (its defaults otherwise; it also runs VACUUM ANALYZE).' % (cfg['jobs'], cfg['jobs']),
            '- Every copy goes into a freshly dropped destination database (checkpoint after the drop); the methods '
            'run round-robin, %d round(s), and the median is reported. After each run the destination is checked to '
            'hold the same tables, indexes, sequences and row count as the source. pg_dump/pg_restore do not '
            'ANALYZE; pgdts and pgcopydb do.' % cfg['runs'],
            '- **Sync catch-up**: one source database (pgbench scale %d plus a one-row heartbeat table). Native: '
            '`CREATE PUBLICATION ... FOR ALL TABLES`, a copy of the idle source in a second destination database, '
            '`CREATE SUBSCRIPTION ... WITH (copy_data = false)`, disabled. pgdts: a task with incremental sync, '
            'synced, then its worker stopped. pgbench writes the backlog (`-c 4 -j 2 -t`), a marker row is '
            'committed after it; pgdts is restarted the way a re-run of pg_dts_migrate resumes a task and timed until '
            'the marker is visible on its destination; then the subscription is enabled and timed the same way. One '
            'run each (the backlog alone takes minutes to write). Table totals are compared afterwards.'
            % cfg['sync_scale'],
            '- **Lag under steady load**: pgbench `-c 4 -j 2 --rate %d` for %d s; a heartbeat row on the source gets '
            '`clock_timestamp()` every 100 ms; the destination is read every 50-150 ms (jittered) and the lag sample '
            'is the age of the newest visible heartbeat. A sample includes 0-100 ms of heartbeat period (50 ms on '
            'average) on top of the real delay, for both. pgdts runs with the subscription disabled; native with '
            "pgdts's worker stopped." % (cfg['rate'], cfg['lag_seconds']),
            '- **Cutover**: a synced task on pgbench scale %d, pgbench `--rate %d` for %.0f s, then what '
            "pg_dts_finish does with its defaults (fence read_only, catch up, sequences, checksum comparison, end of "
            "the sync); the downtime is the module's `downtime_seconds`." % (
                cfg['cutover_scale'], cfg['rate'], cfg['settle']),
            '- **Comparison**: `compare.compare_tables()` (checksum mode, jobs 4) next to reading every table once '
            'with COPY TO STDOUT on both servers at the same time, on the data of `compare_bench.py` and on the '
            'cutover data.',
            '- **Verify**: `checks.run_checks()` on the 2,000-table schema of `verify_bench.py` (10 schemas, keys, '
            'indexes, foreign keys, triggers), with an empty destination and with every table already there.',
            '- **Memory**: the worker process is sampled every 100 ms from `/proc/<pid>/status` (VmHWM, the '
            "kernel's peak resident size), during every pgdts copy and during the sync catch-up and steady load.",
            '']


def detail_sections(out):
    lines = []
    copy = out.get('copy')
    if copy:
        lines += ['## Full copy', '']
        for key, title in (('pgbench', 'pgbench scale %d, %.0f MB on the source' % (
                copy['pgbench']['scale'], copy['pgbench']['size_bytes'] / 1e6)),
                ('many_tables', '%d tables with a primary key, two more indexes and %d rows each, %.0f MB' % (
                    copy['many_tables']['tables'], copy['many_tables']['rows_per_table'],
                    copy['many_tables']['size_bytes'] / 1e6))):
            summary = copy[key]['summary']
            ours = summary[copy_bench.OURS]['median']
            rows = []
            for method in copy_bench.METHODS:
                if method in summary:
                    item = summary[method]
                    rows.append((method, common.fmt_s(item['median']),
                                 '-' if method == copy_bench.OURS else '%.2f' % (ours / item['median']),
                                 ', '.join('%.2f' % t for t in item['runs'])))
            lines += ['### %s' % title, '', md_table(('method', 'median', 'pgdts / method', 'runs (s)'), rows), '']
            lines += ['Where the pgdts time goes (median seconds of the phases, from the worker log):', '']
            lines += [md_table(('phase', 'seconds', 'share'), breakdown_rows(summary[copy_bench.OURS]))]
            peers = [m for m in copy_bench.METHODS if m in summary and summary[m].get('breakdown')
                     and m != copy_bench.OURS]
            for method in peers:
                parts = ', '.join('%s %.2f s' % kv for kv in summary[method]['breakdown'].items())
                lines += ['', '%s: %s.' % (method, parts)]
            lines += ['', observations(summary, copy['pgbench' if key == 'pgbench' else 'many_tables']), '']
    scaling = out.get('scaling')
    if scaling:
        lines += ['## Scaling of the pgdts full copy', '', scaling['runs_note'] + '.', '']
        rows = [('pgbench scale %d' % i['scale'], i['jobs'], '%.0f MB' % (i['size_bytes'] / 1e6),
                 common.fmt_s(i['median']), '%.1f' % (i['median'] / (i['size_bytes'] / 1e9)), phase(i, 'copy'),
                 phase(i, 'index_sequences_analyze'), common.fmt_mb(i['hwm_kb']),
                 ', '.join('%.2f' % t for t in i['runs'])) for i in scaling['scales']]
        lines += [md_table(('data', 'jobs', 'size', 'median', 's per GB', 'COPY phase', 'post-data phase',
                            'worker VmHWM', 'runs (s)'), rows), '']
        if scaling['jobs']:
            rows = [('pgbench scale %d' % i['scale'], i['jobs'], common.fmt_s(i['median']),
                     '%.2f' % (scaling['jobs'][0]['median'] / i['median']), phase(i, 'copy'),
                     phase(i, 'index_sequences_analyze'), common.fmt_mb(i['hwm_kb']),
                     ', '.join('%.2f' % t for t in i['runs'])) for i in scaling['jobs']]
            lines += [md_table(('data', 'jobs', 'median', 'speed-up vs jobs %d' % scaling['jobs'][0]['jobs'],
                                'COPY phase', 'post-data phase', 'worker VmHWM', 'runs (s)'), rows), '']
            lines += [jobs_observation(out), '']
    sync = out.get('sync')
    if sync:
        catch, backlog = sync['catch_up'], sync['backlog']
        lines += ['## Incremental sync', '',
                  'pgbench scale %d (%.0f MB). Backlog: %d transactions, %.0f MB of WAL, written in %.1f s (%.0f tx/s '
                  'on the source).' % (sync['scale'], sync['size_bytes'] / 1e6, backlog['transactions'],
                                       backlog['wal_bytes'] / 1e6, backlog['produce_seconds'], backlog['source_tps']),
                  '', md_table(('', 'pgdts', 'native logical replication', 'ratio'), [
                      ('catch-up time', common.fmt_s(catch['ours_seconds']), common.fmt_s(catch['native_seconds']),
                       '%.2f' % catch['ratio']),
                      ('transactions per second', '%.0f' % catch['ours_tps'], '%.0f' % catch['native_tps'],
                       '%.2f' % (catch['ours_tps'] / catch['native_tps'])),
                      ('data equal to the source after catch-up', catch['ours_equal'], catch['native_equal'], ''),
                  ]), '']
        rows = []
        for which in ('pgdts', 'native'):
            item = sync['lag'][which]
            rows.append((which, item['rate'], '%.0f' % (item['source_tps'] or 0), item['samples'],
                         '%.3f' % item['p50'], '%.3f' % item['p90'], '%.3f' % item['p99'], '%.3f' % item['max']))
        lines += ['Lag under steady load (seconds):', '',
                  md_table(('', 'rate', 'source tx/s', 'samples', 'p50', 'p90', 'p99', 'max'), rows), '']
    engine = out.get('sync_engine')
    if engine:
        lines += ['### The decode/apply loop alone', '',
                  '`benchmarks/sync_bench.py --transactions %d --scale %d --native --stream` (the sync developer\'s '
                  'benchmark, run as it is on its own two clusters): `decoding.StreamReader` and `apply.Applier` in one '
                  'process without the worker around them, and a native subscription on the same backlog. Its last '
                  'lines:'
                  % (out['config']['transactions'], out['config']['sync_scale']), '', '```']
        lines += engine['lines'] + ['```', '']
        if engine.get('pgdts') and sync and sync.get('catch_up'):
            lines += ['The worker caught up the %d-transaction backlog at %.0f tx/s; the loop alone did %d tx/s on a '
                      'backlog of the same size (its own, written the same way). The loop alone applies one batch '
                      'after reading it; the worker reads the next batch and builds its statements while the previous '
                      'one is applied, and it also starts its process, loads the table metadata and writes its '
                      'progress to the state database.' % (
                          sync['backlog']['transactions'], sync['catch_up']['ours_tps'], engine['pgdts']['tps']), '']
    cutover = out.get('cutover')
    if cutover:
        lines += ['## Cutover', '',
                  'pgbench scale %d (%.0f MB) under pgbench `--rate %d`: downtime **%.2f s** (the finish call took %.2f '
                  's); lag just before the finish %s s; %d writer session(s) ended by the fence; pgbench ended by the '
                  'fence: %s; comparison: %s.' % (
                      cutover['scale'], cutover['size_bytes'] / 1e6, cutover['rate'], cutover['downtime_seconds'],
                      cutover['finish_wall_seconds'], cutover['lag_before']['seconds'],
                      cutover['terminated_sessions'], cutover['load_ended_by_fence'],
                      cutover['comparison_summary']), '',
                  finish_phases_text(cutover),
                  'On the same data afterwards: the checksum comparison alone takes %.2f s, reading every table once '
                  'on both servers at the same time %.2f s (%.0f MB per server), ratio %.2f. The comparison is thus '
                  'about %.0f %% of the downtime.' % (
                      cutover['compare_seconds'], cutover['read_both_seconds'], cutover['read_bytes'] / 1e6,
                      cutover['compare_over_read'],
                      100.0 * cutover['compare_seconds'] / cutover['downtime_seconds']
                      if cutover['downtime_seconds'] else 0), '']
    compare = out.get('compare')
    if compare:
        lines += ['## Data comparison', '',
                  'Tables of `compare_bench.py` (%d rows, %.0f MB per server), best of %d:' % (
                      compare['rows'], compare['size_bytes'] / 1e6, compare['best_of']), '',
                  md_table(('measurement', 'seconds'), [
                      ('read every table once, source alone', '%.2f' % compare['read_source_seconds']),
                      ('read once, both servers at the same time', '%.2f' % compare['read_both_seconds']),
                      ('compare, checksum mode (jobs 4)', '%.2f' % compare['checksum_seconds']),
                      ('compare, count mode', '%.2f' % compare['count_seconds']),
                  ]), '', 'Checksum comparison / reading both once: %.2f. Result: %s.' % (
                      compare['ratio_checksum_to_read_both'], compare['summary']), '']
    verify = out.get('verify')
    if verify:
        lines += ['## Verify', '',
                  '`checks.run_checks()` on %d tables in %d schemas, median of %d: %.2f s with an empty destination '
                  '(runs %s), %.2f s with every table already on the destination (runs %s). Target < 10 s.' % (
                      verify['tables'], verify['schemas'], verify['runs'], verify['empty_destination']['median'],
                      ', '.join('%.2f' % t for t in verify['empty_destination']['runs']),
                      verify['tables_on_destination']['median'],
                      ', '.join('%.2f' % t for t in verify['tables_on_destination']['runs'])), '']
    memory = memory_figures(out)
    if memory:
        lines += ['## Worker memory', '', md_table(('when', 'worker peak resident memory (VmHWM)'), [
            (label, common.fmt_mb(kb)) for label, kb in memory]), '']
        if out.get('copy'):
            tree = out['copy']['pgbench']['summary'][copy_bench.OURS].get('tree_rss_kb')
            lines += ['During the pgbench copy the worker and its children (psql readers of large items, pg_restore) '
                      'peaked at %s resident together.' % common.fmt_mb(tree), '']
    return lines


def phase(item, key):
    value = (item.get('breakdown') or {}).get(key)
    return '-' if value is None else '%.2f s' % value


def jobs_observation(out):
    """What the jobs figure says, next to the fastest peer of the pgbench comparison."""
    scaling = out['scaling']
    best = min(scaling['jobs'], key=lambda i: i['median'])
    text = ('The fastest pgdts setting here is jobs %d (%s). This machine has %d CPUs for both servers, the worker '
            'and the readers, so more jobs than CPUs cannot add CPU, only contention.' % (
                best['jobs'], common.fmt_s(best['median']), out['machine']['nproc']))
    copy = out.get('copy')
    if copy and copy['pgbench']['scale'] == best['scale']:
        summary = copy['pgbench']['summary']
        fastest = summary['_fastest_peer']
        text += ' With jobs %d pgdts takes %.2f of the time of the fastest peer (%s, %s).' % (
            best['jobs'], best['median'] / summary[fastest]['median'], fastest,
            common.fmt_s(summary[fastest]['median']))
    return text


def finish_phases_text(cutover):
    module = cutover.get('module_phases')
    if module:
        return ('Phases of the finish as pg_dts_finish reports them (`phase_seconds`): %s. All of them are inside '
                'the downtime.\n' % ', '.join('%s %.2f s' % (k.replace('_', ' '), v) for k, v in module.items()))
    phases = cutover.get('phases')
    if not phases:
        return 'The phases of the finish could not be told apart (the task row was not seen in between).\n'
    return ('Phases of the finish, from the task row watched every 20 ms: fencing the source (read-only, writer '
            'sessions ended) %.2f s; the destination catching up, sequences and the checksum comparison %.2f s; '
            'stopping the worker and dropping slot, publication and origin %.2f s. All three are inside the '
            'downtime.\n' % (phases['fence'], phases['catch_up_sequences_compare'], phases['stop_worker_and_release']))


def engine_text(out):
    engine = out.get('engine')
    if not engine:
        return 'unknown'
    text = 'commit %s' % engine['commit']
    if engine['uncommitted_plugin_files']:
        text += ' plus uncommitted changes in %d file(s) under plugins/ (work in progress)' % (
            engine['uncommitted_plugin_files'])
    return text


def findings(out):
    """Where pgdts loses time in this run, and what would help: each item only when the figures show it."""
    items = []
    copy = out.get('copy')
    if copy:
        for key, label in (('pgbench', 'pgbench copy'), ('many_tables', 'many-tables copy')):
            summary = copy[key]['summary']
            ours = summary[copy_bench.OURS]
            b = ours['breakdown']
            if summary['_ratio_to_fastest'] <= 0.8:
                continue
            if (b.get('index_sequences_analyze') or 0) > 0.15 * ours['median']:
                items.append('%s: what is left of the post-data after the last table (foreign keys, triggers, '
                             'sequences, ANALYZE of tables not analyzed during the copy) takes %.2f s (%.0f %%).' % (
                                 label, b['index_sequences_analyze'],
                                 100.0 * b['index_sequences_analyze'] / ours['median']))
            if (b.get('analyze_alone') or 0) > 0.05 * ours['median']:
                items.append('%s: ANALYZE, which pg_dump and pg_restore do not run, takes %.2f s over the whole '
                             'database when timed alone afterwards; the task runs it per table during the copy.' % (
                                 label, b['analyze_alone']))
            fixed = (b.get('checks_and_spawn') or 0) + (b.get('slot') or 0) + (b.get('cleanup') or 0)
            if fixed > 0.05 * ours['median']:
                share = 100.0 * fixed / ours['median']
                items.append('%s: fixed costs no peer pays (pre-migration checks, worker start, slot with exported '
                             'snapshot, clean-up) are %.2f s (%.0f %%).' % (label, fixed, share))
    if copy:
        rates = {}
        for key in ('pgbench', 'many_tables'):
            seconds = copy[key]['summary'][copy_bench.OURS]['breakdown'].get('copy')
            if seconds:
                rates[key] = copy[key]['size_bytes'] / 1e6 / seconds
        if len(rates) == 2 and rates['many_tables'] < 0.6 * rates['pgbench']:
            items.append('many-tables copy: the COPY phase moves %.0f MB/s against %.0f MB/s for the pgbench tables: '
                         'per-table costs dominate (a destination transaction per table, and each table\'s index '
                         'builds and ANALYZE, which run inside this phase).' % (
                             rates['many_tables'], rates['pgbench']))
    scaling = out.get('scaling')
    if scaling and scaling['jobs']:
        best = min(scaling['jobs'], key=lambda i: i['median'])
        default = [i for i in scaling['jobs'] if i['jobs'] == out['config']['jobs']]
        if default and best['jobs'] < default[0]['jobs'] and best['median'] < 0.95 * default[0]['median']:
            slow = default[0]
            items.append('jobs: on this %d-CPU machine jobs %d copied pgbench scale %d in %s (COPY phase %s, post-data '
                         '%s), the default jobs %d in %s (%s, %s). More jobs than CPUs cannot add CPU, only '
                         'contention between the sessions of both servers and the readers; the gap is small against '
                         'the run-to-run noise of this shared machine.' % (
                             out['machine']['nproc'], best['jobs'], best['scale'], common.fmt_s(best['median']),
                             phase(best, 'copy'), phase(best, 'index_sequences_analyze'), slow['jobs'],
                             common.fmt_s(slow['median']), phase(slow, 'copy'),
                             phase(slow, 'index_sequences_analyze')))
    sync = out.get('sync')
    if sync:
        catch = sync['catch_up']
        engine = out.get('sync_engine') or {}
        if catch['ratio'] > 1.0:
            text = ('sync catch-up: the worker needs %.2f of the time of native replication for the backlog.' %
                    catch['ratio'])
            if engine.get('pgdts'):
                text += (' The decode/apply loop alone (sync_bench.py) took %s for a backlog of the same size; its '
                         'own native figure waits for the slot\'s confirmed_flush_lsn, which a subscriber reports '
                         'only every wal_receiver_status_interval or at keepalives, so it overstates native\'s time '
                         '(here native made its last transaction visible in %s).' % (
                             common.fmt_s(engine['pgdts']['seconds']), common.fmt_s(catch['native_seconds'])))
            items.append(text)
        lag = sync['lag']['pgdts']
        if lag['p99'] > 2 * sync['lag']['native']['p99']:
            items.append('lag: p99 %.3f s against native\'s %.3f s. Each batch is one destination transaction whose '
                         'commit is flushed before the slot is confirmed; the worker also writes its progress to the '
                         'state database after each batch.' % (lag['p99'], sync['lag']['native']['p99']))
    cutover = out.get('cutover')
    if cutover and cutover.get('phases'):
        phases = dict(cutover['phases'])
        module = cutover.get('module_phases') or {}
        if 'stop_worker' in module:
            phases['stop_worker_and_release'] = module['stop_worker'] + module.get('cleanup', 0.0)
        if phases['stop_worker_and_release'] > 0.3 * cutover['downtime_seconds']:
            items.append('cutover: %.2f s of the %.2f s downtime is stopping the worker (asked through its request, '
                         'terminated when it has not stopped within a grace period) and dropping its objects, after '
                         'the destination was complete and compared. The worker stops between batches and then '
                         'closes its replication stream; dropping the objects without waiting for the worker would '
                         'take this out of the downtime.' % (phases['stop_worker_and_release'],
                                                             cutover['downtime_seconds']))
    if not items:
        return []
    return ['## Where pgdts loses time in this run', ''] + ['- ' + item for item in items] + ['']


PHASES = (('checks_and_spawn', 'pre-migration checks and worker start (in pg_dts_migrate)'),
          ('slot', 'task set-up, publication, slot with exported snapshot'),
          ('schema', 'schema: pg_dump --schema-only and pg_restore pre-data'),
          ('copy', 'data: parallel COPY, each table\'s indexes and ANALYZE as soon as its data is in'),
          ('index_sequences_analyze', 'the rest of the post-data (foreign keys, triggers, ...), sequences, ANALYZE of '
                                      'what is left'),
          ('cleanup', 'drop slot and publication, finish the task'))


def breakdown_rows(item):
    total = item['median']
    rows = []
    for key, label in PHASES:
        value = item['breakdown'].get(key)
        if value is not None:
            rows.append((label, '%.2f' % value, '%.0f %%' % (100.0 * value / total)))
    if item['breakdown'].get('analyze_alone') is not None:
        rows.append(('(ANALYZE of the whole database, timed again alone afterwards)',
                     '%.2f' % item['breakdown']['analyze_alone'],
                     '%.0f %%' % (100.0 * item['breakdown']['analyze_alone'] / total)))
    accounted = sum(item['breakdown'].get(k) or 0 for k, _l in PHASES)
    rows.append(('polling granularity and the rest', '%.2f' % max(0.0, total - accounted),
                 '%.0f %%' % (100.0 * max(0.0, total - accounted) / total)))
    rows.append(('total (median)', '%.2f' % total, '100 %'))
    return rows


def observations(summary, data):
    """A few sentences computed from the figures: where pgdts loses against the fastest peer."""
    ours = summary[copy_bench.OURS]
    fastest = summary['_fastest_peer']
    ratio = summary['_ratio_to_fastest']
    parts = []
    if ratio > 0.8:
        parts.append('Target missed: pgdts takes %.2f of the time of %s (target 0.8).' % (ratio, fastest))
    else:
        parts.append('Target met: pgdts takes %.2f of the time of %s.' % (ratio, fastest))
    b = ours['breakdown']
    fixed = (b.get('checks_and_spawn') or 0) + (b.get('slot') or 0) + (b.get('cleanup') or 0)
    parts.append('Fixed costs that no peer pays (checks, worker start, slot, clean-up) come to %.2f s (%.0f %%).' % (
        fixed, 100.0 * fixed / ours['median']))
    if b.get('analyze_alone'):
        parts.append('ANALYZE, which pg_dump and pg_restore skip, is about %.2f s.' % b['analyze_alone'])
    without = ours['median'] - fixed - (b.get('analyze_alone') or 0)
    parts.append('Without both, pgdts would take about %.2f s, %.2f of %s.' % (
        without, without / summary[fastest]['median'], fastest))
    text = ' '.join(parts)
    low = data.get('floor')
    if low:
        peer = summary[fastest]['median']
        text += ('\n\nThe floor of this copy, measured right after it on the largest table alone (%s, 99 %% of the '
                 'data): one COPY stream from the source straight into an empty table on the destination (psql | psql, '
                 'binary, FREEZE; no other table, no worker) %.2f s, its primary key %.2f s, its ANALYZE %.2f s; '
                 'together %.2f s, %.2f of %s, against a target of 0.8 = %.2f s. Without ANALYZE the floor is %.2f '
                 '(%.2f s). The same rows in two parallel streams (halves by heap block, psql | psql each) took %.2f '
                 's: on 2 CPUs the source, the destination and the clients already share both CPUs during one '
                 'stream.' % (
                     low['table'], low['copy'], low['index'], low['analyze'], low['total'], low['total'] / peer,
                     fastest, 0.8 * peer, (low['copy'] + low['index']) / peer, low['copy'] + low['index'],
                     low['copy_2_streams']))
        if low.get('pairs'):
            spare = ['%+.2f s' % (0.8 * p['peer'] - p['floor']) for p in low['pairs']]
            text += (' Each floor run was followed at once by a pg_dump | psql copy of the whole database, so that '
                     'both meet the same load: floor / pg_dump | psql = %s, median %.2f. A copy at 0.8 of pg_dump | '
                     'psql would leave %s beyond the floor for everything else a task does (checks, worker start, '
                     'slot, schema, the other tables, sequences, clean-up: %.2f s in the pgdts runs above).' % (
                         ', '.join('%.2f s / %.2f s = %.2f' % (p['floor'], p['peer'], p['ratio'])
                                   for p in low['pairs']), low['ratio'], ', '.join(spare),
                         ours['median'] - (b.get('copy') or 0)))
    return text


# ---------------------------------------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true', help='small data, one run: try the machinery')
    parser.add_argument('--only', default=','.join(SECTIONS), help='comma-separated sections (default: all)')
    parser.add_argument('--write', action='store_true', help='write docs/performance.md even with --quick/--only')
    parser.add_argument('--no-write', action='store_true', help='do not write docs/performance.md')
    parser.add_argument('--doc', default=DOC, help='where to write the report (default docs/performance.md)')
    parser.add_argument('--keep', action='store_true', help='leave the clusters running')
    parser.add_argument('--report-only', action='store_true',
                        help='write docs/performance.md again from .tmp/bench/results.json, without running anything')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        help='override a figure parameter, e.g. --set runs=1 --set scales=10,50 (see FULL)')
    args = parser.parse_args(argv)
    if args.report_only:
        with open(RAW) as handle:
            out = json.load(handle)
        print_summary(out)
        write_doc(out, args.doc)
        print('wrote %s from %s' % (os.path.relpath(args.doc, common.REPO), os.path.relpath(RAW, common.REPO)))
        return 0
    cfg = dict(QUICK if args.quick else FULL)
    for item in args.set:
        key, _sep, value = item.partition('=')
        if key not in cfg:
            parser.error('unknown parameter %s; choose from %s' % (key, ', '.join(sorted(cfg))))
        default = cfg[key]
        if isinstance(default, tuple):
            cfg[key] = tuple(int(v) for v in value.split(','))
        else:
            cfg[key] = type(default)(value)
    only = [s.strip() for s in args.only.split(',') if s.strip()]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        parser.error('unknown section(s) %s; choose from %s' % (', '.join(unknown), ', '.join(SECTIONS)))
    started = time.monotonic()
    out = {'config': cfg, 'quick': args.quick, 'sections': only, 'load_start': common.loadavg_text()}
    loads = [os.getloadavg()[0]]
    say('pgdts benchmark: sections %s%s (load %s)' % (', '.join(only), ' (quick)' if args.quick else '', out['load_start']))
    with common.Servers(keep=args.keep) as servers:
        out['machine'] = common.machine_description(servers)
        out['engine'] = common.engine_description()
        for section in SECTIONS:
            if section not in only:
                continue
            section_started = time.monotonic()
            RUNNERS[section](servers, cfg, out)
            loads.append(os.getloadavg()[0])
            out.setdefault('section_seconds', {})[section] = time.monotonic() - section_started
            say('section %s done in %.0f s' % (section, out['section_seconds'][section]))
    out['total_seconds'] = time.monotonic() - started
    out['load_end'] = common.loadavg_text()
    out['load_range'] = (min(loads), max(loads))
    out['finished_at'] = datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')
    for key in [k for k in out if k.startswith('_')]:
        out.pop(key)
    print_summary(out)
    print()
    print('total %.0f s (%s)' % (out['total_seconds'], ', '.join(
        '%s %.0f s' % kv for kv in out.get('section_seconds', {}).items())))
    full = not args.quick and not args.set and set(only) == set(SECTIONS)
    raw = RAW if full else RAW_PARTIAL
    os.makedirs(os.path.dirname(raw), exist_ok=True)
    common.write_json(raw, out)
    if not args.no_write and (full or args.write):
        write_doc(out, args.doc)
        print('wrote %s and %s' % (os.path.relpath(args.doc, common.REPO), os.path.relpath(raw, common.REPO)))
    else:
        print('wrote %s (docs/performance.md is written by a full run, or with --write)'
              % os.path.relpath(raw, common.REPO))
    return 0


if __name__ == '__main__':
    sys.exit(main())
