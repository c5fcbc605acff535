"""sync_scope without a server: which tables lack a usable replica identity, what the publication lists, what
replica_identity: exclude may leave out, and how a new partition finds the task's table it belongs to."""

from __future__ import annotations

import pytest

from ansible_collections.pgdts.migration.plugins.module_utils import catalog, sync_scope


def table(name, relkind='r', persistence='p', ident='d', key_kind=None, key_columns=(), parent=None):
    t = catalog.Table('db', 'public', name, 1, relkind, persistence, ident, 0, 0, parent=parent,
                      is_partition=bool(parent))
    t.key_kind = key_kind
    t.key_columns = list(key_columns)
    return t


@pytest.mark.parametrize('kwargs, lacking', [
    ({'key_kind': 'primary', 'key_columns': ['id']}, False),            # DEFAULT with a primary key
    ({}, True),                                                          # DEFAULT without a key
    ({'ident': 'f', 'key_kind': 'full'}, False),                         # FULL
    ({'ident': 'n', 'key_kind': 'primary', 'key_columns': ['id']}, True),   # NOTHING, even with a primary key
    ({'ident': 'i', 'key_kind': 'index', 'key_columns': ['a']}, False),  # USING INDEX
    ({'ident': 'i'}, True),                                              # USING INDEX whose index is gone
    ({'persistence': 'u'}, False),                                       # unlogged: never published
    ({'relkind': 'p'}, False),                                           # partitioned parent: its partitions count
])
def test_lacks_identity(kwargs, lacking):
    assert sync_scope.lacks_identity(table('t', **kwargs)) is lacking


def test_publication_leaves_out_unlogged_and_keyless_tables():
    keyed = table('keyed', key_kind='primary', key_columns=['id'])
    tables = [keyed, table('scratch', persistence='u'), table('heap'), table('parent', relkind='p')]
    assert [t.name for t in sync_scope.publication_tables(tables)] == ['keyed', 'parent']


def test_identity_option_fail_and_exclude():
    keyed = table('keyed', key_kind='primary', key_columns=['id'])
    heap = table('heap')
    with pytest.raises(sync_scope.ScopeError, match=r'public\.heap.*replica_identity: full'):
        sync_scope.apply_identity_option(None, [keyed, heap], 'fail')
    kept, set_full, left_out = sync_scope.apply_identity_option(None, [keyed, heap], 'exclude')
    assert (kept, set_full, left_out) == ([keyed], [], [heap])
    # a keyless partition of a selected parent cannot be left out: the parent's publication publishes it
    parent = table('meas', relkind='p')
    part = table('meas_p1', parent='public.meas')
    with pytest.raises(sync_scope.ScopeError, match=r'cannot leave them out'):
        sync_scope.apply_identity_option(None, [parent, part], 'exclude')
    # nothing to do: no connection needed
    assert sync_scope.apply_identity_option(None, [keyed], 'full') == ([keyed], [], [])


def test_known_ancestor_walks_up_new_partitions():
    scope = sync_scope.Scope('db', None, None, {('public', 'meas')})
    sub = table('meas_2027', relkind='p', parent='public.meas')
    sub.parent_key = ('public', 'meas')
    leaf = table('meas_2027_01', parent='public.meas_2027')
    leaf.parent_key = ('public', 'meas_2027')
    lone = table('other')
    lone.parent_key = None
    by_key = {(t.schema, t.name): t for t in (sub, leaf, lone)}
    assert scope.known_ancestor(leaf, by_key) == ('public', 'meas')
    assert scope.known_ancestor(sub, by_key) == ('public', 'meas')
    assert scope.known_ancestor(lone, by_key) is None


def test_display_quotes_only_what_needs_it():
    assert sync_scope.display(table('plain')) == 'public.plain'
    t = catalog.Table('db', 'Fresh', 'Odd "x"', 1, 'r', 'p', 'd', 0, 0)
    assert sync_scope.display(t) == '"Fresh"."Odd ""x"""'
