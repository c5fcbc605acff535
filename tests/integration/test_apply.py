"""Decode on a real source and apply to a real destination; compare every table on both sides.

Both plugins, small batches (many windows and batches, mostly ordered key changes) and one big batch (set-based
netting), crash safety through the replication origin, and the errors a user sees when a row cannot be applied."""

from __future__ import annotations

import pytest

from ansible_collections.pgdts.migration.plugins.module_utils import apply as pgapply
from ansible_collections.pgdts.migration.plugins.module_utils import decoding
from ansible_collections.pgdts.migration.plugins.module_utils.lsn import int_to_lsn

from sync_support import (CHANGES, NUMBERS_CHANGES, connect_apply, contents, current_flush_lsn, drop_origins_and_slots,
                          prepare, recreate, run_changes, sync)


@pytest.fixture(autouse=True)
def clean_origins_and_slots(source_pg, dest_pg):
    yield
    drop_origins_and_slots(source_pg, dest_pg)


def reader_for(source, dbname, slot, plugin, tables, **kwargs):
    return decoding.SlotReader(source.connect(dbname), slot, plugin, publication='pub' if plugin == 'pgoutput' else None,
                               tables=list(tables) if plugin == 'wal2json' else None, **kwargs)


def drop_slot(source, dbname, slot):
    with source.connect(dbname) as conn:
        decoding.drop_slot(conn, slot)


@pytest.mark.parametrize('plugin,batch,window,net', [
    ('pgoutput', 3, 40, True),
    ('pgoutput', 100000, 200000, True),
    ('pgoutput', 100000, 200000, False),
    ('wal2json', 3, 25, True),
    ('wal2json', 100000, 200000, True),
], ids=['pgoutput-small-batches', 'pgoutput-one-batch', 'pgoutput-ordered', 'wal2json-small-batches',
        'wal2json-one-batch'])
def test_sync_reproduces_every_tricky_change(source_pg, dest_pg, plugin, batch, window, net):
    dbname = 'apply_%s_%d_%s' % (plugin, batch, 'net' if net else 'ord')
    numbers = plugin == 'pgoutput'    # NaN/Infinity/NULL numbers: see test_decoding for wal2json
    tables, slot, copy_lsn = prepare(source_pg, dest_pg, dbname, plugin, numbers=numbers)
    run_changes(source_pg, dbname, CHANGES + (NUMBERS_CHANGES if numbers else []))
    upto = current_flush_lsn(source_pg, dbname)
    expected = contents(source_pg, dbname, tables)
    assert expected[('public', 'kitchen')] and expected[('public', 'full_dup')]
    with connect_apply(dest_pg, dbname) as dst:
        applier = pgapply.Applier(dst, 'origin_%s' % dbname, tables, {k: copy_lsn for k in tables}, net=net)
        applier.setup()
        reader = reader_for(source_pg, dbname, slot, plugin, tables, window_changes=window)
        results = sync(reader, applier, batch=batch, upto=upto)
        applied = sum(r['transactions'] for r in results)
        assert applied == len(CHANGES) + (len(NUMBERS_CHANGES) if numbers else 0)
        if batch >= 100000:
            assert len([r for r in results if r['transactions']]) == 1
            assert results[0]['mode'] == ('net' if net else 'ordered')
            assert applier.stats['fallbacks'] == 0
        else:
            assert reader.stats['windows'] > 1
        assert applier.applied_lsn() == max(r['last_commit_lsn'] for r in results)
        applier.close()
    assert contents(dest_pg, dbname, tables) == expected
    with dest_pg.connect(dbname) as conn:
        # the trigger did not fire on the destination: the log holds exactly what the source's trigger wrote
        assert conn.execute("SELECT count(*) FROM trig_log").fetchone()[0] == 2
    drop_slot(source_pg, dbname, slot)


def test_replaying_an_unconfirmed_batch_applies_nothing_twice(source_pg, dest_pg):
    dbname = 'apply_replay'
    tables, slot, copy_lsn = prepare(source_pg, dest_pg, dbname, 'pgoutput')
    run_changes(source_pg, dbname, CHANGES)
    upto = current_flush_lsn(source_pg, dbname)
    expected = contents(source_pg, dbname, tables)
    with connect_apply(dest_pg, dbname) as dst:
        applier = pgapply.Applier(dst, 'origin_replay', tables, {k: copy_lsn for k in tables})
        applier.setup()
        reader = reader_for(source_pg, dbname, slot, 'pgoutput', tables)
        first, _done = reader.read(upto_lsn=upto, max_changes=40)
        result = applier.apply(first)
        assert result['transactions'] == len(first) > 0
        # crash before confirming: the same reader (not confirmed) and a new one both hand out the batch again
        again, _done = reader.read(upto_lsn=upto, max_changes=40)
        assert [t.commit_lsn for t in again] == [t.commit_lsn for t in first]
        assert applier.apply(again)['transactions'] == 0
        fresh = reader_for(source_pg, dbname, slot, 'pgoutput', tables)
        replay, _done = fresh.read(upto_lsn=upto, max_changes=100000)
        assert replay[0].commit_lsn == first[0].commit_lsn
        result = applier.apply(replay)
        assert result['skipped_transactions'] == len(first)
        assert result['transactions'] == len(replay) - len(first)
        assert contents(dest_pg, dbname, tables) == expected
        applier.close()
    drop_slot(source_pg, dbname, slot)


def test_destination_crash_keeps_exactly_once(source_pg, pg_factory):
    dest = pg_factory('crashdst')
    dbname = 'apply_crash'
    tables, slot, copy_lsn = prepare(source_pg, dest, dbname, 'pgoutput')
    run_changes(source_pg, dbname, CHANGES)
    upto = current_flush_lsn(source_pg, dbname)
    expected = contents(source_pg, dbname, tables)
    reader = reader_for(source_pg, dbname, slot, 'pgoutput', tables)
    dst = connect_apply(dest, dbname)
    applier = pgapply.Applier(dst, 'origin_crash', tables, {k: copy_lsn for k in tables})
    applier.setup()
    first, _done = reader.read(upto_lsn=upto, max_changes=30)
    applier.apply(first)
    durable = applier.applied_lsn()            # flushed: survives the crash
    reader.confirm(durable)
    second, _done = reader.read(upto_lsn=upto, max_changes=30)
    applier.apply(second)                      # committed asynchronously, then the server dies
    dest.kill9()
    dest.start()
    with connect_apply(dest, dbname) as dst2:
        applier = pgapply.Applier(dst2, 'origin_crash', tables, {k: copy_lsn for k in tables})
        applier.setup()
        assert applier.applied_lsn() >= durable
        reader = reader_for(source_pg, dbname, slot, 'pgoutput', tables)
        sync(reader, applier, batch=25, upto=upto)
        applier.close()
    assert contents(dest, dbname, tables) == expected
    drop_slot(source_pg, dbname, slot)


def test_update_of_a_row_missing_on_the_destination(source_pg, dest_pg):
    dbname = 'apply_missing'
    tables, slot, copy_lsn = prepare(source_pg, dest_pg, dbname, 'pgoutput')
    with dest_pg.connect(dbname) as conn:
        conn.execute('DELETE FROM keychange WHERE id = 2')
    run_changes(source_pg, dbname, ["INSERT INTO churn VALUES (42, 'new')",
                                    ["INSERT INTO history VALUES (1, 'x')", "UPDATE keychange SET v = 'x' WHERE id = 2"]])
    with connect_apply(dest_pg, dbname) as dst:
        applier = pgapply.Applier(dst, 'origin_missing', tables, {k: copy_lsn for k in tables})
        applier.setup()
        reader = reader_for(source_pg, dbname, slot, 'pgoutput', tables)
        txns, _done = reader.read(upto_lsn=current_flush_lsn(source_pg, dbname))
        assert len(txns) == 2
        with pytest.raises(pgapply.ApplyError) as info:
            applier.apply(txns)
        err = info.value
        assert err.table == 'public.keychange'
        assert err.key == {'id': '2'}
        assert err.lsn == txns[1].commit_lsn
        assert 'UPDATE' in err.statement and 'keychange' in err.statement
        assert "'x'" not in err.statement and '%s' in err.statement      # placeholders, never the values
        assert 'does not exist on the destination' in str(err)
        assert "key {'id': '2'}" in str(err) and int_to_lsn(txns[1].commit_lsn) in str(err)
        # nothing of the batch was committed, not even the transaction before the failing one
        assert applier.applied_lsn() == 0
        with dest_pg.connect(dbname) as conn:
            assert conn.execute('SELECT count(*) FROM churn WHERE id = 42').fetchone()[0] == 0
            assert conn.execute('SELECT count(*) FROM history').fetchone()[0] == 0
            # fix the cause, retry: it resumes from there
            conn.execute("INSERT INTO keychange VALUES (2, 'two')")
        result = applier.apply(txns)
        assert result['transactions'] == 2
        applier.close()
    assert contents(dest_pg, dbname, tables) == contents(source_pg, dbname, tables)
    drop_slot(source_pg, dbname, slot)


def test_unique_violation_and_missing_column_are_apply_errors(source_pg, dest_pg):
    dbname = 'apply_conflict'
    tables, slot, copy_lsn = prepare(source_pg, dest_pg, dbname, 'pgoutput',
                                     extra_dest=["INSERT INTO churn VALUES (7, 'already here')",
                                                 'ALTER TABLE trunc_me DROP COLUMN v'])
    run_changes(source_pg, dbname, ["INSERT INTO churn VALUES (7, 'seven')"])
    with connect_apply(dest_pg, dbname) as dst:
        applier = pgapply.Applier(dst, 'origin_conflict', tables, {k: copy_lsn for k in tables})
        applier.setup()
        reader = reader_for(source_pg, dbname, slot, 'pgoutput', tables)
        txns, _done = reader.read(upto_lsn=current_flush_lsn(source_pg, dbname))
        with pytest.raises(pgapply.ApplyError) as info:
            applier.apply(txns)
        assert info.value.table == 'public.churn' and info.value.key == {'id': '7'}
        assert 'duplicate key' in info.value.message
        assert info.value.statement.startswith('INSERT INTO "public"."churn"')
        assert applier.stats['fallbacks'] == 1     # the set-based attempt failed, the ordered one named the row
        reader.reset()
        with dest_pg.connect(dbname) as conn:
            conn.execute('DELETE FROM churn WHERE id = 7')
        applier.apply(txns)
        reader.confirm(applier.applied_lsn())
        run_changes(source_pg, dbname, ["INSERT INTO trunc_me VALUES (9, 'nine')"])
        txns, _done = reader.read(upto_lsn=current_flush_lsn(source_pg, dbname))
        with pytest.raises(pgapply.ApplyError) as info:
            applier.apply(txns)
        assert info.value.table == 'public.trunc_me'
        assert 'column "v" does not exist on the destination table' in info.value.message
        # the user adds the column on the destination; the retry picks the change up
        with dest_pg.connect(dbname) as conn:
            conn.execute('ALTER TABLE trunc_me ADD COLUMN v text')
        assert applier.apply(txns)['transactions'] == 1
        applier.close()
    with dest_pg.connect(dbname) as conn:
        assert conn.execute('SELECT v FROM trunc_me WHERE id = 9').fetchone()[0] == 'nine'
    drop_slot(source_pg, dbname, slot)


@pytest.mark.parametrize('net', [True, False], ids=['net', 'ordered'])
def test_copy_lsn_skips_changes_the_copy_already_has(source_pg, dest_pg, net):
    dbname = 'apply_copylsn_%s' % ('net' if net else 'ordered')
    tables, slot, copy_lsn = prepare(source_pg, dest_pg, dbname, 'pgoutput')
    run_changes(source_pg, dbname, ["INSERT INTO churn VALUES (1, 'before copy')", "INSERT INTO history VALUES (1, 'a')"])
    # churn is "copied" again now, under a later snapshot: its copy LSN is here
    later = current_flush_lsn(source_pg, dbname)
    with dest_pg.connect(dbname) as conn:
        conn.execute("INSERT INTO churn VALUES (1, 'before copy')")
    run_changes(source_pg, dbname, ["UPDATE churn SET v = 'after copy' WHERE id = 1",
                                    "INSERT INTO history VALUES (2, 'b')"])
    copy_lsns = {k: copy_lsn for k in tables}
    copy_lsns[('public', 'churn')] = later
    with connect_apply(dest_pg, dbname) as dst:
        applier = pgapply.Applier(dst, 'origin_copylsn', tables, copy_lsns, net=net)
        applier.setup()
        reader = reader_for(source_pg, dbname, slot, 'pgoutput', tables)
        results = sync(reader, applier, upto=current_flush_lsn(source_pg, dbname))
        assert [r['mode'] for r in results if r['transactions']] == ['net' if net else 'ordered']
        assert applier.stats['fallbacks'] == 0
        applier.close()
    assert contents(dest_pg, dbname, tables) == contents(source_pg, dbname, tables)
    drop_slot(source_pg, dbname, slot)


def test_origin_and_session_settings(source_pg, dest_pg):
    dbname = 'apply_session'
    recreate(dest_pg, dbname, ['CREATE TABLE t (id integer PRIMARY KEY)'])
    with connect_apply(dest_pg, dbname) as dst:
        meta = {('public', 't'): pgapply.TableMeta('public', 't', [], ['id'], 'primary')}
        applier = pgapply.Applier(dst, 'origin_session', meta)
        applier.setup()
        assert dst.execute('SHOW session_replication_role').fetchone()[0] == 'replica'
        assert dst.execute('SHOW synchronous_commit').fetchone()[0] == 'off'
        dst.rollback()
        assert applier.applied_lsn() == 0
        assert pgapply.origin_progress(dst, 'origin_session') == 0
        with dest_pg.connect(dbname) as other:
            # a second applier cannot bind the same origin while the first one holds it
            second = pgapply.Applier(dest_pg.connect(dbname, autocommit=False), 'origin_session', meta)
            with pytest.raises(pgapply.ApplyError, match='origin_session'):
                second.setup()
            second.conn.close()
            with pytest.raises(pgapply.ApplyError, match='cannot drop replication origin'):
                pgapply.drop_origin(other, 'origin_session')
        applier.close()
    with dest_pg.connect(dbname) as conn:
        assert pgapply.drop_origin(conn, 'origin_session') is True
        assert pgapply.drop_origin(conn, 'origin_session') is False
        with pytest.raises(pgapply.ApplyError, match='does not exist'):
            pgapply.drop_origin(conn, 'origin_session', missing_ok=False)
        assert conn.execute("SELECT count(*) FROM pg_replication_origin WHERE roname = 'origin_session'"
                            ).fetchone()[0] == 0


def test_missing_destination_table_fails_setup(dest_pg):
    dbname = 'apply_notable'
    recreate(dest_pg, dbname, [])
    with connect_apply(dest_pg, dbname) as dst:
        applier = pgapply.Applier(dst, 'origin_notable', {('public', 'nope'): pgapply.TableMeta('public', 'nope')})
        with pytest.raises(pgapply.ApplyError, match='table public.nope does not exist on the destination'):
            applier.setup()


def test_delete_of_a_missing_row_and_a_transient_unique_conflict(source_pg, dest_pg):
    dbname = 'apply_transient'
    extra = ['CREATE TABLE uq (id integer PRIMARY KEY, email text UNIQUE)', "INSERT INTO uq VALUES (1, 'a'), (2, 'b')"]
    tables, slot, copy_lsn = prepare(source_pg, dest_pg, dbname, 'pgoutput', extra_source=extra, extra_dest=extra)
    # swap two unique values through a temporary one: netted into one UPDATE, row 1 would take 'b' while row 2
    # still has it; in source order it works
    run_changes(source_pg, dbname, [["UPDATE uq SET email = 'tmp' WHERE id = 1", "UPDATE uq SET email = 'a' WHERE id = 2",
                                     "UPDATE uq SET email = 'b' WHERE id = 1"]])
    with connect_apply(dest_pg, dbname) as dst:
        applier = pgapply.Applier(dst, 'origin_transient', tables, {k: copy_lsn for k in tables})
        applier.setup()
        reader = reader_for(source_pg, dbname, slot, 'pgoutput', tables)
        results = sync(reader, applier, upto=current_flush_lsn(source_pg, dbname))
        assert [r['mode'] for r in results if r['transactions']] == ['ordered']
        assert applier.stats['fallbacks'] == 1 and 'uq' in applier.last_fallback_reason
        assert contents(dest_pg, dbname, tables) == contents(source_pg, dbname, tables)
        with dest_pg.connect(dbname) as conn:
            conn.execute('DELETE FROM churn WHERE id = 6')
        run_changes(source_pg, dbname, ["INSERT INTO history VALUES (9, 'kept?')", "DELETE FROM churn WHERE id = 6"])
        txns, _done = reader.read(upto_lsn=current_flush_lsn(source_pg, dbname))
        with pytest.raises(pgapply.ApplyError) as info:
            applier.apply(txns)
        assert (info.value.table, info.value.key, info.value.lsn) == ('public.churn', {'id': '6'}, txns[-1].commit_lsn)
        assert 'cannot apply DELETE: the row does not exist on the destination' in info.value.message
        assert info.value.statement.startswith('DELETE FROM ONLY "public"."churn"')
        applier.close()
    with dest_pg.connect(dbname) as conn:
        assert conn.execute('SELECT count(*) FROM history').fetchone()[0] == 0
    drop_slot(source_pg, dbname, slot)


def test_a_lost_destination_connection_is_not_an_apply_error(source_pg, dest_pg):
    """An outage must reach the worker as psycopg's connection error (it retries), not as an ApplyError (it stops)."""
    import psycopg
    dbname = 'apply_outage'
    tables, slot, copy_lsn = prepare(source_pg, dest_pg, dbname, 'pgoutput')
    run_changes(source_pg, dbname, ["INSERT INTO churn VALUES (1, 'x')"])
    dst = connect_apply(dest_pg, dbname)
    applier = pgapply.Applier(dst, 'origin_outage', tables, {k: copy_lsn for k in tables})
    applier.setup()
    reader = reader_for(source_pg, dbname, slot, 'pgoutput', tables)
    txns, _done = reader.read(upto_lsn=current_flush_lsn(source_pg, dbname))
    dest_pg.execute('SELECT pg_terminate_backend(%s)', (dst.info.backend_pid,))
    with pytest.raises(psycopg.OperationalError) as info:
        applier.apply(txns)
    assert not isinstance(info.value, pgapply.ApplyError)
    dst.close()
    with connect_apply(dest_pg, dbname) as dst2:        # a new session picks up where the origin says
        applier = pgapply.Applier(dst2, 'origin_outage', tables, {k: copy_lsn for k in tables})
        applier.setup()
        assert applier.apply(txns)['transactions'] == 1
        applier.close()
    assert contents(dest_pg, dbname, tables) == contents(source_pg, dbname, tables)
