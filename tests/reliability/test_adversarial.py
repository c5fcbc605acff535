"""The adversarial suite of issue 15: every divergence class at once, under load, with a kill -9 of the worker.

One whole-database task over a source database that holds, side by side: the pgbench tables (pgbench_history has no
key, so the task runs with replica_identity: full) and the ledger tables of tests/harness/faults.py, a matview over a
matview, a sequence in another schema used by the default of a table whose name needs quoting (quotes, spaces,
capitals, non-ASCII, % and =), a trigger that writes an audit row, large objects referenced from a table, an
UNLOGGED table, a partitioned table, and a few indexes (expression, partial, unique). While it syncs, under a real
`pgbench -c 2 --rate 100` and the Writer of tests/harness/faults.py, rounds of changes hit the tricky objects
(unlogged rows, large objects created, rewritten and unlinked, matview base rows changed and the matviews refreshed
on the source, the sequence advanced, a partition attached and rows moved into it), before the kill, while the
worker is dead, and after the resume. The worker is killed with SIGKILL once, the play is run again (it resumes),
pg_dts_finish runs through the real module with the load still running (the fence must stop it), and the test's own
judge reads both catalogs: assert_exactly_once (assert_same_database + ledger/counters + pgbench sums).

Every choice is drawn from random.Random(seed) and the seed is in the test id; this replays the same kill moment and
the same rounds of changes (the load itself is timing-dependent):

    pytest "tests/reliability/test_adversarial.py::test_everything_at_once_under_load_with_a_kill[seed=2-pgoutput]" -s
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import tempfile
import time

import pytest
from psycopg import sql

from tests.harness.faults import (
    FINISH, MIGRATE, TaskPoller, assert_exactly_once, create_load_database, finish_args, judged_scenario,
    kill_worker, task_args, task_origins, task_slots, wait_worker, worker_pid, writing,
)

QSCHEMA = 'Mixed Ünï "Schema"'
QTABLE = 'Orders "Ö" of Big Co 100% = ok'
QCOLUMN = 'Note Ä "x" =%s'

TRICKY = sql.SQL(r'''
CREATE SCHEMA ids;
CREATE SEQUENCE ids.order_seq START 5000;
CREATE SCHEMA {schema};
CREATE TABLE {table} (id bigint PRIMARY KEY DEFAULT nextval('ids.order_seq'), {column} text NOT NULL,
                      amount numeric(12,2) NOT NULL DEFAULT 0);
CREATE INDEX {idx_note} ON {table} (lower({column}));
CREATE INDEX {idx_big} ON {table} (amount) WHERE amount > 500;
CREATE TABLE public.order_audit (id serial PRIMARY KEY, order_id bigint NOT NULL, op text NOT NULL);
CREATE FUNCTION public.audit_order() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN INSERT INTO public.order_audit (order_id, op) VALUES (NEW.id, TG_OP); RETURN NEW; END$$;
CREATE TRIGGER order_audit AFTER INSERT OR UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION public.audit_order();
INSERT INTO {table} ({column}, amount) SELECT 'n' || g, g FROM generate_series(1, 1000) g;

CREATE TABLE public.sales (id int PRIMARY KEY, region text NOT NULL, amount numeric NOT NULL);
INSERT INTO public.sales SELECT g, 'r' || (g % 7), g * 1.5 FROM generate_series(1, 3000) g;
CREATE MATERIALIZED VIEW public.region_totals AS
  SELECT region, sum(amount) AS total, count(*) AS n FROM public.sales GROUP BY region;
CREATE UNIQUE INDEX region_totals_region ON public.region_totals (region);
CREATE MATERIALIZED VIEW public.a_grand AS SELECT sum(total) AS grand, sum(n) AS n FROM public.region_totals;

CREATE TABLE public.docs (id int PRIMARY KEY, title text, content oid);
INSERT INTO public.docs SELECT g, 'doc ' || g, lo_from_bytea(91000 + g, convert_to(repeat('d' || g, 500 * g), 'UTF8'))
  FROM generate_series(1, 8) g;

CREATE UNLOGGED TABLE public.scratch (id int PRIMARY KEY, v text NOT NULL);
CREATE INDEX scratch_v_idx ON public.scratch (v);
INSERT INTO public.scratch SELECT g, 's' || g FROM generate_series(1, 500) g;

CREATE TABLE public.meas (id int NOT NULL, k int NOT NULL, v text, PRIMARY KEY (id, k)) PARTITION BY RANGE (k);
CREATE TABLE public.meas_p1 PARTITION OF public.meas FOR VALUES FROM (0) TO (100);
CREATE TABLE public.meas_p2 PARTITION OF public.meas FOR VALUES FROM (100) TO (200);
CREATE TABLE public.meas_p3 PARTITION OF public.meas FOR VALUES FROM (200) TO (300);
CREATE INDEX meas_v_idx ON public.meas (v);
INSERT INTO public.meas SELECT g, (g % 3) * 100 + g % 100, 'v' || g FROM generate_series(1, 900) g;
''').format(schema=sql.Identifier(QSCHEMA), table=sql.Identifier(QSCHEMA, QTABLE), column=sql.Identifier(QCOLUMN),
            idx_note=sql.Identifier('Idx "lower" Ü'), idx_big=sql.Identifier('orders_big_idx'))

P4 = 'CREATE TABLE public.meas_p4 PARTITION OF public.meas FOR VALUES FROM (300) TO (400)'
PHASES = ('before the kill', 'while the worker is dead', 'after the resume')


def build(src, dbname):
    create_load_database(src, dbname, scale=1)
    with src.connect(dbname) as conn:
        conn.execute(TRICKY)


class Rounds:
    """Rounds of changes to the tricky objects, drawn from the seed; the attach of meas_p4 happens in one phase."""

    def __init__(self, src, dst, dbname, rng, seed):
        self.src, self.dst, self.dbname, self.rng = src, dst, dbname, rng
        self.attach_phase = PHASES[seed % len(PHASES)]       # seeds 1, 2, 3: each phase once
        self.attached = False
        self.next_doc = 100
        self.next_sale = 10000
        self.next_scratch = 10000
        self.counts = {}

    def _count(self, what):
        self.counts[what] = self.counts.get(what, 0) + 1

    def run(self, phase, rounds):
        for _round in range(rounds):
            with self.src.connect(self.dbname) as conn:
                for op in self.rng.sample(self.OPS, len(self.OPS)):
                    getattr(self, op)(conn)
            time.sleep(self.rng.uniform(0.05, 0.4))
        if phase == self.attach_phase and not self.attached:
            self.attach()

    def unlogged(self, conn):
        rng = self.rng
        conn.execute("UPDATE public.scratch SET v = v || 'u' WHERE id %% 17 = %s", (rng.randrange(17),))
        conn.execute('DELETE FROM public.scratch WHERE id IN (SELECT id FROM public.scratch ORDER BY random() LIMIT 5)')
        conn.execute('INSERT INTO public.scratch SELECT g, %s FROM generate_series(%s::int, %s::int) g',
                     ('late', self.next_scratch, self.next_scratch + 9))
        self.next_scratch += 10
        self._count('unlogged')

    def large_objects(self, conn):
        rng = self.rng
        op = rng.choice(('create', 'rewrite', 'unlink', 'create'))
        if op == 'create':
            self.next_doc += 1
            conn.execute("INSERT INTO public.docs VALUES (%s, 'new', lo_from_bytea(%s::oid, convert_to(%s, 'UTF8')))",
                         (self.next_doc, 91000 + self.next_doc, 'created %d ' % self.next_doc * rng.randrange(1, 400)))
        else:
            row = conn.execute('SELECT id, content FROM public.docs WHERE content IS NOT NULL ORDER BY random() '
                               'LIMIT 1').fetchone()
            if row is None:
                return
            if op == 'rewrite':
                conn.execute("SELECT lo_put(%s::oid, %s::bigint, convert_to(%s, 'UTF8'))",
                             (row[1], rng.randrange(0, 2000), 'REWRITTEN %d' % rng.randrange(10 ** 6)))
            else:
                with conn.transaction():
                    conn.execute('SELECT lo_unlink(%s::oid)', (row[1],))
                    conn.execute('UPDATE public.docs SET content = NULL WHERE id = %s', (row[0],))
        self._count('lo_' + op)

    def matviews(self, conn):
        rng = self.rng
        conn.execute("INSERT INTO public.sales SELECT g, 'r' || (g %% 9), g FROM generate_series(%s::int, %s::int) g",
                     (self.next_sale, self.next_sale + 19))
        self.next_sale += 20
        conn.execute('UPDATE public.sales SET amount = amount + 1 WHERE id %% 13 = %s', (rng.randrange(13),))
        conn.execute('DELETE FROM public.sales WHERE id IN (SELECT id FROM public.sales ORDER BY random() LIMIT 3)')
        # the application refreshes its matviews after its changes (a source matview left stale differs from the
        # destination's by design: docs/reliability.md, Limits)
        conn.execute('REFRESH MATERIALIZED VIEW CONCURRENTLY public.region_totals')
        conn.execute('REFRESH MATERIALIZED VIEW public.a_grand')
        self._count('matviews')

    def orders(self, conn):
        rng = self.rng
        table, column = sql.Identifier(QSCHEMA, QTABLE), sql.Identifier(QCOLUMN)
        # literals, not parameters: a '%' in a composed identifier would be read as a placeholder by the client
        conn.execute(sql.SQL("INSERT INTO {} ({}, amount) SELECT 'late ' || g, g * 3 FROM generate_series(1, {}) g")
                     .format(table, column, sql.Literal(rng.randrange(1, 20))))
        conn.execute(sql.SQL("UPDATE {} SET amount = amount + 1 WHERE id % 11 = {}").format(
            table, sql.Literal(rng.randrange(11))))
        conn.execute("SELECT nextval('ids.order_seq') FROM generate_series(1, %s::int)", (rng.randrange(1, 30),))
        self._count('orders')

    def partitions(self, conn):
        rng = self.rng
        conn.execute("UPDATE public.meas SET v = v || 'p' WHERE id %% 7 = %s", (rng.randrange(7),))
        if self.attached:
            # rows move between partitions (p3 <-> p4) through updates of the partition key
            conn.execute('UPDATE public.meas SET k = k + 100 WHERE k >= 200 AND k < 300 AND id %% 5 = %s',
                         (rng.randrange(5),))
            conn.execute('UPDATE public.meas SET k = k - 100 WHERE k >= 300 AND id %% 9 = %s', (rng.randrange(9),))
        self._count('partitions')

    OPS = ('unlogged', 'large_objects', 'matviews', 'orders', 'partitions')

    def attach(self):
        """The user prepares the destination's partition, then attaches an empty one on the source (created and
        attached in one transaction: a whole-database task would stop on a new plain table) and moves rows in."""
        with self.dst.connect(self.dbname) as conn:
            conn.execute('SET default_transaction_read_only = off')
            conn.execute(P4)
        with self.src.connect(self.dbname) as conn:
            with conn.transaction():
                conn.execute('CREATE TABLE public.meas_p4 (id int NOT NULL, k int NOT NULL, v text)')
                conn.execute('ALTER TABLE public.meas ATTACH PARTITION public.meas_p4 FOR VALUES FROM (300) TO (400)')
            moved = conn.execute('UPDATE public.meas SET k = k + 100 WHERE k >= 200 AND k < 300').rowcount
            conn.execute("INSERT INTO public.meas VALUES (5000, 350, 'new in p4')")
        self.attached = True
        print('meas_p4 attached %s, %d rows moved into it' % (self.attach_phase, moved))


class Pgbench:
    """A real `pgbench -c 2 --rate 100` against the source in the background (our own process: stopped by its pid)."""

    def __init__(self, cluster, dbname):
        self.out = tempfile.TemporaryFile(mode='w+')
        self.proc = subprocess.Popen(
            [os.path.join(cluster.bindir, 'pgbench'), '-n', '-c', '2', '-j', '2', '--rate', '100', '-T', '900',
             '-P', '5', dbname], env=cluster.libpq_env(dbname), stdout=self.out, stderr=subprocess.STDOUT, text=True)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.out.seek(0)
        return self.out.read()


SEEDS = [1, 2, 3]


CASES = [pytest.param(seed, plugin, id='seed=%d-%s' % (seed, plugin))
         for plugin in ('pgoutput', 'wal2json') for seed in SEEDS]


@pytest.fixture(scope='module')
def servers(module_pg_factory):
    return module_pg_factory('asrc'), module_pg_factory('adst')


@pytest.mark.slow
@pytest.mark.parametrize('seed, plugin', CASES)
def test_everything_at_once_under_load_with_a_kill(servers, ansible, tmp_path, seed, plugin):
    adversarial_scenario(servers, ansible, tmp_path, seed, plugin)


def adversarial_scenario(servers, ansible, tmp_path, seed, plugin):
    src, dst = servers
    rng = random.Random(seed)
    kill_after = round(rng.uniform(0.2, 3.0), 3)
    name = dbname = 'adv_%d_%s' % (seed, plugin[:3])
    build(src, dbname)
    args = task_args(servers, tmp_path, name, dbname, plugin=plugin)
    rounds = Rounds(src, dst, dbname, rng, seed)
    print('replay with: seed=%d plugin=%s kill %.3f s into the sync, meas_p4 attached %s'
          % (seed, plugin, kill_after, rounds.attach_phase))
    poller = TaskPoller(dst, name)
    started = time.time()
    with judged_scenario(servers, args['worker_dir'], name, [dbname], poller):
        pgbench = Pgbench(src, dbname)
        try:
            with writing(src, dbname, seed=seed) as writer:
                status, result = ansible.module(MIGRATE, dict(args, wait='synced', wait_timeout=600))
                assert status == 'changed' and result['task']['stage'] == 'sync', result
                pid = wait_worker(args['worker_dir'], name)
                rounds.run(PHASES[0], rng.randrange(1, 4))
                time.sleep(kill_after)
                assert poller.stage() == 'sync'
                assert kill_worker(args['worker_dir'], name, pid) == pid
                assert worker_pid(args['worker_dir'], name) is None
                rounds.run(PHASES[1], rng.randrange(2, 5))
                status, result = ansible.module(MIGRATE, dict(args, wait='synced', wait_timeout=600))
                assert status == 'changed' and result['action'] == 'resumed', result
                assert result['task']['stage'] == 'sync', result['task']
                rounds.run(PHASES[2], rng.randrange(2, 5))
                # the cutover while pgbench and the writer keep trying to write: the fence must stop them
                status, result = ansible.module(FINISH, finish_args(args))
                assert status == 'changed', result
                time.sleep(1)
                commits = writer.stop()
                print('writer: %d commits, %d errors (%s)' % (commits, writer.errors, writer.last_error))
        finally:
            report = pgbench.stop()
        print('pgbench: ' + ' | '.join(line for line in report.splitlines()
                                       if 'progress' in line or 'processed' in line or 'abort' in line)[-1500:])
        print('rounds of changes: %s' % rounds.counts)
        assert commits > 50
        assert rounds.attached
        assert result['task']['stage'] == 'finished', result['task']
        summary = result['comparison_summary']
        print('finish: %s; downtime %.2f s' % (summary['text'], result.get('downtime_seconds') or 0))
        print('\n'.join('  %s %s' % (e['at'], e['message'][:160]) for e in result['task']['log'][-12:]))
        assert summary['mismatch'] == 0 and summary['error'] == 0, [
            c for c in result['comparison'] if c['result'] != 'match']
        assert result['fence_leaks'] == [], result['fence_leaks']
        assert result['left_out'] == []
        compared = {(c['schema'], c['table']) for c in result['comparison'] if 'table' in c}
        assert {('public', 'meas_p4'), ('public', 'scratch'), ('public', 'region_totals'), ('public', 'a_grand'),
                (QSCHEMA, QTABLE)} <= compared, sorted(compared)
        assert [(u['schema'], u['table']) for u in result['unlogged_recopied']] == [('public', 'scratch')]
        refreshed = [(m['schema'], m['name']) for m in result['materialized_views']]
        assert refreshed.index(('public', 'region_totals')) < refreshed.index(('public', 'a_grand'))
        [lo] = result['large_objects']
        print('large objects at finish: %s' % lo)
        assert 'ids.order_seq' in {'%s.%s' % (s['schema'], s['sequence']) for s in result['sequences']}
        # the test's own judge: both catalogs read here, without pgdts code
        rows = assert_exactly_once(src, dst, dbname)
        # the trigger fired once per source change: the destination's audit rows are the source's (none twice)
        assert dst.value('SELECT count(*) FROM public.order_audit', dbname=dbname) == \
            src.value('SELECT count(*) FROM public.order_audit', dbname=dbname)
        assert src.value('SELECT count(*) FROM public.meas_p4', dbname=dbname) > 0
        assert task_slots(src, name) == [] and task_origins(dst, name) == []
        print('destination equals source: %d rows; scenario took %.1f s' % (rows, time.time() - started))
