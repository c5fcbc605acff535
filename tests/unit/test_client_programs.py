"""Which majors of pg_dump / pg_restore a pair of servers allows, and how the installed programs are chosen.

The programs are real: the Debian client of 15 and the cached 18 and 16 of tests/harness/pg_majors.py."""

from __future__ import annotations

import pytest

from ansible_collections.pgdts.migration.plugins.module_utils import schema
from tests.harness import pg_majors


@pytest.mark.parametrize('source, dest, bounds', [
    (120000, 180000, (18, None)), (180000, 180000, (18, None)), (130000, 170000, (17, None)),
    (140000, 160000, (16, 16)), (120000, 120000, (12, 16)), (150000, 150000, (15, 16)), (170000, 170000, (17, None)),
])
def test_bounds_of_a_pair(source, dest, bounds):
    assert schema.client_bounds(source, dest) == bounds


def test_the_newest_fitting_programs_are_chosen():
    new = pg_majors.install_clients(18)
    old = pg_majors.install_clients(16)
    # pg_bindir is used when it fits
    assert schema.client_bindir(new, 120000, 180000) == new
    assert schema.client_bindir(old, 140000, 160000) == old
    # pg_bindir of 18 does not fit a 16 destination: the newest fitting program elsewhere (Debian's 15 for 12->12)
    assert schema.client_major(schema.client_program('pg_dump', new, 12, 16)) in range(12, 17)
    # nothing fits: the message names what was found
    with pytest.raises(schema.SchemaError, match=r'pg_dump of PostgreSQL 16 is needed, found only .*\(15\)'):
        schema.client_program('pg_dump', None, 16, 16)
    with pytest.raises(schema.SchemaError, match='not found in'):
        schema.client_program('pg_dump', '/nonexistent')
