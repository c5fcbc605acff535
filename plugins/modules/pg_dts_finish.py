#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: pg_dts_finish
short_description: Cut a PostgreSQL migration task over to the destination
version_added: 0.1.0
description:
  - Ends the incremental sync of a task started by M(pgdts.migration.pg_dts_migrate), the seed's "Finish" button.
  - Fences the writers of the migrated databases on the source (read-only), waits until the destination has applied
    everything up to the source's position after the fence, sets every sequence from the source, compares the data of
    both sides, and only then stops the worker and drops the slots, publications, origins and worker files.
  - The fence is proven, not assumed. After the catch-up, finish keeps watching for O(fence_settle) seconds and catches
    up again, and once more after the comparison; every source transaction that changed the migrated tables after
    the fence point reaches the worker through the sync, so a writer that got past the fence (see O(fence)) is seen,
    its changes are applied to the destination, and it is named in RV(fence_leaks), and finish fails or warns as
    O(on_fence_leak) says instead of reporting a clean cutover.
  - A fence that a failed or interrupted finish (an error, a timeout, SIGTERM or SIGHUP) set is lifted, and each
    database gets back its own C(default_transaction_read_only) setting from before the fence (kept in the task
    state); a finish that was killed outright leaves it for the next run of finish or a cancel of the task.
  - A mismatch with O(on_mismatch=fail) keeps the task and the sync as they are, lifts the fence and fails with the
    comparison in the result.
  - Running it again on a finished task returns the summary with RV(ignore:changed=false).
  - One finish of a task runs at a time. A second run while one is going on fails at once and changes nothing.
author: pgdts developers (@pgdts)
extends_documentation_fragment:
  - pgdts.migration.connection.source
  - pgdts.migration.connection.destination
  - pgdts.migration.connection.attributes
attributes:
  check_mode:
    support: full
    details: Reports whether the task would be finished; fences, compares and drops nothing.
  diff_mode:
    support: full
    details: Shows the task stage before and after.
options:
  name:
    description:
      - Task name.
    type: str
    required: true
  fence:
    description:
      - V(read_only) makes the migrated source databases read-only for new transactions
        (C(ALTER DATABASE ... SET default_transaction_read_only = on)) and ends every session connected to them
        (client backends, logical replication workers and other background workers that are connected to them)
        except this run's own, waiting until they are gone (at most O(wait_timeout) seconds, else finish fails).
        Undone if finish fails, with each database's own setting from before restored.
      - A client can still write through it (C(ALTER ROLE ... SET default_transaction_read_only = off),
        C(SET), C(BEGIN READ WRITE), C(-c) options); such writes are caught by the fence's proof, see
        O(on_fence_leak). Walsenders, autovacuum and parallel workers are not ended.
      - V(none) does not fence; the destination catches up to the source position when finish began.
    type: str
    choices: [none, read_only]
    default: read_only
  keep_source_fence:
    description:
      - Leave the source databases read-only after a successful cutover (the applications move to the destination).
    type: bool
    default: true
  on_fence_leak:
    description:
      - What finish does when a source transaction that changed the migrated tables committed after the fence
        (a writer got past it). Its changes are applied to the destination either way; RV(fence_leaks) names the
        transactions, their tables and the sessions that were seen writing.
      - V(fail) lifts the fence, keeps the task syncing and fails (the writer would otherwise go on writing to the
        source after the cutover, and those writes would be lost).
      - V(warn) finishes anyway and returns a warning.
    type: str
    choices: [fail, warn]
    default: fail
  fence_settle:
    description:
      - Seconds finish keeps watching the fenced source after the destination caught up to the fence, before it
        catches up again and judges the fence (a longer time catches a writer that writes less often). V(0) only
        catches up once more.
    type: float
    default: 2
  compare:
    description:
      - V(checksum) compares a checksum of every row in key-ordered chunks and names differing keys.
      - V(count) compares row counts. V(none) skips the comparison.
    type: str
    choices: [checksum, count, none]
    default: checksum
  on_mismatch:
    description:
      - V(fail) keeps the task syncing and fails. V(warn) finishes anyway and reports the mismatch.
    type: str
    choices: [fail, warn]
    default: fail
  sync_sequences:
    description:
      - Set every sequence of the selection on the destination from the source.
    type: bool
    default: true
  jobs:
    description:
      - Parallel comparison jobs per side.
    type: int
    default: 4
  wait_timeout:
    description:
      - Seconds to wait for the destination to catch up after the fence.
    type: int
    default: 600
  worker_dir:
    description:
      - The worker directory given to M(pgdts.migration.pg_dts_migrate).
    type: path
    default: ~/.pgdts
  worker_python:
    description:
      - Python interpreter for a worker that has to be started again to catch up.
    type: path
notes:
  - Run it on the host that runs the task's worker.
seealso:
  - module: pgdts.migration.pg_dts_migrate
'''

EXAMPLES = r'''
- name: Cut over with a read-only fence and a checksum comparison
  pgdts.migration.pg_dts_finish:
    name: shop_move
    source: "{{ source }}"
    destination: "{{ destination }}"

- name: Count rows only and give the source back its writers afterwards
  pgdts.migration.pg_dts_finish:
    name: shop_move
    source: "{{ source }}"
    destination: "{{ destination }}"
    compare: count
    keep_source_fence: false
'''

RETURN = r'''
comparison:
  description: Per table, rows on each side, the result, and for a mismatch the chunk key ranges and sample keys.
  returned: when a comparison ran
  type: list
  elements: dict
comparison_summary:
  description: Counts of matched, mismatched and failed tables and the rows compared.
  returned: when a comparison ran
  type: dict
final_lsn:
  description: Source WAL position the destination caught up to.
  returned: success
  type: str
  sample: 0/3A2B1C8
sequences:
  description: Sequences set on the destination (database, schema, sequence, last_value, is_called).
  returned: success
  type: list
  elements: dict
fence_leaks:
  description:
    - Per source database where the write fence leaked, the transactions that committed after the fence (xid,
      commit_lsn, commit_time, origin, changes, tables), their count, the subscriptions they came from (origin of a
      logical replication apply worker) and the sessions seen in that database after the fence (usename,
      application_name, client_addr, backend_type, pid, xids; C(certain) when one of its transaction ids is one
      of the leaked transactions).
  returned: success with O(fence=read_only), and failure with O(on_fence_leak=fail) when the fence leaked
  type: list
  elements: dict
fenced_sessions:
  description:
    - The sessions the fence ended (pid, database, usename, application_name, client_addr, backend_type).
    - On a failure to fence, the sessions that could not be ended or did not go (with the error).
  returned: with O(fence=read_only)
  type: list
  elements: dict
downtime_seconds:
  description: Seconds from the fence to the end of the cutover.
  returned: success with O(fence=read_only)
  type: float
task:
  description: The task's final record (see M(pgdts.migration.pg_dts_migrate)).
  returned: always
  type: dict
'''

import sys

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgdts.migration.plugins.module_utils import ansible_common
from ansible_collections.pgdts.migration.plugins.module_utils.cutover import Finisher
from ansible_collections.pgdts.migration.plugins.module_utils.task_control import TaskControl, TaskControlError


def main():
    argument_spec = ansible_common.server_argument_spec('source', 'destination')
    argument_spec.update(
        name=dict(type='str', required=True),
        fence=dict(type='str', choices=['none', 'read_only'], default='read_only'),
        keep_source_fence=dict(type='bool', default=True),
        compare=dict(type='str', choices=['checksum', 'count', 'none'], default='checksum'),
        on_mismatch=dict(type='str', choices=['fail', 'warn'], default='fail'),
        on_fence_leak=dict(type='str', choices=['fail', 'warn'], default='fail'),
        fence_settle=dict(type='float', default=2),
        sync_sequences=dict(type='bool', default=True),
        jobs=dict(type='int', default=4),
        wait_timeout=dict(type='int', default=600),
        worker_dir=dict(type='path', default='~/.pgdts'),
        worker_python=dict(type='path'),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    ansible_common.ensure_psycopg(module)
    source = ansible_common.server_spec(module, 'source')
    destination = ansible_common.server_spec(module, 'destination')
    params = dict(module.params)
    params['worker_python'] = params['worker_python'] or sys.executable
    try:
        control = TaskControl(params, source, destination, check_mode=module.check_mode)
        result = Finisher(control, params).run()
    except TaskControlError as exc:
        module.fail_json(msg=exc.message, **exc.result)
    for warning in result.pop('warnings', None) or ():
        module.warn(warning)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
