"""wal2json before 2.6 (Debian 12 ships 2.5) writes NaN and Infinity of numeric and float columns as null, like a real
NULL. Real NULLs must migrate as NULLs (the task used to fail on the first one), NaN and Infinity in tables with a key
are corrected by pg_dts_finish under the fence, and in a table without a key it happens what verify says: the
checksum comparison reports the table."""

from __future__ import annotations

from tests.harness.data import database_contents

VERIFY = 'pgdts.migration.pg_dts_verify'
MIGRATE = 'pgdts.migration.pg_dts_migrate'
FINISH = 'pgdts.migration.pg_dts_finish'


def test_wal2json_numbers(pg_factory, ansible, tmp_path):
    src, dst = pg_factory('wsrc'), pg_factory('wdst')
    src.create_database('nums')
    with src.connect('nums') as conn:
        conn.execute('CREATE TABLE amounts (id int PRIMARY KEY, n numeric(12,2), f double precision, r real)')
        conn.execute('INSERT INTO amounts SELECT g, g * 1.5, g / 4.0, NULL FROM generate_series(1, 100) g')
        conn.execute('CREATE TABLE loose (n numeric, note text)')
        conn.execute('ALTER TABLE loose REPLICA IDENTITY FULL')
        conn.execute("INSERT INTO loose VALUES (1, 'one')")
    args = {'name': 'w2j_numbers', 'source': src.spec(), 'destination': dst.spec(), 'databases': ['nums']}
    status, result = ansible.module(VERIFY, dict(args, plugin='wal2json'))
    assert status == 'ok', result
    item = [c for c in result['checks'] if c['id'] == 'plugin.numeric_special_values'][0]
    assert item['status'] == 'warning'
    assert 'applied as NULL' in item['message'] and "gives every such NULL on the destination the source's value" \
        in item['message'], item['message']
    assert 'without a key' in item['message'] and 'public.loose' in item['message'], item['message']
    args['worker_dir'] = str(tmp_path / 'workers')
    status, result = ansible.module(MIGRATE, dict(args, plugin='wal2json', wait='synced', wait_timeout=300))
    assert status == 'changed', result.get('msg', result)
    with src.connect('nums') as conn:
        # real NULLs and ordinary values, then NaN and Infinity, during the sync
        conn.execute('UPDATE amounts SET n = NULL, f = NULL WHERE id % 3 = 0')
        conn.execute('UPDATE amounts SET r = id * 2 WHERE id % 5 = 0')
        conn.execute('UPDATE amounts SET n = 7.25 WHERE id % 7 = 0')
        conn.execute("INSERT INTO amounts VALUES (101, NULL, NULL, NULL), (102, 'NaN', 'Infinity', '-Infinity')")
        conn.execute("UPDATE amounts SET n = 'NaN', f = '-Infinity' WHERE id IN (10, 11)")
        conn.execute("UPDATE amounts SET r = 'NaN' WHERE id = 12")
        conn.execute("INSERT INTO loose VALUES (NULL, 'real null'), ('NaN', 'not a number')")
    status, result = ansible.module(MIGRATE, dict(args, plugin='wal2json', wait='synced', wait_timeout=300))
    assert status == 'ok' and result['task']['stage'] == 'sync', result.get('msg', result)
    finish = {k: args[k] for k in ('name', 'source', 'destination', 'worker_dir')}
    status, result = ansible.module(FINISH, dict(finish, on_mismatch='warn', keep_source_fence=False))
    assert status == 'changed', result.get('msg', result)
    by_table = {c['table']: c for c in result['comparison']}
    assert by_table['amounts']['result'] == 'match', by_table['amounts']
    assert by_table['loose']['result'] == 'mismatch', by_table['loose']    # what verify said
    source, destination = database_contents(src, 'nums'), database_contents(dst, 'nums')
    assert destination['public.amounts'] == source['public.amounts']
    assert dst.value("SELECT n::text || f::text || r::text FROM amounts WHERE id = 102", dbname='nums') == \
        'NaNInfinity-Infinity'
    assert dst.value('SELECT count(*) FROM amounts WHERE n IS NULL', dbname='nums') == \
        src.value('SELECT count(*) FROM amounts WHERE n IS NULL', dbname='nums') >= 29
    assert sorted(destination['public.loose']) == sorted(['(1,one)', '(,"real null")', '(,"not a number")'])
    assert any('wal2json had sent as NULL' in line['message'] for line in result['task']['log']), result['task']['log']
