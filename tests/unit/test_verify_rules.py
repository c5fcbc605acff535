"""Pure decision rules of the verify catalogue that real clusters of one version cannot reach."""

from __future__ import annotations

import pytest

from ansible_collections.pgdts.migration.plugins.module_utils import checks
from ansible_collections.pgdts.migration.plugins.module_utils.connection import ServerSpec


@pytest.mark.parametrize('source, dest, status, words', [
    (150004, 150010, 'pass', 'same major version (15)'),
    (150004, 160001, 'warning', 'destination runs PostgreSQL 16, source 15'),
    (160001, 150004, 'failed', 'older than the source (16)'),
    (110022, 170000, 'warning', 'major version upgrade'),
])
def test_compare_versions(source, dest, status, words):
    got_status, message = checks.compare_versions(source, dest)
    assert got_status == status
    assert words in message


@pytest.mark.parametrize('source, dest, status', [
    ('UTF8', 'UTF8', 'pass'),
    ('LATIN1', 'UTF8', 'warning'),
    ('UTF8', 'SQL_ASCII', 'warning'),
    ('SQL_ASCII', 'UTF8', 'warning'),
    ('UTF8', 'LATIN1', 'failed'),
    ('WIN1252', 'LATIN1', 'failed'),
])
def test_encoding_status(source, dest, status):
    assert checks.encoding_status(source, dest)[0] == status


@pytest.mark.parametrize('required, free, status', [
    (100, 1000, 'pass'),
    (100, 150, 'pass'),
    (100, 149, 'warning'),
    (100, 100, 'warning'),
    (100, 99, 'failed'),
    (0, 0, 'pass'),
])
def test_disk_space_status(required, free, status):
    assert checks.disk_space_status(required, free)[0] == status


def test_summarize_counts_each_status():
    items = [{'status': 'pass'}, {'status': 'failed'}, {'status': 'pass'}, {'status': 'warning'}]
    assert checks.summarize(items) == {'pass': 2, 'warning': 1, 'failed': 1}
    assert checks.summarize([]) == {'pass': 0, 'warning': 0, 'failed': 0}


def test_catalogue_ids_are_unique_and_one_per_check():
    assert len(checks.CHECK_IDS) == len(set(checks.CHECK_IDS)) == len(checks.ITEMS)
    assert all(i.count('.') == 1 for i in checks.CHECK_IDS)


def test_run_checks_never_raises_for_bad_options():
    """Nothing listens on port 1: every item still comes back, failed with a reason, none as an exception."""
    nowhere = ServerSpec(host='127.0.0.1', port=1, user='x', connect_timeout=2)
    items = checks.run_checks(nowhere, nowhere, 'Bad Name', tables=['a.b.c.d'])
    by_id = {i['id']: i for i in items}
    assert [i['id'] for i in items] == list(checks.CHECK_IDS)
    assert by_id['task.name']['status'] == 'failed'
    assert by_id['tables.selection']['status'] == 'failed'
    assert by_id['source.connection']['status'] == 'failed'
    assert 'cannot reach 127.0.0.1:1' in by_id['source.connection']['message']
    # only the items that do not apply pass: numeric values (pgoutput), roles (migrate_roles is off)
    assert {i['id'] for i in items if i['status'] != 'failed'} == {'plugin.numeric_special_values', 'destination.roles'}
    assert 'the check itself failed' not in repr(items)
    roles_item = [i for i in checks.run_checks(nowhere, nowhere, 'task', migrate_roles=True)
                  if i['id'] == 'destination.roles'][0]
    assert roles_item['status'] == 'failed' and 'could not connect' in roles_item['message'], roles_item
