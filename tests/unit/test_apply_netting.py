"""The net effect per key that the set-based apply computes from a batch's changes (no database needed)."""

from __future__ import annotations

import types

import pytest

from ansible_collections.pgdts.migration.plugins.module_utils import apply as pgapply
from ansible_collections.pgdts.migration.plugins.module_utils.decoding import Change


def target(keyed=True):
    return types.SimpleNamespace(keyed=keyed, key_columns=('id',) if keyed else (), name='public.t')


def net(changes, keyed=True):
    table = pgapply._NetTable(target(keyed))     # pylint: disable=protected-access
    for lsn, change in enumerate(changes, 1):
        table.add(change, lsn)
    return table


def ins(id_, **values):
    return Change('I', 'public', 't', dict(id=id_, **values))


def upd(id_, old=None, unchanged=frozenset(), **values):
    return Change('U', 'public', 't', dict(id=id_, **values), {'id': old} if old else None, unchanged)


def dele(id_):
    return Change('D', 'public', 't', None, {'id': id_})


def entries(table):
    return {k: (e[0], e[1]) for k, e in table.entries.items()}


def test_insert_then_updates_is_one_insert_of_the_final_row():
    table = net([ins('1', v='a', big='X'), upd('1', v='b', unchanged=frozenset(['big'])), upd('1', v='c', w='w')])
    assert entries(table) == {'1': ('I', {'id': '1', 'v': 'c', 'big': 'X', 'w': 'w'})}
    assert not table.ordered


def test_updates_merge_their_columns_and_the_later_value_wins():
    table = net([upd('1', v='a'), upd('1', w='b'), upd('1', v='c')])
    assert entries(table) == {'1': ('U', {'id': '1', 'v': 'c', 'w': 'b'})}


def test_delete_then_insert_replaces_and_insert_then_delete_vanishes():
    table = net([dele('1'), ins('1', v='new'), ins('2', v='x'), upd('2', v='y'), dele('2'), upd('3', v='z'), dele('3')])
    assert entries(table) == {'1': ('DI', {'id': '1', 'v': 'new'}), '3': ('D', None)}


def test_delete_insert_update_delete():
    table = net([dele('1'), ins('1', v='a'), upd('1', v='b'), dele('1')])
    assert entries(table) == {'1': ('D', None)}


def test_changes_are_not_modified_by_merging():
    first = ins('1', v='a')
    net([first, upd('1', v='b')])
    assert first.new == {'id': '1', 'v': 'a'}


def test_key_change_or_missing_key_sends_the_table_to_ordered_apply():
    assert net([upd('2', old='1', v='a')]).ordered
    assert net([Change('U', 'public', 't', {'v': 'a'}, None)]).ordered
    assert net([Change('D', 'public', 't', None, None)]).ordered
    table = net([ins('1'), upd('2', old='1')])
    assert table.ordered and [c.kind for c, _lsn in table.raw] == ['I', 'U']


def test_keyless_tables_net_inserts_only():
    table = net([ins('1', v='a'), ins('1', v='a')], keyed=False)
    assert not table.ordered and len(table.plain) == 2
    assert net([ins('1'), upd('1', v='b')], keyed=False).ordered


@pytest.mark.parametrize('changes', [[ins('1'), ins('1')], [upd('1', v='a'), ins('1')], [dele('1'), upd('1', v='a')],
                                     [dele('1'), dele('1')]])
def test_impossible_sequences_fall_back_to_ordered_apply(changes):
    with pytest.raises(pgapply._NetFailed):      # pylint: disable=protected-access
        net(changes)


def test_text_array_binary_format():
    data = pgapply._TextArray(['a', None, 'é', '']).data    # pylint: disable=protected-access
    assert data[:20] == b'\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x19\x00\x00\x00\x04\x00\x00\x00\x01'
    assert data[20:] == b'\x00\x00\x00\x01a' + b'\xff\xff\xff\xff' + b'\x00\x00\x00\x02\xc3\xa9' + b'\x00\x00\x00\x00'
    assert pgapply._TextArray([]).data[4:8] == b'\x00\x00\x00\x00'    # pylint: disable=protected-access


def test_apply_error_text_names_table_key_and_lsn():
    err = pgapply.ApplyError('cannot apply UPDATE: the row does not exist on the destination', 'public.t',
                             {'id': '5', 'big': 'x' * 500}, 0x16B374D848, 'UPDATE ... WHERE t.id = %s::integer')
    assert str(err).startswith('cannot apply UPDATE: the row does not exist on the destination (table public.t, key ')
    assert 'LSN 16/B374D848' in str(err) and '...(500 chars)' in str(err)
    assert err.to_dict()['lsn'] == '16/B374D848'
