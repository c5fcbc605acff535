"""A 12 -> 18 upgrade with the objects real applications have (a name with % and =, a sequence in another schema, a
generated column, an expression index, a trigger, a view, a matview over a matview, large objects, an UNLOGGED
table, a partitioned table), changed during the sync: finish proves the whole scope across the two majors, and the
test's own comparison reads both catalogs. A partition attached on the 12 source during the sync stops the task
with its name: 12 publishes the leaf partitions the task started with, so its rows would otherwise be lost."""

from __future__ import annotations

import time

from tests.harness import pg_majors
from tests.harness.data import assert_same_database

FINISH = 'pgdts.migration.pg_dts_finish'
MIGRATE = 'pgdts.migration.pg_dts_migrate'
ORDERS = 'public."Pct%Orders = ok"'

SCHEMA = r'''
CREATE SCHEMA ids;
CREATE SEQUENCE ids.order_seq START 1000;
CREATE TABLE public."Pct%Orders = ok" (id int PRIMARY KEY DEFAULT nextval('ids.order_seq'), note text NOT NULL,
    amount numeric(10,2) DEFAULT 0, total numeric GENERATED ALWAYS AS (amount * 2) STORED);
CREATE INDEX pct_note_idx ON public."Pct%Orders = ok" (lower(note)) WHERE amount > 1;
CREATE TABLE public.audit (id serial PRIMARY KEY, order_id int);
CREATE FUNCTION public.audit_fn() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN INSERT INTO public.audit (order_id) VALUES (NEW.id); RETURN NEW; END$$;
CREATE TRIGGER orders_audit AFTER INSERT ON public."Pct%Orders = ok" FOR EACH ROW EXECUTE PROCEDURE public.audit_fn();
CREATE VIEW public.big AS SELECT id, note FROM public."Pct%Orders = ok" WHERE amount > 10;
CREATE MATERIALIZED VIEW public.mv1 AS SELECT count(*) AS n, sum(amount) AS s FROM public."Pct%Orders = ok";
CREATE MATERIALIZED VIEW public.mv2 AS SELECT n * 2 AS n2 FROM public.mv1;
CREATE TABLE public.docs (id int PRIMARY KEY, content oid);
CREATE TABLE public.events (id int, day date NOT NULL, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
CREATE TABLE public.events_a PARTITION OF public.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE UNLOGGED TABLE public.scratch (id int PRIMARY KEY, v text);
INSERT INTO public."Pct%Orders = ok" (note, amount) SELECT 'n' || g, g FROM generate_series(1, 300) g;
INSERT INTO public.events SELECT g, date '2025-06-01' + (g % 100) FROM generate_series(1, 300) g;
INSERT INTO public.docs SELECT g, lo_from_bytea(0, convert_to(repeat('x', g * 100), 'UTF8')) FROM generate_series(1, 3) g;
INSERT INTO public.scratch SELECT g, 's' FROM generate_series(1, 10) g;
'''

CHANGES = r'''
INSERT INTO public."Pct%Orders = ok" (note, amount) SELECT 'late' || g, g FROM generate_series(1, 50) g;
UPDATE public."Pct%Orders = ok" SET amount = amount + 1 WHERE id % 7 = 0;
DELETE FROM public."Pct%Orders = ok" WHERE id % 11 = 0;
REFRESH MATERIALIZED VIEW public.mv1;
REFRESH MATERIALIZED VIEW public.mv2;
INSERT INTO public.docs VALUES (9, lo_from_bytea(0, '\x0102'));
UPDATE public.scratch SET v = 'changed';
'''


def start(pg_factory, ansible, tmp_path, name):
    src, dst = pg_factory('usrc', major=12), pg_factory('udst', major=18)
    src.create_database('app')
    with src.connect('app') as conn:
        conn.execute(SCHEMA)
    args = {'name': name, 'source': src.spec(), 'destination': dst.spec(), 'databases': ['app'],
            'worker_dir': str(tmp_path / 'workers'), 'pg_bindir': pg_majors.clients_for(18), 'jobs': 2}
    status, result = ansible.module(MIGRATE, dict(args, wait='synced', wait_timeout=300))
    assert status == 'changed' and result['task']['stage'] == 'sync', result.get('msg')
    with src.connect('app') as conn:
        conn.execute(CHANGES)
    return src, dst, args


def test_upgrade_12_to_18_with_the_objects_applications_have(pg_factory, ansible, tmp_path):
    src, dst, args = start(pg_factory, ansible, tmp_path, 'upgrade_objects')
    time.sleep(2)
    status, result = ansible.module(FINISH, {k: args[k] for k in ('name', 'source', 'destination', 'worker_dir')})
    assert status == 'changed', (result.get('msg'), [c for c in result.get('comparison', []) if c['result'] != 'match'])
    kinds = result['comparison_summary']['kinds']
    assert kinds['matviews']['compared'] == 2 and kinds['large_objects']['compared'] >= 1, kinds
    src.execute('ALTER DATABASE app RESET default_transaction_read_only')
    assert_same_database(src, dst, 'app')
    assert dst.value('SELECT n2 FROM public.mv2', dbname='app') == src.value('SELECT n2 FROM public.mv2', dbname='app')
    assert dst.value("SELECT nextval('ids.order_seq')", dbname='app') > src.value(
        'SELECT last_value FROM ids.order_seq', dbname='app')


def test_partition_attached_on_a_12_source_stops_the_task_with_its_name(pg_factory, ansible, tmp_path):
    src, dst, args = start(pg_factory, ansible, tmp_path, 'upgrade_attach')
    with dst.connect('app') as conn:      # the destination has the partition: still, 12 cannot publish it now
        conn.execute('SET default_transaction_read_only = off')
        conn.execute("CREATE TABLE public.events_b PARTITION OF public.events "
                     "FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')")
    with src.connect('app') as conn:
        conn.execute('CREATE TABLE public.events_b (id int, day date NOT NULL, PRIMARY KEY (id, day))')
        conn.execute("ALTER TABLE public.events ATTACH PARTITION public.events_b "
                     "FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')")
        conn.execute("UPDATE public.events SET day = date '2026-03-01' WHERE id <= 100")
    # the worker reads the source catalog every few seconds: the task stops on its own
    deadline = time.time() + 120
    while time.time() < deadline and dst.value("SELECT stage FROM pgdts.task WHERE name = 'upgrade_attach'",
                                               dbname='pgdts') != 'failed':
        time.sleep(0.5)
    status, result = ansible.module('pgdts.migration.pg_dts_info', {k: args[k] for k in (
        'name', 'source', 'destination', 'worker_dir')})
    [task] = result['tasks']
    error = (task['error'] or {}).get('message', '')
    assert task['stage'] == 'failed' and 'events_b' in error and 'PostgreSQL 12' in error, task
    status, result = ansible.module(FINISH, {k: args[k] for k in ('name', 'source', 'destination', 'worker_dir')})
    assert status == 'failed' and 'failed' in result['msg'], result['msg']
    status, result = ansible.module(MIGRATE, dict(args, state='absent', drop_destination=True))
    assert status == 'changed', result.get('msg')
