"""Pure functions: table patterns, task names and object names."""

from __future__ import annotations

import pytest

from ansible_collections.pgdts.migration.plugins.module_utils import catalog, task_state


def make_table(dbname, schema, name, parent=None):
    return catalog.Table(dbname, schema, name, 1, 'r', 'p', 'd', 0, 0, parent=parent, is_partition=bool(parent))


@pytest.mark.parametrize('pattern, expected', [
    ('public.orders', (None, 'public', 'orders')),
    ('shop.public.orders', ('shop', 'public', 'orders')),
    ('"Sales Dept"."Order Lines"', (None, 'Sales Dept', 'Order Lines')),
    ('"a.b".c', (None, 'a.b', 'c')),
    ('public.*', (None, 'public', '*')),
])
def test_split_pattern(pattern, expected):
    assert catalog.split_pattern(pattern) == expected


@pytest.mark.parametrize('pattern', ['orders', 'a.b.c.d', '.x', 'x.', '"open.x'])
def test_split_pattern_rejects(pattern):
    with pytest.raises(catalog.SelectionError):
        catalog.split_pattern(pattern)


def test_select_tables_globs_excludes_and_partitions():
    tables = [make_table('shop', 'public', 'orders'), make_table('shop', 'public', 'order_lines'),
              make_table('shop', 'public', 'events'), make_table('shop', 'public', 'events_2025', parent='public.events'),
              make_table('shop', 'audit', 'log')]
    chosen = catalog.select_tables(tables, ['public.order*', 'public.events'], ['public.order_lines'])
    assert [t.qualified for t in chosen] == ['public.orders', 'public.events', 'public.events_2025']
    assert [t.qualified for t in catalog.select_tables(tables)] == [t.qualified for t in tables]
    assert catalog.unmatched_patterns(tables, ['public.orders', 'public.nope', 'other.public.x'], 'shop') == [
        'public.nope']


def test_task_names():
    assert task_state.validate_task_name('shop_move_1') == 'shop_move_1'
    for bad in ('Shop', '1abc', 'a-b', '', 'x' * 41, 'a b'):
        with pytest.raises(task_state.TaskNameError):
            task_state.validate_task_name(bad)


def test_object_names_are_unique_per_task_and_database():
    a = task_state.object_name('a', 'shop')
    assert a.startswith('pgdts_a_') and len(a) <= 63
    assert task_state.object_name_re('a').match(a)
    assert not task_state.object_name_re('a').match(task_state.object_name('a_b', 'shop'))
    assert task_state.object_name('a', 'shop') != task_state.object_name('a', 'Shop')
