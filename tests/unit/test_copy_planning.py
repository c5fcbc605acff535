"""Copy planning without servers: which tables are split into block ranges, and batched recording of copied tables."""

from __future__ import annotations

import pytest

from ansible_collections.pgdts.migration.plugins.module_utils import copy as copy_mod
from ansible_collections.pgdts.migration.plugins.module_utils.catalog import Table

GB = 1024 * 1024 * 1024


def table(name, size, oid):
    return Table('db', 'public', name, oid, 'r', 'p', 'd', 0, size)


def test_tables_up_to_the_split_size_are_one_stream_larger_ones_are_split():
    small, mid, big = table('small', 10 * 1024 * 1024, 1), table('mid', GB - 1, 2), table('big', 5 * GB, 3)
    pages = {1: 1280, 2: 131071, 3: 655360}
    items = copy_mod.plan_items([small, mid, big], pages, jobs=4)
    by_table = {}
    for item in items:
        by_table.setdefault(item.table.name, []).append(item)
    assert len(by_table['small']) == 1 and by_table['small'][0].whole
    assert len(by_table['mid']) == 1 and by_table['mid'][0].whole
    parts = by_table['big']
    assert len(parts) == 5 and not any(p.whole for p in parts)
    # the block ranges cover the table without gaps or overlaps, the last one open-ended
    assert parts[0].first_block == 0 and parts[-1].last_block is None
    for before, after in zip(parts, parts[1:]):
        assert before.last_block == after.first_block
    # largest first
    assert items[0].table.name == 'big'


def test_one_job_never_splits():
    items = copy_mod.plan_items([table('big', 5 * GB, 3)], {3: 655360}, jobs=1)
    assert len(items) == 1 and items[0].whole


def test_copied_tables_are_recorded_in_batches_and_kept_when_recording_fails():
    recorded = []
    fail = {'next': False}

    def record(batch):
        if fail['next']:
            fail['next'] = False
            raise ConnectionError('state database restarting')
        recorded.append([t.name for t, _rows, _bytes in batch])

    batch = copy_mod.CopiedBatch(record, max_items=3, max_seconds=3600)
    for n in range(7):
        batch.add(table('t%d' % n, 0, n), n, n)
    assert recorded == [['t0', 't1', 't2'], ['t3', 't4', 't5']]
    fail['next'] = True
    with pytest.raises(ConnectionError):
        batch.flush()
    batch.flush()
    assert recorded[-1] == ['t6']
