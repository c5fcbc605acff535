#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: pg_dts_info
short_description: Report PostgreSQL migration tasks without changing anything
version_added: 0.1.0
description:
  - Reads the durable state of migration tasks from the destination (database C(pgdts)) and reports stage, copy
    progress, lag and the last error, as M(pgdts.migration.pg_dts_migrate) does, but never starts or resumes anything.
  - Also tells whether the task's worker is alive on the host that runs this module.
author: pgdts developers (@pgdts)
extends_documentation_fragment:
  - pgdts.migration.connection.source
  - pgdts.migration.connection.destination
  - pgdts.migration.connection.attributes
attributes:
  check_mode:
    support: full
    details: The module never changes anything.
  diff_mode:
    support: none
options:
  name:
    description:
      - Task to report. When omitted, every task known to the destination is reported.
    type: str
  tables:
    description:
      - Include the per-table progress.
    type: bool
    default: false
  worker_dir:
    description:
      - The worker directory given to M(pgdts.migration.pg_dts_migrate), to tell whether the worker is alive.
    type: path
    default: ~/.pgdts
notes:
  - The O(source) connection is optional; with it the lag is measured against that server's current WAL position.
    Without it, each task's lag is measured against the task's own source, with the login the task's worker holds in
    O(worker_dir); when that is not there (the task ended, or another O(worker_dir)), against the source position the
    worker last recorded on the destination. The C(PG*) environment variables are not used for the source here.
'''

EXAMPLES = r'''
- name: Show one task
  pgdts.migration.pg_dts_info:
    name: shop_move
    destination: "{{ destination }}"
    source: "{{ source }}"
  register: shop_move

- name: List every task of a destination
  pgdts.migration.pg_dts_info:
    destination: "{{ destination }}"
'''

RETURN = r'''
tasks:
  description:
    - One record per task, as RV(pgdts.migration.pg_dts_migrate#module:task) describes, plus C(worker_alive).
    - Per database (C(databases)), the WAL its slot holds back on the source (C(retained_wal_bytes)), C(wal_status),
      C(safe_wal_size) and C(slot_invalidation), read on the source when it can be reached (O(source), or the task's
      own source login; see the notes), else null.
  returned: always
  type: list
  elements: dict
task:
  description: The record of O(name), or null when the task does not exist.
  returned: when O(name) is given
  type: dict
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgdts.migration.plugins.module_utils import ansible_common
from ansible_collections.pgdts.migration.plugins.module_utils.task_control import TaskControlError, task_infos


def main():
    argument_spec = ansible_common.server_argument_spec('source', 'destination')
    argument_spec.update(
        name=dict(type='str'),
        tables=dict(type='bool', default=False),
        worker_dir=dict(type='path', default='~/.pgdts'),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    ansible_common.ensure_psycopg(module)
    # without source, each task's own source (never the server libpq would reach by default)
    given = any(value not in (None, '') for value in (module.params['source'] or {}).values())
    source = ansible_common.server_spec(module, 'source') if given else None
    destination = ansible_common.server_spec(module, 'destination')
    try:
        tasks = task_infos(source, destination, module.params['name'], module.params['worker_dir'],
                           module.params['tables'])
    except TaskControlError as exc:
        module.fail_json(msg=exc.message, **exc.result)
    result = {'changed': False, 'tasks': tasks}
    if module.params['name']:
        result['task'] = tasks[0] if tasks else None
    module.exit_json(**result)


if __name__ == '__main__':
    main()
