"""The playbooks of the collection, run as `ansible-playbook pgdts.migration.<name>` against inventories of tasks.

One bulk `full` play over three source clusters and three destinations, one destination made to fail verification:
two tasks finish with exact data (while writers run on their sources), the third fails with its reason, the summary
says so, and a second run changes nothing. Then the stage playbooks one by one for a task given as a list entry.
"""

from __future__ import annotations

import re
import threading
import time

import psycopg
import pytest
import yaml

from tests.harness.data import assert_same_contents, create_tricky_database, sequence_values, user_tables

TASKS = ('shop_east', 'shop_west', 'shop_north')     # from the inventory host names shop-east, shop-west, shop-north
SUMMARY = 'Print the table of every task'


@pytest.fixture(scope='module')
def clusters(module_pg_factory):
    """Three sources with the tricky data set in database shop, three empty destinations."""
    pairs = []
    for suffix in ('e', 'w', 'n'):
        src = module_pg_factory('bsrc' + suffix)
        dst = module_pg_factory('bdst' + suffix)
        create_tricky_database(src, 'shop')
        src.execute('CREATE TABLE public.ticks (id bigserial PRIMARY KEY, note text NOT NULL)', dbname='shop')
        pairs.append((src, dst))
    return pairs


class Writer(threading.Thread):
    """An application writing to the source until the cutover fences it (or the test stops it)."""

    def __init__(self, cluster):
        super().__init__(daemon=True)
        self.cluster = cluster
        self.count = 0
        self.error = None
        self.halt = threading.Event()

    def run(self):
        try:
            with self.cluster.connect('shop') as conn:
                while not self.halt.is_set():
                    with conn.transaction():
                        conn.execute('INSERT INTO public.ticks (note) VALUES (%s)', ('write %d' % self.count,))
                        conn.execute("UPDATE public.parent SET name = name || '+' WHERE id = %s", (1 + self.count % 50,))
                    self.count += 1
                    time.sleep(0.02)
        except psycopg.Error as exc:
            self.error = exc


def write_inventory(path, hosts, **group_vars):
    inventory = {'all': {'children': {'migrations': {'hosts': hosts, 'vars': group_vars}}}}
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return str(path)


def server(cluster):
    """A connection dict whose password comes from a (vault-style) variable, as an inventory would have it."""
    return {'host': cluster.host, 'port': cluster.port, 'user': 'postgres', 'password': '{{ test_db_password }}'}


def table_line(lines, task):
    found = [line for line in lines if line.split(' ', 1)[0] == task]
    assert len(found) == 1, lines
    return found[0]


def changed_for(run, host):
    return [r['task'] for r in run.results if r['host'] == host and r['status'] == 'changed']


def test_bulk_full_two_tasks_finish_one_fails_verification(clusters, ansible, tmp_path):
    (src_e, dst_e), (src_w, dst_w), (src_n, dst_n) = clusters
    # the third destination already holds a table of the selection, with a row: verification must fail
    dst_n.create_database('shop')
    dst_n.execute('CREATE TABLE public.parent (id integer PRIMARY KEY, name text)', dbname='shop')
    dst_n.execute("INSERT INTO public.parent VALUES (1, 'already here')", dbname='shop')

    hosts = {}
    for name, (src, dst) in zip(('shop-east', 'shop-west', 'shop-north'), clusters):
        hosts[name] = {'pgdts_source': server(src), 'pgdts_destination': server(dst), 'pgdts_databases': ['shop'],
                       'pgdts_prepare_pg_ctl_log': src.logfile}
    inventory = write_inventory(tmp_path / 'bulk.yml', hosts, pgdts_jobs=2, pgdts_wait_sleep=1,
                                pgdts_worker_dir=str(tmp_path / 'workers'), pgdts_prepare_restart_method='pg_ctl')
    password = src_e.password
    writers = [Writer(src_e), Writer(src_w)]
    for writer in writers:
        writer.start()
    try:
        run = ansible.run('pgdts.migration.full', inventory=inventory, extra_vars={'test_db_password': password},
                          verbosity=1, timeout=600)
    finally:
        for writer in writers:
            writer.halt.set()
            writer.join(30)

    # the failed task makes the play fail, after the summary of every task
    assert run.rc == 2, run.stdout[-5000:]
    assert password not in run.stdout and password not in run.stderr
    lines = run.task(SUMMARY)['result']['msg']
    assert '3 task(s): 2 ok, 1 failed' in lines, lines
    with src_e.connect('shop') as conn:
        tables = len(user_tables(conn))                 # 8: the partitions count, their parent has no rows
    for task in ('shop_east', 'shop_west'):
        line = table_line(lines, task)
        assert re.search(r'\bok\s+finished\s+100\.0%', line), line
        assert 'checksum %d/%d tables match' % (tables, tables) in line, line
    failed = table_line(lines, 'shop_north')
    assert re.search(r'\bfailed\s+not started\b', failed), failed
    reason = [line for line in lines if line.startswith('shop_north: ')]
    assert reason and 'verify: destination.conflicts (failed)' in reason[0], lines
    assert 'shop.public.parent exists and holds rows' in reason[0], reason
    assert run.task('Fail the tasks that failed', host='shop-north')['status'] == 'failed'
    assert run.task('Fail the tasks that failed', host='shop-east')['status'] == 'skipped'
    # the failing task skipped every later stage; the others went through all of them
    assert run.task('(3/7) Start the migration of every task and wait for the full copy',
                    host='shop-north')['status'] == 'skipped'

    # exact data for the two that finished, including what the writers wrote until the fence ended them
    for (src, dst), writer in zip(clusters[:2], writers):
        assert writer.count > 0
        assert writer.error is not None, 'the fence should have ended the writer'
        rows = assert_same_contents(src, dst, 'shop')
        assert rows > 1900
        assert sequence_values(src, 'shop') == sequence_values(dst, 'shop')
        assert src.value('SELECT count(*) FROM pg_replication_slots') == 0
        assert src.value("SELECT setting FROM pg_settings WHERE name = 'default_transaction_read_only'",
                         dbname='shop') == 'on'
        assert dst.value('SELECT count(*) FROM public.ticks', dbname='shop') >= writer.count
    # the two tasks ran at the same time (one worker each)
    east = run.task('Cut over - fence, catch up, sync sequences, compare, end the sync', host='shop-east')
    west = run.task('Cut over - fence, catch up, sync sequences, compare, end the sync', host='shop-west')
    assert east['result']['task']['created_at'] < west['result']['task']['finished_at']
    assert west['result']['task']['created_at'] < east['result']['task']['finished_at']
    # nothing was started for the third: no slot on its source, its destination untouched
    assert src_n.value('SELECT count(*) FROM pg_replication_slots') == 0
    with dst_n.connect('shop') as conn:
        assert user_tables(conn) == [('public', 'parent')]
    assert dst_n.value('SELECT count(*) FROM public.parent', dbname='shop') == 1

    # a second run changes nothing for the finished tasks and fails the third for the same reason
    again = ansible.run('pgdts.migration.full', inventory=inventory, extra_vars={'test_db_password': password},
                        timeout=600)
    assert again.rc == 2, again.stdout[-5000:]
    assert changed_for(again, 'shop-east') == [] and changed_for(again, 'shop-west') == []
    lines = again.task(SUMMARY)['result']['msg']
    assert '3 task(s): 2 ok, 1 failed' in lines
    assert 'already finished' in table_line(lines, 'shop_east')
    assert 'destination.conflicts' in table_line(lines, 'shop_north')
    assert_same_contents(src_e, dst_e, 'shop')
    assert_same_contents(src_w, dst_w, 'shop')


def test_stage_playbooks_for_a_list_entry(clusters, ansible, tmp_path):
    """verify, migrate, status, cancel one by one, for a task given as an entry of pgdts_tasks."""
    src, dst = clusters[2]
    dst.execute('DROP DATABASE IF EXISTS shop')
    src.execute('ALTER DATABASE shop RESET default_transaction_read_only')
    inventory = write_inventory(tmp_path / 'list.yml', {'north': {
        'pgdts_source': server(src), 'pgdts_destination': server(dst),
        'pgdts_tasks': [{'name': 'north_shop', 'databases': ['shop']}]}},
        pgdts_jobs=2, pgdts_wait_sleep=1, pgdts_worker_dir=str(tmp_path / 'workers'))
    host = 'north/north_shop'
    extra = {'test_db_password': src.password}

    def play(name, **more):
        return ansible.run('pgdts.migration.' + name, inventory=inventory, extra_vars=dict(extra, **more), timeout=600)

    verify = play('verify')
    assert verify.rc == 0, verify.stdout[-4000:]
    line = table_line(verify.task(SUMMARY)['result']['msg'], 'north_shop')
    assert re.search(r'ok\s+not started .*verify: \d+ passed, \d+ warning\(s\), 0 failed', line), line
    assert changed_for(verify, host) == []

    # check mode says what would happen and changes nothing
    checked = ansible.run('pgdts.migration.full', inventory=inventory, extra_vars=extra, check=True, timeout=600)
    assert checked.rc == 0, checked.stdout[-4000:]
    assert checked.task('Start or resume the migration task', host=host)['status'] == 'changed'
    assert 'would cut over' in table_line(checked.task(SUMMARY)['result']['msg'], 'north_shop')
    assert dst.value("SELECT count(*) FROM pg_database WHERE datname = 'shop'") == 0
    assert src.value('SELECT count(*) FROM pg_replication_slots') == 0

    migrate = play('migrate', pgdts_wait='synced')
    assert migrate.rc == 0, migrate.stdout[-4000:]
    assert migrate.task('Start or resume the migration task', host=host)['status'] == 'changed'
    assert re.search(r'ok\s+sync\s+100\.0%', table_line(migrate.task(SUMMARY)['result']['msg'], 'north_shop'))
    with src.connect('shop') as conn:
        conn.execute("INSERT INTO public.ticks (note) VALUES ('after the copy')")
    again = play('migrate', pgdts_wait='synced')
    assert again.rc == 0 and changed_for(again, host) == [], again.stdout[-4000:]
    assert dst.value("SELECT count(*) FROM public.ticks WHERE note = 'after the copy'", dbname='shop') == 1

    status = play('status')
    assert status.rc == 0 and changed_for(status, host) == []
    lines = status.task('Print the table of every task')['result']['msg']
    assert lines[0].split() == ['TASK', 'STAGE', 'COPIED', 'ROWS', 'LAG', 'SLOT', 'WAL', 'WORKER', 'LAST', 'ERROR']
    assert re.search(r'^north_shop\s+sync\s+100\.0%\s+[\d,]+\s+\S+ \w?B( / [\d.]+ s)?\s+'
                     r'[\d.]+ \w?B( (reserved|extended))?\s+alive\s+-$',
                     table_line(lines, 'north_shop')), lines

    cancel = play('cancel', pgdts_drop_destination=True)
    assert cancel.rc == 0, cancel.stdout[-4000:]
    assert cancel.task('Cancel the task and release its replication objects', host=host)['status'] == 'changed'
    assert src.value('SELECT count(*) FROM pg_replication_slots') == 0
    assert dst.value("SELECT count(*) FROM pg_database WHERE datname = 'shop'") == 0
    again = play('cancel', pgdts_drop_destination=True)
    assert again.rc == 0 and changed_for(again, host) == []
    status = play('status')
    assert re.search(r'^north_shop\s+cancelled\s', table_line(
        status.task('Print the table of every task')['result']['msg'], 'north_shop'))


def test_inventory_without_tasks_and_bad_names_fail_clearly(ansible, tmp_path):
    empty = write_inventory(tmp_path / 'empty.yml', {'db1': {'ansible_connection': 'local'}})
    run = ansible.run('pgdts.migration.status', inventory=empty)
    assert run.rc != 0
    assert 'No migration task in the inventory' in run.task(
        'Check that the inventory holds at least one task')['result']['msg']

    bad = write_inventory(tmp_path / 'bad.yml', {'db1': {
        'pgdts_source': {'host': '127.0.0.1'}, 'pgdts_destination': {'host': '127.0.0.1'},
        'pgdts_tasks': [{'name': 'Bad-Name'}, {'name': 'good_one', 'destination': 'not a dict'}]}})
    run = ansible.run('pgdts.migration.verify', inventory=bad)
    assert run.rc != 0
    record = run.task('Check the tasks of this inventory host')
    assert record['status'] == 'failed'
    assert "Tasks found: ['Bad-Name', 'good_one']" in record['result']['msg']
    assert not [r for r in run.results if r['task'] == 'Run the pre-migration checks']


def test_prepare_source_once_for_tasks_that_share_it(clusters, ansible, tmp_path):
    src = clusters[2][0]
    src.execute('ALTER DATABASE shop RESET default_transaction_read_only')
    inventory = write_inventory(tmp_path / 'shared.yml', {'north': {
        'pgdts_source': server(src), 'pgdts_destination': server(clusters[2][1]),
        'pgdts_tasks': [{'name': 'north_a', 'databases': ['shop']}, {'name': 'north_b', 'databases': ['postgres']}]}},
        pgdts_prepare_restart_method='pg_ctl', pgdts_prepare_pg_ctl_log=src.logfile)
    started = src.postmaster_start_time()
    run = ansible.run('pgdts.migration.prepare_source', inventory=inventory,
                      extra_vars={'test_db_password': src.password})
    assert run.rc == 0, run.stdout[-4000:]
    configured = [r for r in run.results if r['task'].endswith('Configure the source for logical decoding')]
    assert [r['host'] for r in configured] == ['north/north_a']
    assert configured[0]['result']['restart_required'] is False
    lines = run.task(SUMMARY)['result']['msg']
    assert table_line(lines, 'north_a').endswith('prepare: source localhost:%d ready' % src.port)
    assert table_line(lines, 'north_b').endswith('prepare: source localhost:%d ready (prepared with task north_a)'
                                                 % src.port)
    assert src.postmaster_start_time() == started
    again = ansible.run('pgdts.migration.prepare_source', inventory=inventory,
                        extra_vars={'test_db_password': src.password})
    assert again.rc == 0 and again.changed_count() == 0, [r['task'] for r in again.results if r['status'] == 'changed']
