"""The pgoutput and wal2json parsers on hand-built messages (the exact wire format of protocol version 1)."""

from __future__ import annotations

import datetime
import struct

import pytest

from ansible_collections.pgdts.migration.plugins.module_utils import decoding
from ansible_collections.pgdts.migration.plugins.module_utils.decoding import (
    Change, DecodeError, PgOutputParser, Wal2JsonParser)
from ansible_collections.pgdts.migration.plugins.module_utils.lsn import int_to_lsn, lsn_to_int

EPOCH = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)


def cstr(text):
    return text.encode('utf-8') + b'\0'


def begin(final_lsn, xid, when=EPOCH):
    micros = int((when - EPOCH).total_seconds() * 1000000)
    return b'B' + struct.pack('>qqI', final_lsn, micros, xid)


def commit(commit_lsn, end_lsn, when=EPOCH):
    micros = int((when - EPOCH).total_seconds() * 1000000)
    return b'C' + struct.pack('>bqqq', 0, commit_lsn, end_lsn, micros)


def relation(relid, schema, table, columns, replident='d'):
    """columns: list of (name, is_key)."""
    out = b'R' + struct.pack('>I', relid) + cstr(schema) + cstr(table) + replident.encode() + struct.pack('>H', len(columns))
    for name, is_key in columns:
        out += struct.pack('>b', 1 if is_key else 0) + cstr(name) + struct.pack('>Ii', 25, -1)
    return out


def tuple_data(values):
    """values: list of str (text), None (null) or decoding.Change-free marker 'UNCHANGED'."""
    out = struct.pack('>H', len(values))
    for value in values:
        if value is None:
            out += b'n'
        elif value == 'UNCHANGED':
            out += b'u'
        else:
            raw = value.encode('utf-8')
            out += b't' + struct.pack('>I', len(raw)) + raw
    return out


def insert(relid, values):
    return b'I' + struct.pack('>I', relid) + b'N' + tuple_data(values)


def update(relid, new, old=None, old_kind=b'K'):
    out = b'U' + struct.pack('>I', relid)
    if old is not None:
        out += old_kind + tuple_data(old)
    return out + b'N' + tuple_data(new)


def delete(relid, old, old_kind=b'K'):
    return b'D' + struct.pack('>I', relid) + old_kind + tuple_data(old)


def truncate(relids, cascade=False, restart=False):
    options = (1 if cascade else 0) | (2 if restart else 0)
    return b'T' + struct.pack('>Ib', len(relids), options) + b''.join(struct.pack('>I', r) for r in relids)


def feed_all(parser, messages, skip_before=None):
    out = []
    for message in messages:
        txn = parser.feed(message, skip_before)
        if txn is not None:
            out.append(txn)
    return out


COLS = [('id', True), ('name', False), ('big', False)]


def test_lsn_round_trip():
    assert lsn_to_int('0/0') == 0
    assert lsn_to_int('16/B374D848') == (0x16 << 32) | 0xB374D848
    assert int_to_lsn(lsn_to_int('16/B374D848')) == '16/B374D848'
    assert int_to_lsn(0) == '0/0'
    assert lsn_to_int(None) is None and int_to_lsn(None) is None
    assert lsn_to_int(97500059720) == 97500059720
    for text in ('0/0', '0/16B3748', '1A/FF000028'):
        assert int_to_lsn(lsn_to_int(text)) == text
    with pytest.raises(ValueError):
        lsn_to_int('nonsense')
    with pytest.raises(ValueError):
        int_to_lsn(-1)


def test_insert_update_delete_in_one_transaction():
    when = datetime.datetime(2024, 2, 29, 12, 30, 15, 123456, tzinfo=datetime.timezone.utc)
    parser = PgOutputParser()
    txns = feed_all(parser, [
        begin(0x1000, 77, when),
        relation(16400, 'Sales Ü', 'Order "X"', COLS),
        insert(16400, ['1', 'äöü €', None]),
        update(16400, ['1', 'renamed', 'UNCHANGED']),
        update(16400, ['2', 'moved', 'UNCHANGED'], old=['1', None, None]),
        delete(16400, ['2', None, None]),
        commit(0x1000, 0x1030, when),
    ])
    assert len(txns) == 1
    txn = txns[0]
    assert (txn.xid, txn.commit_lsn, txn.end_lsn, txn.commit_time) == (77, 0x1000, 0x1030, when)
    assert txn.changes == [
        Change('I', 'Sales Ü', 'Order "X"', {'id': '1', 'name': 'äöü €', 'big': None}),
        Change('U', 'Sales Ü', 'Order "X"', {'id': '1', 'name': 'renamed'}, None, frozenset(['big'])),
        Change('U', 'Sales Ü', 'Order "X"', {'id': '2', 'name': 'moved'}, {'id': '1'}, frozenset(['big'])),
        Change('D', 'Sales Ü', 'Order "X"', None, {'id': '2'}),
    ]


def test_replica_identity_full_sends_the_old_row():
    parser = PgOutputParser()
    txns = feed_all(parser, [
        begin(0x2000, 5),
        relation(1, 'public', 'dup', [('a', True), ('b', True)], replident='f'),
        update(1, ['1', 'z'], old=['1', 'x'], old_kind=b'O'),
        delete(1, ['1', ''], old_kind=b'O'),
        commit(0x2000, 0x2040),
    ])
    assert txns[0].changes == [Change('U', 'public', 'dup', {'a': '1', 'b': 'z'}, {'a': '1', 'b': 'x'}),
                               Change('D', 'public', 'dup', None, {'a': '1', 'b': ''})]


def test_truncate_options_and_relations():
    parser = PgOutputParser()
    txns = feed_all(parser, [
        begin(0x3000, 9),
        relation(1, 'public', 'a', [('id', True)]),
        relation(2, 's', 'b', [('id', True)]),
        truncate([1, 2], cascade=True, restart=True),
        commit(0x3000, 0x3010),
    ])
    change = txns[0].changes[0]
    assert (change.kind, change.truncate, change.cascade, change.restart_identity) == (
        'T', [('public', 'a'), ('s', 'b')], True, True)


def test_origin_type_and_message_records_are_tolerated():
    parser = PgOutputParser()
    origin = b'O' + struct.pack('>q', 0x99) + cstr('upstream')
    type_msg = b'Y' + struct.pack('>I', 12345) + cstr('public') + cstr('mood')
    txns = feed_all(parser, [begin(0x10, 1), origin, type_msg, relation(1, 'public', 't', [('id', True)]),
                             insert(1, ['1']), commit(0x10, 0x20)])
    assert txns[0].origin == 'upstream'
    assert len(txns[0].changes) == 1


def test_skip_before_drops_old_transactions_but_keeps_relations():
    parser = PgOutputParser()
    txns = feed_all(parser, [
        begin(0x100, 1), relation(1, 'public', 't', [('id', True)]), insert(1, ['1']), commit(0x100, 0x110),
        begin(0x200, 2), insert(1, ['2']), commit(0x200, 0x210),
    ], skip_before=0x101)
    assert [t.commit_lsn for t in txns] == [0x200]
    assert txns[0].changes[0].new == {'id': '2'}


def test_change_before_relation_is_an_error():
    parser = PgOutputParser()
    parser.feed(begin(0x10, 1))
    with pytest.raises(DecodeError, match='relation 42 before its Relation message'):
        parser.feed(insert(42, ['1']))


def test_binary_values_and_unknown_messages_are_errors():
    parser = PgOutputParser()
    feed_all(parser, [begin(0x10, 1), relation(1, 'public', 't', [('id', True)])])
    binary = b'I' + struct.pack('>I', 1) + b'N' + struct.pack('>H', 1) + b'b' + struct.pack('>I', 1) + b'\x01'
    with pytest.raises(DecodeError, match='binary value'):
        parser.feed(binary)
    with pytest.raises(DecodeError, match='unknown message type'):
        parser.feed(b'Z\x00')


def test_column_count_mismatch_is_an_error():
    parser = PgOutputParser()
    feed_all(parser, [begin(0x10, 1), relation(1, 'public', 't', [('id', True), ('v', False)])])
    with pytest.raises(DecodeError, match='2 columns|1 columns'):
        parser.feed(insert(1, ['1']))


# -- wal2json --------------------------------------------------------------------------------------------------------

def w2j(action, **fields):
    import json
    record = {'action': action}
    record.update(fields)
    return json.dumps(record)


def test_wal2json_numbers_stay_exact_text():
    parser = Wal2JsonParser(numeric_as_string=False)
    raw = ('{"action":"I","schema":"public","table":"t","columns":['
           '{"name":"n","type":"numeric","value":123456789012345678901234567890.123},'
           '{"name":"f","type":"double precision","value":0.1},'
           '{"name":"e","type":"double precision","value":1e+308},'
           '{"name":"i","type":"bigint","value":9223372036854775807},'
           '{"name":"b","type":"boolean","value":true},'
           '{"name":"s","type":"text","value":"NaN"}]}')
    parser.feed(w2j('B', xid=1, lsn='0/10', nextlsn='0/20', timestamp='2026-01-02 03:04:05.5+01'))
    parser.feed(raw)
    txn = parser.feed(w2j('C', xid=1, lsn='0/10', nextlsn='0/20', timestamp='2026-01-02 03:04:05.5+01'))
    assert txn.changes[0].new == {'n': '123456789012345678901234567890.123', 'f': '0.1', 'e': '1e+308',
                                  'i': '9223372036854775807', 'b': 't', 's': 'NaN'}
    assert txn.commit_time == datetime.datetime(2026, 1, 2, 2, 4, 5, 500000, tzinfo=datetime.timezone.utc)
    assert (txn.commit_lsn, txn.end_lsn) == (0x10, 0x20)


def test_wal2json_null_numeric_without_string_option_is_handed_on_as_null():
    """A real NULL or a NaN the plugin could not print: applied as NULL, corrected by pg_dts_finish under the fence."""
    parser = Wal2JsonParser(numeric_as_string=False)
    parser.feed(w2j('B', xid=1, lsn='0/10', nextlsn='0/20', timestamp='2026-01-02 03:04:05+00'))
    columns = [{'name': 'n', 'type': 'numeric', 'value': None}, {'name': 's', 'type': 'text', 'value': None}]
    parser.feed(w2j('I', schema='public', table='t', columns=columns))
    txn = parser.feed(w2j('C', xid=1, lsn='0/10', nextlsn='0/20', timestamp='2026-01-02 03:04:05+00'))
    assert txn.changes[0].new == {'n': None, 's': None}


def test_wal2json_with_numeric_as_string_keeps_nan_and_null():
    parser = Wal2JsonParser(numeric_as_string=True)
    parser.feed(w2j('B', xid=1, lsn='0/10', nextlsn='0/20', timestamp='2026-01-02 03:04:05+00'))
    parser.feed(w2j('I', schema='public', table='t', columns=[
        {'name': 'n', 'type': 'numeric', 'value': 'NaN'}, {'name': 'f', 'type': 'real', 'value': '-Infinity'},
        {'name': 'm', 'type': 'numeric', 'value': None}]))
    parser.feed(w2j('U', schema='public', table='t', columns=[{'name': 'id', 'type': 'integer', 'value': '2'}],
                    identity=[{'name': 'id', 'type': 'integer', 'value': '1'}]))
    parser.feed(w2j('T', schema='public', table='a', lsn='0/18'))
    parser.feed(w2j('T', schema='public', table='b', lsn='0/18'))
    txn = parser.feed(w2j('C', xid=1, lsn='0/10', nextlsn='0/20', timestamp='2026-01-02 03:04:05+00'))
    assert txn.changes[0].new == {'n': 'NaN', 'f': '-Infinity', 'm': None}
    assert (txn.changes[1].new, txn.changes[1].old) == ({'id': '2'}, {'id': '1'})
    assert txn.changes[2].truncate == [('public', 'a'), ('public', 'b')]


def test_wal2json_table_filter_and_skip():
    parser = Wal2JsonParser(tables=[('public', 'keep')])
    parser.feed(w2j('B', xid=1, lsn='0/10', nextlsn='0/20', timestamp='2026-01-02 03:04:05+00'))
    parser.feed(w2j('I', schema='public', table='other', columns=[{'name': 'a', 'type': 'text', 'value': 'x'}]))
    parser.feed(w2j('I', schema='public', table='keep', columns=[{'name': 'a', 'type': 'text', 'value': 'y'}]))
    txn = parser.feed(w2j('C', xid=1, lsn='0/10', nextlsn='0/20', timestamp='2026-01-02 03:04:05+00'))
    assert [c.table for c in txn.changes] == ['keep']
    parser.feed(w2j('B', xid=2, lsn='0/30', nextlsn='0/40', timestamp='2026-01-02 03:04:05+00'), skip_before=0x31)
    parser.feed(w2j('I', schema='public', table='keep', columns=[]), skip_before=0x31)
    assert parser.feed(w2j('C', xid=2, lsn='0/30', nextlsn='0/40', timestamp='2026-01-02 03:04:05+00'),
                       skip_before=0x31) is None


def test_timestamp_parsing_variants():
    parse = decoding.parse_pg_timestamptz
    utc = datetime.timezone.utc
    assert parse('2026-11-25 03:06:13.369772+00') == datetime.datetime(2026, 11, 25, 3, 6, 13, 369772, tzinfo=utc)
    assert parse('2026-11-25 03:06:13+05:30') == datetime.datetime(2026, 11, 24, 21, 36, 13, tzinfo=utc)
    assert parse('2026-11-25 03:06:13.1-08') == datetime.datetime(2026, 11, 25, 11, 6, 13, 100000, tzinfo=utc)
    with pytest.raises(DecodeError):
        parse('yesterday')


def test_wal2json_escape():
    assert decoding.wal2json_escape('a.b,c d*e\'f\\g') == 'a\\.b\\,c\\ d\\*e\\\'f\\\\g'


def test_gc_paused_nests_and_restores():
    import gc
    assert gc.isenabled()
    with decoding.gc_paused():
        assert not gc.isenabled()
        with decoding.gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with decoding.gc_paused():
            pass
        assert not gc.isenabled()      # it was off before: it stays off
    finally:
        gc.enable()
