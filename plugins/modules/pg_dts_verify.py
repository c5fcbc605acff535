#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: pg_dts_verify
short_description: Check that a source and a destination PostgreSQL server are ready for a pgdts migration task
version_added: 0.1.0
description:
  - Runs the pre-migration check catalogue of a task and returns one item per check, each with a stable id, a status
    (C(pass), C(warning) or C(failed)), a message that says what was found, a hint that says how to fix it, and the
    objects concerned.
  - "The items cover: connectivity and authentication (normal and replication connections), server versions, the
    client programs of the worker host, source settings (C(wal_level), free replication slots and WAL senders,
    C(max_slot_wal_keep_size), C(wal_sender_timeout), C(statement_timeout), C(idle_in_transaction_session_timeout)),
    privileges on both sides, the decoding plugin (loaded in a temporary slot), objects left over from a task of the
    same name, long-running and prepared transactions, the selected tables (replica identity, triggers, rules,
    unlogged tables, materialized views, large objects, generated columns, foreign keys to unselected tables, patterns
    that match nothing), extensions, encodings and collations, and conflicts, free space and replication origins on
    the destination."
  - M(pgdts.migration.pg_dts_migrate) runs the same checks before it starts a task and refuses to start while one has
    failed.
  - When the destination's state database holds a resumable task of this O(name), the task's own slots,
    publications, replication origins and partly copied tables are expected and pass.
  - The module never changes either server. The plugin check creates a TEMPORARY logical replication slot in its own
    session and drops it; nothing remains. Check mode and normal mode behave the same.
author:
  - pgdts developers (@pgdts)
options:
  name:
    description:
      - Name of the migration task. It names the task's replication slots, publications and replication origins.
      - Lower-case letters, digits and underscores, starting with a letter, at most 40 characters.
    type: str
    required: true
  databases:
    description:
      - Source databases to migrate.
      - Default is every non-template database of the source that allows connections, except the pgdts state
        database C(pgdts).
    type: list
    elements: str
  tables:
    description:
      - Tables to migrate, as C(schema.table) or C(database.schema.table) patterns; C(*) and C(?) are globs.
      - Quote names that contain dots, for example C('"my.schema".orders').
      - A selected partitioned table brings its partitions.
      - Default is every table of the selected databases.
    type: list
    elements: str
  exclude_tables:
    description:
      - Patterns, as in O(tables), of tables to leave out.
    type: list
    elements: str
  plugin:
    description:
      - Logical decoding plugin the task uses on the source.
    type: str
    choices: [pgoutput, wal2json]
    default: pgoutput
  incremental:
    description:
      - Whether the task keeps the destination in sync after the full copy.
      - Without it, missing replica identities and unlogged tables do not matter.
    type: bool
    default: true
  migrate_roles:
    description:
      - Whether the task copies the source's roles (O(pgdts.migration.pg_dts_migrate#module:migrate_roles)). With it,
        the check C(destination.roles) lists the roles to create and fails when the destination login may not create
        them; it warns when the source login may not read the password hashes.
    type: bool
    default: false
  replica_identity:
    description:
      - The task's O(pgdts.migration.pg_dts_migrate#module:replica_identity) option. Selected tables without a usable
        replica identity make C(tables.replica_identity) fail with V(fail) (the default), warn with V(full) (the task
        sets C(REPLICA IDENTITY FULL) on them; fails when the source login does not own them) and warn with
        V(exclude) (they are left out of the task and of the comparison).
    type: str
    choices: [fail, full, exclude]
    default: fail
  fail_on:
    description:
      - When the module fails.
      - V(failed) fails when any check failed, V(warning) also when any check warned, V(never) only reports.
    type: str
    choices: [failed, warning, never]
    default: failed
  pg_bindir:
    description:
      - Directory of the PostgreSQL client programs the task's worker will run
        (O(pgdts.migration.pg_dts_migrate#module:pg_bindir)). The check C(worker.client_programs) fails when neither
        it nor C(/usr/lib/postgresql/*/bin), C(/usr/pgsql-*/bin) or C(PATH) holds a C(pg_dump) and C(pg_restore) of
        a major version at least that of the source and of the destination (and of 16 or older for a destination
        before 17).
      - The module looks on the host it runs on, so run it on the worker host.
    type: path
  max_retained_wal:
    description:
      - The task's O(pgdts.migration.pg_dts_migrate#module:max_retained_wal) option (a size such as V(10GB)). Without it,
        the check C(source.wal_retention) warns when the source's C(max_slot_wal_keep_size) is V(-1) (or does not
        exist, before 13); nothing would then stop the task's slot from holding back WAL until the source's disk is
        full.
    type: str
extends_documentation_fragment:
  - pgdts.migration.connection.source
  - pgdts.migration.connection.destination
  - pgdts.migration.connection.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
notes:
  - The role of O(source) needs C(REPLICATION) (or superuser) and read access to the selected tables; the role of
    O(destination) sees more (free disk space, replication origins in use) when it is a superuser.
  - Free disk space on the destination can only be measured when the module runs on the destination host.
  - "Tested sources: PostgreSQL 12 to 18 with V(pgoutput), 15 with V(wal2json), into a destination of the same or a
    newer major. C(source.version) warns about sources older than 12 or newer than 18."
  - The check C(worker.client_programs) looks at the host the module runs on; run it on the worker host.
seealso:
  - module: pgdts.migration.pg_dts_source_config
  - module: pgdts.migration.pg_dts_migrate
'''

EXAMPLES = r'''
- name: Verify a task that migrates two databases
  pgdts.migration.pg_dts_verify:
    name: shop_move
    source:
      host: old-db.example.com
      user: migrator
      password: "{{ vault_source_password }}"
    destination:
      host: new-db.example.com
      user: postgres
      password: "{{ vault_destination_password }}"
    databases: [shop, billing]
  register: verify

- name: Show what needs attention
  ansible.builtin.debug:
    msg: "{{ item.id }}: {{ item.message }} -- {{ item.hint }}"
  loop: "{{ verify.checks | rejectattr('status', 'equalto', 'pass') | list }}"

- name: Verify a selection of tables without incremental sync, failing on warnings too
  pgdts.migration.pg_dts_verify:
    name: reports_copy
    source:
      host: old-db.example.com
      user: migrator
    destination:
      host: new-db.example.com
      user: postgres
    databases: [shop]
    tables: ['public.orders', 'public.order_*', 'reporting.*']
    exclude_tables: ['reporting.tmp_*']
    incremental: false
    fail_on: warning

- name: Only report, for a dashboard
  pgdts.migration.pg_dts_verify:
    name: shop_move
    source: "{{ source_conn }}"
    destination: "{{ destination_conn }}"
    plugin: wal2json
    fail_on: never
  register: report
'''

RETURN = r'''
checks:
  description:
    - One item per check, always in the same order.
    - The ids do not depend on the task and are stable across releases.
  returned: always
  type: list
  elements: dict
  contains:
    id:
      description: Stable id of the check, for example C(source.wal_level), C(tables.replica_identity), C(destination.conflicts).
      type: str
      sample: tables.foreign_keys
    status:
      description: C(pass), C(warning) (the task can run but something may go wrong or need care) or C(failed) (the task cannot run).
      type: str
      sample: failed
    message:
      description: What was found, naming the objects.
      type: str
      sample: >-
        selected tables reference tables that are not selected, so their foreign keys cannot be created on the
        destination: shop.public.orders references shop.public.customers (constraint orders_customer_id_fkey)
    hint:
      description: How to fix it; empty for most passed items.
      type: str
      sample: Add the referenced tables to tables (shop.public.customers), or exclude the referencing tables.
    objects:
      description:
        - The objects concerned, as dicts with a C(type) key (C(table), C(column), C(foreign_key), C(setting),
          C(replication_slot), C(publication), C(replication_origin), C(session), C(database), C(schema),
          C(extension), ...) and the names that identify them (C(database), C(schema), C(name), ...).
      type: list
      elements: dict
      sample:
        - {type: foreign_key, database: shop, schema: public, table: orders, name: orders_customer_id_fkey,
           references: public.customers}
  sample:
    - id: source.wal_level
      status: pass
      message: wal_level is logical
      hint: ''
      objects: [{type: setting, name: wal_level, value: logical, required: logical}]
summary:
  description: Number of items per status.
  returned: always
  type: dict
  sample: {pass: 40, warning: 2, failed: 1}
passed:
  description: True when no check failed (warnings allowed), which is when M(pgdts.migration.pg_dts_migrate) starts a task.
  returned: always
  type: bool
  sample: false
failed_checks:
  description: Ids of the items that made the module fail under O(fail_on); empty when it did not fail.
  returned: always
  type: list
  elements: str
  sample: [tables.foreign_keys]
resuming:
  description:
    - True when the destination's state database holds a task of this name that can be resumed (not finished or
      cancelled). Its own slots, publications, origins and partly copied tables are then expected, not conflicts.
  returned: always
  type: bool
  sample: false
msg:
  description: One line summary.
  returned: always
  type: str
  sample: 'verification failed: 1 check failed: tables.foreign_keys'
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgdts.migration.plugins.module_utils import ansible_common
from ansible_collections.pgdts.migration.plugins.module_utils.catalog import SelectionError
from ansible_collections.pgdts.migration.plugins.module_utils.checks import (
    FAILED, WARNING, run_checks, summarize, task_is_resumable, validate_options,
)
from ansible_collections.pgdts.migration.plugins.module_utils.schema import size_kilobytes
from ansible_collections.pgdts.migration.plugins.module_utils.task_state import TaskNameError


def blocking_items(items, fail_on):
    """Items that fail the module under `fail_on`."""
    if fail_on == 'never':
        return []
    statuses = (FAILED, WARNING) if fail_on == 'warning' else (FAILED,)
    return [item for item in items if item['status'] in statuses]


def main():
    argument_spec = dict(
        name=dict(type='str', required=True),
        databases=dict(type='list', elements='str'),
        tables=dict(type='list', elements='str'),
        exclude_tables=dict(type='list', elements='str'),
        plugin=dict(type='str', default='pgoutput', choices=['pgoutput', 'wal2json']),
        incremental=dict(type='bool', default=True),
        migrate_roles=dict(type='bool', default=False),
        replica_identity=dict(type='str', default='fail', choices=['fail', 'full', 'exclude']),
        fail_on=dict(type='str', default='failed', choices=['failed', 'warning', 'never']),
        pg_bindir=dict(type='path'),
        max_retained_wal=dict(type='str'),
    )
    argument_spec.update(ansible_common.server_argument_spec('source', 'destination'))
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    ansible_common.ensure_psycopg(module)
    params = module.params
    try:
        validate_options(params['name'], params['tables'], params['exclude_tables'], params['plugin'])
    except (TaskNameError, SelectionError) as exc:
        module.fail_json(msg=str(exc), changed=False)
    try:
        max_retained_wal = size_kilobytes(params['max_retained_wal'])[1]
    except ValueError as exc:
        module.fail_json(msg='max_retained_wal: %s' % exc, changed=False)
    source = ansible_common.server_spec(module, 'source')
    destination = ansible_common.server_spec(module, 'destination')

    resuming = task_is_resumable(destination, params['name'])
    items = run_checks(source, destination, params['name'], databases=params['databases'], tables=params['tables'],
                       exclude_tables=params['exclude_tables'], plugin=params['plugin'],
                       incremental=params['incremental'], resuming=resuming, migrate_roles=params['migrate_roles'],
                       replica_identity=params['replica_identity'],
                       pg_bindir=params['pg_bindir'], max_retained_wal=max_retained_wal)
    summary = summarize(items)
    blocking = blocking_items(items, params['fail_on'])
    result = dict(changed=False, checks=items, summary=summary, passed=summary[FAILED] == 0,
                  failed_checks=[item['id'] for item in blocking], resuming=resuming)
    counts = '%d passed, %d warning, %d failed' % (summary['pass'], summary[WARNING], summary[FAILED])
    if blocking:
        failed = [item['id'] for item in blocking if item['status'] == FAILED]
        warned = [item['id'] for item in blocking if item['status'] == WARNING]
        parts = []
        if failed:
            parts.append('%d check%s failed: %s' % (len(failed), '' if len(failed) == 1 else 's', ', '.join(failed)))
        if warned:
            parts.append('%d check%s warned: %s' % (len(warned), '' if len(warned) == 1 else 's', ', '.join(warned)))
        module.fail_json(msg='verification of task %s failed (fail_on=%s): %s' % (
            params['name'], params['fail_on'], '; '.join(parts)), **result)
    module.exit_json(msg='verification of task %s: %s' % (params['name'], counts), **result)


if __name__ == '__main__':
    main()
