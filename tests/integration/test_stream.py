"""StreamReader (START_REPLICATION over a replication connection) against a real source, for both plugins.

It must hand out exactly what the SQL peek reader hands out, move the slot only to what the caller confirmed, resume
from there in a new stream, take the slot over from a walsender whose worker died, and feed the planned (pipelined)
apply path to the same destination contents."""

from __future__ import annotations

import time

import psycopg
import pytest

from ansible_collections.pgdts.migration.plugins.module_utils import apply as pgapply
from ansible_collections.pgdts.migration.plugins.module_utils import decoding
from ansible_collections.pgdts.migration.plugins.module_utils.lsn import int_to_lsn, lsn_to_int

from sync_support import (CHANGES, connect_apply, contents, current_flush_lsn, drop_origins_and_slots, prepare,
                          run_changes)


@pytest.fixture(autouse=True)
def clean_origins_and_slots(source_pg, dest_pg):
    yield
    drop_origins_and_slots(source_pg, dest_pg)


def repl_conn(cluster, dbname):
    return psycopg.connect(host=cluster.host, port=cluster.port, user='postgres', password=cluster.password,
                           dbname=dbname, autocommit=True, replication='database', application_name='pgdts-test')


def stream_for(source, dbname, slot, plugin, tables, **kwargs):
    return decoding.StreamReader(source.connect(dbname), repl_conn(source, dbname), slot, plugin,
                                 publication='pub' if plugin == 'pgoutput' else None, tables=list(tables), **kwargs)


def peek_for(source, dbname, slot, plugin, tables):
    return decoding.SlotReader(source.connect(dbname), slot, plugin, publication='pub' if plugin == 'pgoutput' else None,
                               tables=list(tables) if plugin == 'wal2json' else None)


def read_until_done(reader, upto, batch=100000, confirm=False, rounds=600):
    out = []
    for _i in range(rounds):
        txns, done = reader.read(upto_lsn=upto, max_changes=batch)
        out.extend(txns)
        if txns and confirm:
            reader.confirm(txns[-1].end_lsn)
        if done:
            return out
    raise AssertionError('the stream did not reach %s' % int_to_lsn(upto))


def model(txns):
    def change(c):
        return (c.kind, c.schema, c.table, c.new, c.old, c.unchanged, sorted(c.truncate or []))
    return [(t.xid, t.commit_lsn, t.end_lsn, [change(c) for c in t.changes]) for t in txns]


@pytest.mark.parametrize('plugin', ['pgoutput', 'wal2json'])
def test_stream_hands_out_what_the_peek_reader_does(source_pg, dest_pg, plugin):
    dbname = 'stream_same_%s' % plugin
    tables, slot, _copy_lsn = prepare(source_pg, dest_pg, dbname, plugin)
    run_changes(source_pg, dbname, CHANGES)
    upto = current_flush_lsn(source_pg, dbname)
    peeked = read_until_done(peek_for(source_pg, dbname, slot, plugin, tables), upto)
    reader = stream_for(source_pg, dbname, slot, plugin, tables)
    try:
        streamed = read_until_done(reader, upto, batch=5)
        assert len(streamed) == len(CHANGES)
        assert model(streamed) == model(peeked)
        # nothing more until the source writes again: not done for a position the WAL has not reached
        assert reader.read(upto_lsn=upto + 10 ** 9, max_changes=5, wait=0.5) == ([], False)
    finally:
        reader.close()
    # reading moved nothing: the slot is where it was (nothing was confirmed)
    assert lsn_to_int(source_pg.value(
        'SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s', (slot,),
        dbname=dbname)) < streamed[0].commit_lsn


def test_confirm_moves_the_slot_and_a_new_stream_resumes_there(source_pg, dest_pg):
    dbname = 'stream_resume'
    tables, slot, _copy_lsn = prepare(source_pg, dest_pg, dbname, 'pgoutput')
    run_changes(source_pg, dbname, ["UPDATE kitchen SET big = 'v%d' WHERE id = 1" % i for i in range(10)])
    upto = current_flush_lsn(source_pg, dbname)
    reader = stream_for(source_pg, dbname, slot, 'pgoutput', tables, feedback_interval=0.0)
    try:
        first = []
        for _i in range(100):      # read() hands out what has arrived: collect four transactions
            txns, done = reader.read(upto_lsn=upto, max_changes=4 - len(first), wait=5)
            first.extend(txns)
            assert not done
            if len(first) >= 4:
                break
        assert [len(t.changes) for t in first] == [1] * 4
        reader.confirm(first[-1].end_lsn)
        reader.flush()
        deadline = time.monotonic() + 10
        confirmed = None
        while time.monotonic() < deadline:
            confirmed = lsn_to_int(source_pg.value(
                'SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s', (slot,),
                dbname=dbname))
            if confirmed == first[-1].end_lsn:
                break
            time.sleep(0.05)
        assert confirmed == first[-1].end_lsn
    finally:
        reader.close()
    again = stream_for(source_pg, dbname, slot, 'pgoutput', tables)
    try:
        rest = read_until_done(again, upto)
    finally:
        again.close()
    assert [t.changes[0].new['big'] for t in rest] == ['v%d' % i for i in range(4, 10)]


def test_a_walsender_left_by_a_dead_reader_is_taken_over(source_pg, dest_pg):
    dbname = 'stream_takeover'
    tables, slot, _copy_lsn = prepare(source_pg, dest_pg, dbname, 'pgoutput')
    run_changes(source_pg, dbname, ["UPDATE kitchen SET big = 'x' WHERE id = 1"])
    upto = current_flush_lsn(source_pg, dbname)
    stale = stream_for(source_pg, dbname, slot, 'pgoutput', tables)   # never closed: like a worker killed with -9
    old_pid = source_pg.value('SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s', (slot,),
                              dbname=dbname)
    assert old_pid
    reader = stream_for(source_pg, dbname, slot, 'pgoutput', tables)
    try:
        txns = read_until_done(reader, upto)
        assert [t.changes[0].new['big'] for t in txns] == ['x']
        new_pid = source_pg.value('SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s', (slot,),
                                  dbname=dbname)
        assert new_pid and new_pid != old_pid
    finally:
        reader.close()
        stale.close()


def test_stream_reports_a_missing_slot_and_a_wrong_plugin(source_pg, dest_pg):
    dbname = 'stream_bad'
    tables, slot, _copy_lsn = prepare(source_pg, dest_pg, dbname, 'pgoutput')
    with pytest.raises(decoding.DecodeError, match='does not exist'):
        stream_for(source_pg, dbname, 'no_such_slot', 'pgoutput', tables)
    with pytest.raises(decoding.DecodeError, match='uses plugin pgoutput'):
        stream_for(source_pg, dbname, slot, 'wal2json', tables)


@pytest.mark.parametrize('plugin', ['pgoutput', 'wal2json'])
def test_planned_batches_applied_behind_the_stream_give_the_same_tables(source_pg, dest_pg, plugin):
    """What the worker does: build batch N+1's statements (Applier.plan) while batch N is applied."""
    dbname = 'stream_apply_%s' % plugin
    tables, slot, copy_lsn = prepare(source_pg, dest_pg, dbname, plugin)
    run_changes(source_pg, dbname, CHANGES)
    upto = current_flush_lsn(source_pg, dbname)
    expected = contents(source_pg, dbname, tables)
    reader = stream_for(source_pg, dbname, slot, plugin, tables)
    planned = 0
    try:
        with connect_apply(dest_pg, dbname) as dst:
            applier = pgapply.Applier(dst, 'origin_%s' % dbname, tables, {k: copy_lsn for k in tables})
            applier.setup()
            applied = 0
            for _i in range(1000):
                txns, done = reader.read(upto_lsn=upto, max_changes=4)
                plan = applier.plan(txns)
                planned += plan is not None
                result = applier.apply(txns, plan)
                applied += result['transactions']
                reader.confirm(applier.applied_lsn())
                if done:
                    break
            assert applied == len(CHANGES)
            applier.close()
    finally:
        reader.close()
    assert planned > 0
    assert contents(dest_pg, dbname, tables) == expected
