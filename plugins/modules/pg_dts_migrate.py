#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: pg_dts_migrate
short_description: Start, report, resume or cancel a PostgreSQL migration task
version_added: 0.1.0
description:
  - Runs the pre-migration checks of M(pgdts.migration.pg_dts_verify) and refuses to start while any item failed.
  - Starts a named migration task in a detached worker process on the host that runs the module. The worker copies the
    schema and the data of the selected databases and tables from one consistent snapshot in parallel, builds indexes
    and constraints, refreshes materialized views (in dependency order), sets sequences (those the selected tables
    use wherever they live, every one of the database for a whole-database task), and then keeps the destination
    following the source (incremental sync) until M(pgdts.migration.pg_dts_finish) ends it.
  - A whole-database task also copies the large objects (same oids; owners and privileges with O(migrate_roles))
    under the copy's snapshot; M(pgdts.migration.pg_dts_finish) brings their later changes over. A table selection
    does not carry large objects.
  - Idempotent. Running it again reports the progress of a running task with RV(ignore:changed=false), resumes a task
    whose worker died or failed (without copying finished tables again), and never starts a second copy.
  - Durable task state lives on the destination in the database C(pgdts).
  - The incremental sync streams each database's replication slot over a replication connection (one walsender per
    database, as the checks count for C(max_wal_senders)). When the source refuses that connection, the worker
    reads the slot through the SQL functions instead, which is slower, and says so in its log.
  - O(state=absent) cancels the task, stops its worker, and drops its replication slots, publications and replication
    origins; with O(drop_destination=true) it also removes what the task created on the destination.
author: pgdts developers (@pgdts)
extends_documentation_fragment:
  - pgdts.migration.connection.source
  - pgdts.migration.connection.destination
  - pgdts.migration.connection.attributes
attributes:
  check_mode:
    support: full
    details: Runs the checks and reports whether a task would be started, resumed or cancelled, without doing it.
  diff_mode:
    support: full
    details: Shows the task stage before and after.
options:
  name:
    description:
      - Task name. Lower-case letters, digits and underscores, starting with a letter, at most 40 characters.
    type: str
    required: true
  state:
    description:
      - V(present) starts the task, or reports it when it exists.
      - V(absent) cancels the task.
    type: str
    choices: [present, absent]
    default: present
  databases:
    description:
      - Source databases to migrate. Default is every non-template database of the source that accepts connections.
    type: list
    elements: str
  tables:
    description:
      - Only these tables, as C(schema.table) or C(database.schema.table) patterns; C(*) and C(?) are wildcards.
      - Default is every table of the selected databases.
    type: list
    elements: str
  exclude_tables:
    description:
      - Tables to leave out, with the same patterns as O(tables).
    type: list
    elements: str
  plugin:
    description:
      - Logical decoding output plugin used for incremental sync.
    type: str
    choices: [pgoutput, wal2json]
    default: pgoutput
  incremental:
    description:
      - Keep the destination following the source after the full copy. With V(false) the task copies once, drops its slot
        and ends as V(finished).
    type: bool
    default: true
  jobs:
    description:
      - Parallel copy streams and index builds.
    type: int
    default: 4
  maintenance_work_mem:
    description:
      - C(maintenance_work_mem) of the destination sessions that build the copied tables' indexes and constraints,
        as a PostgreSQL memory size (V(512MB), V(2GB)). A sort that fits in it is done in memory; a larger one spills
        to temporary files, which is slower. Up to O(jobs) such sessions run at once, so the destination may use up to
        O(jobs) times this much memory for them (a session takes only what its sort needs).
      - The server's own setting applies to nothing else.
    type: str
    default: 512MB
  max_retained_wal:
    description:
      - The most WAL the task's replication slots may hold back on the source, as a size (V(10GB), V(500MB); the
        units of PostgreSQL memory settings, kB, MB, GB or TB), for each slot. Unset (the default), the guard is off.
      - A slot keeps every WAL segment from its C(restart_lsn) on until the destination has applied it. During the
        copy that is all the WAL since the copy began; during the sync, all the WAL written while the destination or
        the worker is down or behind. Without a limit a stopped destination makes the source's disk fill up.
      - The worker measures C(pg_current_wal_lsn() - restart_lsn) of the task's slots every few seconds during copy
        and sync. Past the limit it protects the source first - it drops the task's slots (the source frees that WAL
        at its next checkpoint) - and the task fails with a message that says how much was retained and the limit.
        Such a task cannot be resumed (the changes since the last sync are gone with the slot); cancel it with
        O(state=absent) and O(drop_destination=true) and start it again.
      - The source's C(max_slot_wal_keep_size) (13+) is the server's own limit; it invalidates the slot instead of
        dropping it (the task then fails as well). This option works on every major and names the task in its message.
    type: str
  pg_bindir:
    description:
      - Directory of the PostgreSQL client programs (C(pg_dump), C(pg_restore), C(psql)) the worker runs, on the
        worker host, for example V(/usr/lib/postgresql/18/bin).
      - They must be of a major version at least that of the source and of the destination (C(pg_dump) refuses a
        newer server, C(pg_restore) an archive of a newer C(pg_dump)), and of 16 or older when the destination runs
        16 or older (C(pg_restore) of 17 and newer sends C(SET transaction_timeout), which older servers reject).
        Without this option, or when its programs do not fit, the newest fitting ones found among
        C(/usr/lib/postgresql/*/bin), C(/usr/pgsql-*/bin) and C(PATH) are used; M(pgdts.migration.pg_dts_verify)
        fails its C(worker.client_programs) check when there are none.
      - Set when the task is created; a resumed task keeps the value it was created with.
    type: path
  start_at:
    description:
      - ISO 8601 time at which the task starts (stage V(scheduled) until then). A time without zone is local time.
    type: str
  drop_destination:
    description:
      - With O(state=absent), also remove what the task created on the destination, so that a new run can start
        clean. A database the task created is dropped. In a database that existed before the task, exactly the
        objects that were not there before the task's schema restore are dropped (tables, sequences, views, types,
        domains, functions, schemas, extensions, ...); what the database held before stays.
    type: bool
    default: false
  protect_destination:
    description:
      - While the task syncs, make the migrated destination databases read-only for every other session
        (C(default_transaction_read_only)), so nothing writes behind the task's back. Lifted by finish and cancel.
    type: bool
    default: true
  migrate_roles:
    description:
      - Bring the source's roles to the destination and keep object owners and privileges (C(GRANT)s) in the schema.
      - Once per task, before the first database's schema, the worker reads every role of the source except the
        predefined C(pg_*) roles and the bootstrap superuser, and creates each one the destination lacks, in one
        transaction, with the same attributes (C(SUPERUSER), C(CREATEDB), C(CREATEROLE), C(INHERIT), C(LOGIN),
        C(REPLICATION), C(BYPASSRLS), C(CONNECTION LIMIT), C(VALID UNTIL)), its role memberships (with C(ADMIN OPTION))
        and its role-wide settings (C(ALTER ROLE ... SET), not those set for one database only). The task's log says
        which roles were created and which were kept.
      - Roles that already exist on the destination are not altered (attributes, password, settings stay as they
        are); memberships between them and the roles the task creates are granted.
      - Password hashes are copied only when the source login may read C(pg_authid) (a superuser). Otherwise the
        roles are created without password, the task's log names the login roles concerned, and setting their
        passwords is left to the user. A hash is never logged or returned; the worker turns statement logging off for
        its transaction when the destination login may do so (a superuser).
      - Creating roles needs C(CREATEROLE) on the destination; copying a superuser role (and, up to PostgreSQL 15,
        a C(REPLICATION) or C(BYPASSRLS) role) needs a destination superuser. When that is missing the task fails at
        stage V(schema) with an error that names the roles, and no role is created. Restoring owners needs a
        destination login that may take each owner role (a superuser, or a member of those roles).
    type: bool
    default: false
  replica_identity:
    description:
      - What the task does with selected tables that have no usable replica identity (no primary key under
        C(REPLICA IDENTITY DEFAULT), C(NOTHING), or a C(USING INDEX) identity whose index is gone). A publication that
        publishes their updates makes every C(UPDATE) and C(DELETE) of the source's application on them fail, so the
        task never publishes them as they are; the check is made again right before the publication is created.
      - V(fail) refuses to start (check C(tables.replica_identity) fails; the hint names the fixes).
      - V(full) runs C(ALTER TABLE ... REPLICA IDENTITY FULL) on them on the source before the publication is created
        (the source login must own them). Cost - every C(UPDATE) and C(DELETE) on them writes the whole old row to the
        WAL (nothing for insert-only tables), and the sync matches updated and deleted rows on all columns. The setting
        stays after the task; C(ALTER TABLE ... REPLICA IDENTITY DEFAULT) undoes it.
      - V(exclude) leaves them out of the task - not copied (their definition is created empty in a whole-database
        task), not synced, and not in the comparison of M(pgdts.migration.pg_dts_finish), whose result lists them in
        RV(pgdts.migration.pg_dts_finish#module:left_out).
      - Unlogged tables are never published (see the notes), so this does not apply to them.
    type: str
    choices: [fail, full, exclude]
    default: fail
  wait:
    description:
      - V(none) returns once the task runs. V(copied) waits until the full copy and indexes are done.
        V(synced) waits until the destination has caught up with the source.
    type: str
    choices: [none, copied, synced]
    default: none
  wait_timeout:
    description:
      - Seconds to wait with O(wait). When they pass the module fails, but the task keeps running.
    type: int
    default: 3600
  wait_sleep:
    description:
      - Seconds between two progress reads while waiting.
    type: int
    default: 2
  retry_timeout:
    description:
      - Seconds the worker keeps retrying when the source or the destination cannot be reached during sync, before the
        task fails.
    type: int
    default: 600
  worker_dir:
    description:
      - Directory of the worker's lock, log, engine code and 0600 credential file, one sub-directory per task.
    type: path
    default: ~/.pgdts
  worker_python:
    description:
      - Python interpreter that runs the worker. Default is the interpreter that runs this module.
    type: path
notes:
  - The worker runs on the host that runs the module; use C(delegate_to) to choose the worker host, and run
    M(pgdts.migration.pg_dts_finish) and later calls of this module on the same host.
  - DDL is not replicated. A table created on the source during the sync in the task's scope (any table for a
    whole-database task, a table matching O(tables) and not O(exclude_tables) otherwise) stops the task (stage
    V(failed)) with an error that names it, and M(pgdts.migration.pg_dts_finish) refuses to finish while one exists;
    tables out of scope are ignored. A partition created or attached during the sync under a partitioned table of the
    task is synced into the destination's partition of the same name, which must exist there attached to the same
    parent (else the task stops and says so; create it on the destination and run this module again to resume).
  - UNLOGGED tables write no WAL, so the sync cannot see their changes. They are copied by the full copy, left out of
    the publication and the sync, and copied again (C(TRUNCATE) and C(COPY)) by M(pgdts.migration.pg_dts_finish)
    under the write fence.
  - "Tested sources: PostgreSQL 12 to 18 with V(pgoutput), 15 with V(wal2json); the destination runs the same or a
    newer major (tested pairs: 12 to 18, 13 to 17, 14 to 16, 15 to 18, 16 to 17, 17 to 18, 18 to 18, 12 to 12)."
  - On a PostgreSQL 12 source the publication lists the leaf partitions of a partitioned table (12 cannot publish a
    partitioned table); changes reach the same partitions of the destination on every major.
  - The client programs must fit both servers (see O(pg_bindir)); for a destination before 17 they must be of 16 or
    older, since C(pg_restore) of 17 and newer sends C(SET transaction_timeout).
seealso:
  - module: pgdts.migration.pg_dts_verify
  - module: pgdts.migration.pg_dts_finish
'''

EXAMPLES = r'''
- name: Migrate two databases with incremental sync, and wait until the copy is done
  pgdts.migration.pg_dts_migrate:
    name: shop_move
    source:
      host: old-db.example.com
      user: migrator
      password: "{{ vault_migrator_password }}"
    destination:
      host: new-db.example.com
      user: postgres
      password: "{{ vault_destination_password }}"
    databases: [shop, billing]
    jobs: 4
    wait: copied

- name: Migrate two tables at night
  pgdts.migration.pg_dts_migrate:
    name: orders_only
    source: "{{ source }}"
    destination: "{{ destination }}"
    databases: [shop]
    tables: [public.orders, public.order_lines]
    start_at: "2026-12-01T02:00:00+01:00"

- name: Cancel a task and remove what it created on the destination
  pgdts.migration.pg_dts_migrate:
    name: orders_only
    source: "{{ source }}"
    destination: "{{ destination }}"
    state: absent
    drop_destination: true
'''

RETURN = r'''
task:
  description: The task as it stands.
  returned: when the task exists
  type: dict
  contains:
    name:
      description: Task name.
      type: str
    stage:
      description: One of scheduled, schema, copy, index, sync, finishing, finished, failed, cancelled.
      type: str
      sample: copy
    totals:
      description: Tables, tables copied, rows, bytes, estimated bytes, percent and ETA in seconds of the full copy.
      type: dict
    tables:
      description: Per table, its state (pending, copying, copied; tables under 8 MB go from pending to copied), rows, bytes,
        percent and the LSN it was copied at.
      type: list
      elements: dict
    lag_bytes:
      description: Largest distance in bytes between the source WAL position and what the destination has committed.
      type: int
    lag_seconds:
      description: Age of the newest source commit applied on the destination while behind; 0 when caught up.
      type: float
    transactions_per_second:
      description: Applied source transactions per second over the last seconds.
      type: float
    databases:
      description:
        - Per database sync progress (slot, synced and source LSN, lag, applied transactions).
        - What the database's slot holds back on the source, read when the source can be reached (else null)
          C(retained_wal_bytes) (the WAL the slot keeps, C(pg_current_wal_lsn() - restart_lsn); compare it with
          O(max_retained_wal)), C(wal_status) (V(reserved), V(extended), V(unreserved) or V(lost); 13+, null on 12),
          C(safe_wal_size) (bytes the source may still write before the slot is invalidated by
          C(max_slot_wal_keep_size); null when that is V(-1), and on 12) and C(slot_invalidation) (why the source
          invalidated the slot - C(invalidation_reason) on 17+, V(conflicting) on 16, V(lost) - or null).
      type: list
      elements: dict
    error:
      description:
        - When failed, the stage, message and the failing object (table, key, LSN, statement), and the C(type) of the
          error. V(WalRetentionExceeded) (the worker dropped the task's slots because one held back more than
          O(max_retained_wal)) and V(SlotInvalidated) (the source invalidated or lost the slot) cannot be resumed; the
          task needs a new copy.
      type: dict
    log:
      description: The last events of the task.
      type: list
      elements: dict
checks:
  description: The pre-migration check items (see M(pgdts.migration.pg_dts_verify)) when the task was started.
  returned: when checks ran
  type: list
  elements: dict
action:
  description: What this call did, one of started, reported, resumed, cancelled, none.
  returned: always
  type: str
  sample: started
would_drop:
  description:
    - In check mode with O(state=absent) and O(drop_destination=true), what the cancel would remove from the
      destination, C(database), C(type) and C(name) each (type C(database) for a database the task created). The diff
      lists the same objects.
  returned: in check mode, with O(state=absent) and O(drop_destination=true)
  type: list
  elements: dict
  sample: [{"database": "shop", "type": "table", "name": "public.orders"}, {"database": "shop", "type": "type", "name": "public.mood"}]
worker_log:
  description: Path of the worker's log file.
  returned: when a worker directory exists
  type: str
'''

import sys

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgdts.migration.plugins.module_utils import ansible_common
from ansible_collections.pgdts.migration.plugins.module_utils.task_control import TaskControl, TaskControlError


def main():
    argument_spec = ansible_common.server_argument_spec('source', 'destination')
    argument_spec.update(
        name=dict(type='str', required=True),
        state=dict(type='str', choices=['present', 'absent'], default='present'),
        databases=dict(type='list', elements='str'),
        tables=dict(type='list', elements='str'),
        exclude_tables=dict(type='list', elements='str'),
        plugin=dict(type='str', choices=['pgoutput', 'wal2json'], default='pgoutput'),
        incremental=dict(type='bool', default=True),
        jobs=dict(type='int', default=4),
        maintenance_work_mem=dict(type='str', default='512MB'),
        max_retained_wal=dict(type='str'),
        pg_bindir=dict(type='path'),
        start_at=dict(type='str'),
        drop_destination=dict(type='bool', default=False),
        protect_destination=dict(type='bool', default=True),
        migrate_roles=dict(type='bool', default=False),
        replica_identity=dict(type='str', choices=['fail', 'full', 'exclude'], default='fail'),
        wait=dict(type='str', choices=['none', 'copied', 'synced'], default='none'),
        wait_timeout=dict(type='int', default=3600),
        wait_sleep=dict(type='int', default=2),
        retry_timeout=dict(type='int', default=600),
        worker_dir=dict(type='path', default='~/.pgdts'),
        worker_python=dict(type='path'),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    ansible_common.ensure_psycopg(module)
    source = ansible_common.server_spec(module, 'source')
    destination = ansible_common.server_spec(module, 'destination')
    params = dict(module.params)
    params['worker_python'] = params['worker_python'] or sys.executable
    control = TaskControl(params, source, destination, check_mode=module.check_mode)
    try:
        if params['state'] == 'absent':
            result = control.cancel()
        else:
            result = control.ensure()
            if params['wait'] != 'none' and not module.check_mode:
                result = control.wait(result, params['wait'], params['wait_timeout'], params['wait_sleep'])
    except TaskControlError as exc:
        module.fail_json(msg=exc.message, **exc.result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
