"""kill -9 of the worker at random moments of every stage, under write load; each followed by re-running the play.

Every seed is printed in its test id (`seed=7-index`): `pytest tests/reliability/test_kill_worker.py -k seed=7-`
replays exactly the same choice of stage and delay. The stage a seed targets is STAGES[seed % 5]; the moment inside
the stage is drawn with random.Random(seed). After the kill the play is run again (it resumes the task), the
cutover is run, and the test's own row-for-row comparison plus the ledger/counters and pgbench bookkeeping must
show every source change exactly once on the destination.
"""

from __future__ import annotations

import pytest

from tests.harness.fault_scenarios import STAGES, kill_scenario

SEEDS = list(range(1, 11))


@pytest.fixture(scope='module')
def servers(module_pg_factory):
    return module_pg_factory('ksrc'), module_pg_factory('kdst')


def seed_id(seed):
    return 'seed=%d-%s' % (seed, STAGES[seed % len(STAGES)])


@pytest.mark.slow
@pytest.mark.parametrize('seed', SEEDS, ids=seed_id)
def test_kill_worker_then_rerun(servers, ansible, tmp_path, seed):
    kill_scenario(servers, ansible, tmp_path, seed)
