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
  - The comparison proves the task's whole scope, read from the source's catalog at the fence (not from the tables
    the task registered when it started) - every table, partition and materialized view by rows, every sequence by
    value, for a whole-database task every large object (oid, owner when roles are migrated, md5 of the data), and the
    definitions of columns, indexes, constraints, triggers, views, functions, sequence parameters and extensions.
    Anything on one side only is a difference (a table created on the source during the sync is V(missing), a table
    on the destination only that the task's selection matches is V(extra), unless it was there before the task).
  - A mismatch with O(on_mismatch=fail) keeps the task and the sync as they are, lifts the fence and fails with the
    comparison in the result.
  - Running it again on a finished task returns the summary with RV(ignore:changed=false).
  - One finish of a task runs at a time. A second run while one is going on fails at once and changes nothing.
  - After the catch-up, under the fence, it reads the source catalog for tables in the task's scope that the task does
    not carry (created during the sync; DDL is not replicated) and refuses to finish, naming them, while one exists;
    and it copies the task's UNLOGGED tables again (their changes never reach the sync), before the comparison.
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
      - V(read_only) makes the migrated source databases read-only for new transactions and ends the sessions that
        are connected to them, so nothing commits on the source during the cutover. Undone if finish fails.
      - V(none) does not fence; the destination catches up to the source position when finish began.
    type: str
    choices: [none, read_only]
    default: read_only
  keep_source_fence:
    description:
      - Leave the source databases read-only after a successful cutover (the applications move to the destination).
    type: bool
    default: true
  compare:
    description:
      - V(checksum) compares a checksum of every row in key-ordered chunks and names differing keys, and an md5 of
        every large object.
      - V(count) compares row counts (and large objects by oid and owner); the result says that rows were not
        checksummed. V(none) skips the comparison.
      - With V(checksum) and V(count), sequences and definitions are compared too (see RV(comparison_summary)).
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
      - With V(false), a sequence whose value differs is a difference of the comparison (use O(on_mismatch=warn) to
        finish anyway).
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
  description:
    - What was compared, one item per object - every table, partition and materialized view (rows on each side, the
      result, and for a row mismatch the chunk key ranges and sample keys), every sequence, one item for the large
      objects of a database - and one item for each column, index, constraint, trigger, view, function, sequence
      definition or extension that differs.
    - Each item has C(database), C(kind) (V(table), V(partition), V(partitioned_table), V(matview), V(sequence),
      V(large_object), V(column), V(index), V(constraint), V(trigger), V(view), V(function),
      V(sequence_parameters), V(extension)), C(schema), C(table) (the table of a column, index, constraint or
      trigger, else the object's name), C(name), C(result) (V(match), V(mismatch), V(missing) on the destination,
      V(extra) on the destination, V(error)) and C(message); definitions that differ carry C(source) and
      C(destination) text.
  returned: when a comparison ran
  type: list
  elements: dict
  sample:
    - {database: shop, kind: index, schema: public, table: orders, name: orders_note_idx, result: missing,
       message: index public.orders.orders_note_idx is missing on the destination,
       source: CREATE INDEX orders_note_idx ON public.orders USING btree (note)}
comparison_summary:
  description:
    - What the proof covered. C(tables) is the number of relations compared by rows (tables, partitions and
      materialized views) and C(rows) their source rows; C(match), C(mismatch) and C(error) count objects of every
      kind (a V(missing) or V(extra) object counts as a mismatch).
    - C(kinds) gives per kind (C(tables), C(partitions), C(partitioned_tables), C(matviews), C(sequences),
      C(large_objects), C(columns), C(indexes), C(constraints), C(triggers), C(views), C(functions),
      C(sequence_parameters), C(extensions)) how many were C(compared) and how many C(match), C(mismatch) and
      C(error).
    - C(not_compared) lists what was not compared and why (for example rows with O(compare=count), large objects
      of a task that selects tables, owners when roles are not migrated); C(notes) lists what was noted (objects of
      the destination's own, extension versions, definitions compared by structure between different majors).
    - C(text) says all of it in one line; the module's C(msg) repeats it.
  returned: when a comparison ran
  type: dict
  sample:
    tables: 11
    match: 96
    mismatch: 0
    error: 0
    rows: 505425
    kinds: {tables: {compared: 9, match: 9, mismatch: 0, error: 0}, indexes: {compared: 12, match: 12, mismatch: 0,
            error: 0}}
    not_compared: [{kind: owners, reason: "roles are not migrated (migrate_roles is off): objects belong to the
                    destination login"}]
    notes: []
    text: "all match: 9 tables, 2 partitions, 3 sequences, 40 columns, 12 indexes (505425 rows); not compared: owners"
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
unlogged_recopied:
  description:
    - The task's UNLOGGED tables (database, schema, table, rows), copied again (C(TRUNCATE) and C(COPY)) under the write
      fence after the catch-up, because the sync cannot see their changes; then compared like the others.
  returned: success
  type: list
  elements: dict
left_out:
  description:
    - Tables of the scope without a usable replica identity that the task left out
      (O(pgdts.migration.pg_dts_migrate#module:replica_identity=exclude)), as C(database.schema.table). They were not
      copied, not synced and are not in the comparison.
  returned: success
  type: list
  elements: str
adopted_partitions:
  description:
    - Partitions created or attached on the source during the sync under a partitioned table of the task that joined
      the task at finish (the destination holds the same partition); they are in the comparison.
  returned: when there were any
  type: list
  elements: str
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
    module.exit_json(**result)


if __name__ == '__main__':
    main()
