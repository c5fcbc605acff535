"""The filters the playbooks print their tables with: pgdts.migration.task_table and pgdts.migration.check_line."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.pgdts.migration.plugins.filter.check_line import check_line
from ansible_collections.pgdts.migration.plugins.filter.task_table import human_bytes, task_table

SYNCING = {'stage': 'sync', 'totals': {'percent': 100.0, 'rows': 1234567}, 'lag_bytes': 1536, 'lag_seconds': 0.5,
           'worker_alive': True, 'error': None,
           'databases': [{'database': 'shop', 'retained_wal_bytes': 12 << 20, 'wal_status': 'reserved',
                          'safe_wal_size': None}]}
COPYING = {'stage': 'copy', 'totals': {'percent': 42.5, 'rows': 1000}, 'lag_bytes': None, 'lag_seconds': None,
           'worker_alive': True, 'error': None}
FAILED = {'stage': 'failed', 'totals': {'percent': 10.0, 'rows': 5}, 'lag_bytes': 99, 'lag_seconds': 3.0,
          'worker_alive': False, 'error': {'stage': 'copy', 'message': 'relation "x" does not exist'}}


def test_status_table_aligns_columns_and_reads_the_report():
    lines = task_table([{'task': 'shop_move', 'report': SYNCING}, {'task': 'crm', 'report': COPYING},
                        {'task': 'hr_move', 'report': FAILED}, {'task': 'new_one', 'report': None}])
    assert lines == [
        'TASK       STAGE        COPIED       ROWS  LAG             SLOT WAL          WORKER   LAST ERROR',
        'shop_move  sync         100.0%  1,234,567  1.5 kB / 0.5 s  12.0 MB reserved  alive    -',
        'crm        copy          42.5%      1,000  -               -                 alive    -',
        'hr_move    failed        10.0%          5  -               -                 stopped  copy: relation "x" does '
        'not exist',
        'new_one    not started       -          -  -               -                 -        -',
    ]


def test_status_table_shows_each_database_slot_wal():
    report = dict(COPYING, databases=[
        {'database': 'shop', 'retained_wal_bytes': 3 << 30, 'wal_status': 'extended', 'safe_wal_size': 1 << 30},
        {'database': 'crm', 'retained_wal_bytes': None, 'wal_status': 'lost', 'safe_wal_size': None},
        {'database': 'hr', 'retained_wal_bytes': None, 'wal_status': None, 'safe_wal_size': None}])
    line = task_table([{'task': 'crm_move', 'report': report}])[1]
    assert '  shop: 3.0 GB extended safe 1.0 GB; crm: - lost  ' in line, line


def test_summary_table_shows_result_and_detail_and_cuts_long_texts():
    lines = task_table([{'task': 'a', 'result': 'ok', 'report': SYNCING, 'detail': 'finish: done'},
                        {'task': 'b', 'result': 'failed', 'report': None, 'detail': 'verify: ' + 'x' * 300}],
                       kind='summary', max_width=40)
    assert lines[0].split() == ['TASK', 'RESULT', 'STAGE', 'COPIED', 'ROWS', 'LAG', 'DETAIL']
    assert lines[1].split()[:3] == ['a', 'ok', 'sync'] and lines[1].endswith('finish: done')
    assert lines[2].endswith('verify: ' + 'x' * 29 + '...')
    assert len(lines[2].split('  ')[-1].strip()) == 40


@pytest.mark.parametrize('value, text', [(None, '-'), (0, '0 B'), (1023, '1023 B'), (1024, '1.0 kB'),
                                         (5 * 1024 ** 3, '5.0 GB')])
def test_human_bytes(value, text):
    assert human_bytes(value) == text


def test_bad_input_is_a_clear_error():
    with pytest.raises(AnsibleFilterError, match='needs a "task" key'):
        task_table([{'report': SYNCING}])
    with pytest.raises(AnsibleFilterError, match='kind must be status or summary'):
        task_table([], kind='wide')
    with pytest.raises(AnsibleFilterError, match='expected a list'):
        task_table('shop_move')
    with pytest.raises(AnsibleFilterError, match='expected a check item'):
        check_line('source.wal_level')


def test_check_line():
    item = {'id': 'source.wal_level', 'status': 'failed', 'message': 'wal_level is replica,\n  logical needed',
            'hint': 'Set wal_level = logical and restart.'}
    assert check_line(item) == ('source.wal_level (failed): wal_level is replica, logical needed '
                                'Hint: Set wal_level = logical and restart.')
    assert check_line(item, hint=False) == 'source.wal_level (failed): wal_level is replica, logical needed'
    assert check_line(dict(item, hint='')) == 'source.wal_level (failed): wal_level is replica, logical needed'
