"""maintenance_work_mem of pg_dts_migrate: what is accepted, how it is written into PGOPTIONS."""

from __future__ import annotations

import pytest

from ansible_collections.pgdts.migration.plugins.module_utils import schema
from ansible_collections.pgdts.migration.plugins.module_utils.connection import ServerSpec


@pytest.mark.parametrize('given, expected', [
    ('512MB', '512MB'), ('2GB', '2GB'), (' 1 GB ', '1GB'), ('65536', '65536kB'), ('1024kB', '1024kB'),
    (None, None),
])
def test_memory_sizes_are_normalized(given, expected):
    assert schema.memory_setting(given) == expected


@pytest.mark.parametrize('given, reason', [
    ('lots', 'not a memory size'), ('512mb', 'not a memory size'), ('1.5GB', 'not a memory size'),
    ('-1MB', 'not a memory size'), ('0', 'not a memory size'), ('512MB -c fsync=off', 'not a memory size'),
    ('512kB', 'out of range'), ('3TB', 'out of range'),
])
def test_other_values_are_refused_with_the_reason(given, reason):
    with pytest.raises(ValueError, match=reason):
        schema.memory_setting(given)


def test_restore_sessions_get_the_setting_in_pgoptions():
    spec = ServerSpec.from_options({'host': '127.0.0.1', 'port': 5432, 'user': 'postgres', 'password': 'x'},
                                   environ={})
    assert 'maintenance_work_mem' not in schema._restore_env(spec, 'db')['PGOPTIONS']
    options = schema._restore_env(spec, 'db', '1 GB')['PGOPTIONS']
    assert options.endswith(' -c maintenance_work_mem=1GB')
    assert options.startswith(schema.RESTORE_OPTIONS)
