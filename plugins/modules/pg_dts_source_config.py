#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: pg_dts_source_config
short_description: Make a PostgreSQL source ready for logical decoding
version_added: 0.1.0
description:
  - Sets C(wal_level=logical) and raises C(max_replication_slots) and C(max_wal_senders) to at least what is in use
    plus what the migration needs (one slot and one WAL sender per migrated database, plus O(reserve)). A value an
    administrator set higher is never lowered.
  - Settings are written with C(ALTER SYSTEM) (into C(postgresql.auto.conf)), so they survive a restart and
    C(postgresql.conf) with its comments stays untouched. The comparison uses what the server reports
    (C(pg_settings), C(pg_file_settings)) with normalised values.
  - Ensures the C(pg_hba.conf) entries the migration user needs (a C(replication) entry and one entry per migrated
    database, for each address in O(hba_addresses)), placed before the first rule that would otherwise match, so that
    first-match order makes them effective. The file is backed up and replaced atomically; a file the server
    reports errors for is put back.
  - Optionally creates the migration login role with C(LOGIN REPLICATION) and a password (sent to the server as a
    SCRAM verifier, never in clear text).
  - Reloads the configuration when a reload is enough and O(reload=true). Never restarts the server; it returns
    RV(restart_required) for the caller (the role C(pgdts.migration.source_prepare) restarts).
  - Runs on the database host (it edits C(pg_hba.conf) there).
extends_documentation_fragment:
  - pgdts.migration.connection.source
  - pgdts.migration.connection.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
options:
  databases:
    description:
      - Databases the migration will read (one slot, one WAL sender and one pg_hba entry each).
    type: list
    elements: str
    default: []
  reserve:
    description:
      - Extra replication slots and WAL senders on top of what is in use and what the migration needs.
    type: int
    default: 2
  migration_user:
    description:
      - Role the migration logs in as; the pg_hba entries are for this role.
    type: str
  migration_password:
    description:
      - Password of O(migration_user), used with O(create_migration_user=true).
    type: str
  create_migration_user:
    description:
      - Create O(migration_user) (or fix it) as a C(LOGIN REPLICATION) role with O(migration_password).
      - The password is compared with the stored SCRAM or md5 verifier; a role whose password cannot be read
        (not a superuser) keeps its password.
    type: bool
    default: false
  hba_addresses:
    description:
      - Client addresses (IP address, CIDR network, host name, C(samehost), C(samenet), C(all)) the migration connects
        from. Empty leaves C(pg_hba.conf) alone.
    type: list
    elements: str
    default: []
  hba_method:
    description:
      - Authentication method of the entries. V(trust) is only used when asked for explicitly here.
    type: str
    choices: [scram-sha-256, md5, password, cert, trust]
    default: scram-sha-256
  hba_type:
    description:
      - Connection type of the entries.
    type: str
    choices: [host, hostssl, hostnossl]
    default: host
  hba_replication:
    description:
      - Also ensure an entry for the C(replication) keyword (physical replication protocol). Logical replication
        connections are matched by database name, so the database entries cover them.
    type: bool
    default: true
  hba_file:
    description:
      - Path of C(pg_hba.conf); default is what the server reports (C(SHOW hba_file)).
    type: path
  backup:
    description:
      - Keep a timestamped copy of C(pg_hba.conf) before changing it.
    type: bool
    default: true
  reload:
    description:
      - Reload the server configuration after a change (needed for C(pg_hba.conf), and makes C(pending_restart)
        visible for settings that need a restart).
    type: bool
    default: true
notes:
  - Needs a superuser (or, for C(ALTER SYSTEM), a role granted C(ALTER SYSTEM) on these parameters, PostgreSQL 15+).
  - C(ALTER SYSTEM) cannot run in a transaction; the module uses an autocommit connection.
  - Replication slots and WAL senders of pgdts itself (names starting with C(pgdts)) are not counted as in use, so a
    re-run while a migration runs does not raise the values again.
seealso:
  - module: pgdts.migration.pg_dts_plugin_install
author:
  - pgdts developers (@pgdts)
'''

EXAMPLES = r'''
- name: Prepare the source for a migration of two databases
  pgdts.migration.pg_dts_source_config:
    source:
      user: postgres
    databases: [shop, billing]
    migration_user: pgdts
    migration_password: "{{ vault_pgdts_password }}"
    create_migration_user: true
    hba_addresses:
      - 10.20.0.15/32
  register: source_config

- name: Restart when a setting needs it
  ansible.builtin.service:
    name: postgresql@15-main
    state: restarted
  when: source_config.restart_required
'''

RETURN = r'''
restart_required:
  description:
    - Whether the server must be restarted for the settings to take effect (a C(postmaster) setting whose running
      value differs from the configured one, or C(pending_restart) reported by the server for it).
  returned: always
  type: bool
  sample: true
reload_required:
  description: Whether a change still needs a configuration reload (O(reload=false), or check mode).
  returned: always
  type: bool
  sample: false
reloaded:
  description: Whether the module reloaded the configuration.
  returned: always
  type: bool
settings:
  description: Per managed setting, the running value, the configured value, the value after a restart, and why.
  returned: always
  type: dict
  sample:
    wal_level:
      running: replica
      configured: replica
      after: logical
      changed: true
      context: postmaster
      pending_restart: true
      reason: logical decoding needs wal_level = logical
in_use:
  description: Replication slots and WAL senders in use by others when the module ran.
  returned: always
  type: dict
  sample: {replication_slots: 1, wal_senders: 0}
pending_restart:
  description: Every setting the server reports as waiting for a restart (after the reload).
  returned: always
  type: list
  elements: str
queries:
  description: Statements executed (in check mode, those that would be); passwords are masked.
  returned: always
  type: list
  elements: str
  sample: ["ALTER SYSTEM SET \"wal_level\" = 'logical'"]
hba_file:
  description: Path of C(pg_hba.conf).
  returned: always
  type: str
hba_changes:
  description: The pg_hba entries that were inserted, appended or replaced.
  returned: always
  type: list
  elements: dict
backup_file:
  description: Copy of C(pg_hba.conf) made before the change.
  returned: when C(pg_hba.conf) changed and O(backup=true)
  type: str
  sample: /var/lib/postgresql/15/main/pg_hba.conf.12345.2024-05-01@10:00:00~
data_directory:
  description: The server's data directory.
  returned: always
  type: str
config_file:
  description: The server's main configuration file.
  returned: always
  type: str
user:
  description: What was done with O(migration_user) (C(created), C(changed), C(unchanged)).
  returned: when O(create_migration_user=true)
  type: str
server_version_num:
  description: C(server_version_num) of the server.
  returned: always
  type: int
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgdts.migration.plugins.module_utils import ansible_common
from ansible_collections.pgdts.migration.plugins.module_utils.connection import ConnectionFailure, connect, error_text
from ansible_collections.pgdts.migration.plugins.module_utils import hba as pghba
from ansible_collections.pgdts.migration.plugins.module_utils import server_settings as ss

try:
    import psycopg
except ImportError:  # pragma: no cover - ensure_psycopg reports it
    psycopg = None


def main():
    argument_spec = ansible_common.server_argument_spec('source')
    argument_spec.update(
        databases=dict(type='list', elements='str', default=[]),
        reserve=dict(type='int', default=2),
        migration_user=dict(type='str'),
        migration_password=dict(type='str', no_log=True),
        create_migration_user=dict(type='bool', default=False),
        hba_addresses=dict(type='list', elements='str', default=[]),
        hba_method=dict(type='str', choices=['scram-sha-256', 'md5', 'password', 'cert', 'trust'],
                        default='scram-sha-256'),
        hba_type=dict(type='str', choices=['host', 'hostssl', 'hostnossl'], default='host'),
        hba_replication=dict(type='bool', default=True),
        hba_file=dict(type='path'),
        backup=dict(type='bool', default=True),
        reload=dict(type='bool', default=True),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_if=[('create_migration_user', True, ('migration_user',)),
                                        ('create_migration_user', True, ('migration_password',))])
    p = module.params
    ansible_common.ensure_psycopg(module)
    spec = ansible_common.server_spec(module, 'source')
    result = dict(changed=False, restart_required=False, reload_required=False, reloaded=False, queries=[],
                  hba_changes=[], pending_restart=[])

    databases = [d for d in p['databases'] if d]
    if len(set(databases)) != len(databases):
        module.fail_json(msg='databases lists a database more than once', **result)
    entries = []
    if p['hba_addresses'] and not p['migration_user']:
        module.fail_json(msg='hba_addresses needs migration_user (the role the pg_hba entries are for)', **result)
    if p['hba_addresses']:
        if p['hba_method'] == 'trust':
            module.warn('hba_method trust lets %s in without a password from %s' % (
                p['migration_user'], ', '.join(p['hba_addresses'])))
        try:
            entries = pghba.wanted_entries(p['migration_user'], databases, p['hba_addresses'], p['hba_method'],
                                           p['hba_type'], p['hba_replication'])
        except pghba.HbaError as exc:
            module.fail_json(msg='hba_addresses: %s' % exc.message, **result)

    try:
        conn = connect(spec)
    except ConnectionFailure as exc:
        ansible_common.fail_connection(module, 'source', exc, **result)
    try:
        run(module, conn, databases, entries, result)
    except ss.SettingsError as exc:
        module.fail_json(msg=exc.message, failure=exc.kind, **result)
    except psycopg.Error as exc:
        module.fail_json(msg='source: %s' % error_text(exc), failure='query', **result)
    finally:
        conn.close()
    module.exit_json(**result)


def run(module, conn, databases, entries, result):
    p = module.params
    result['server_version_num'] = conn.info.server_version
    paths = ss.server_paths(conn)
    result.update(data_directory=paths['data_directory'], config_file=paths['config_file'])
    diffs = []

    # 1. the migration login role
    role_queries = []
    if p['create_migration_user']:
        role_queries, result['user'] = ss.plan_login_role(conn, p['migration_user'], p['migration_password'])

    # 2. settings
    plans, used = ss.plan_settings(conn, len(databases), p['reserve'])
    result['in_use'] = used
    setting_queries = ss.alter_system_queries(conn, plans)
    if setting_queries:
        diffs.append(dict(before_header='settings (%s)' % paths['config_file'],
                          after_header='settings (ALTER SYSTEM)', before=ss.describe(plans, 'before'),
                          after=ss.describe(plans, 'after')))

    # 3. pg_hba.conf
    hba_file = p['hba_file'] or paths['hba_file']
    result['hba_file'] = hba_file
    new_hba = None
    if entries:
        try:
            old_hba = pghba.read_file(hba_file)
        except pghba.HbaError as exc:
            module.fail_json(msg=exc.message, **result)
        try:
            new_text, changes = pghba.ensure_entries(old_hba, entries)
        except pghba.HbaError as exc:
            module.fail_json(msg='%s: %s' % (hba_file, exc.message), **result)
        result['hba_changes'] = changes
        if changes:
            new_hba = new_text
            diffs.append(dict(before_header=hba_file, after_header=hba_file, before=old_hba, after=new_text))

    all_queries = role_queries + setting_queries
    result['queries'] = [text for _q, text in all_queries]
    changed = bool(all_queries or new_hba is not None)
    result['changed'] = changed
    if diffs:
        result['diff'] = diffs

    needs_restart = [name for name, plan in plans.items() if plan.needs_restart()]
    if module.check_mode:
        result['settings'] = {name: plan.to_dict() for name, plan in plans.items()}
        result['restart_required'] = bool(needs_restart)
        result['reload_required'] = new_hba is not None
        result['pending_restart'] = ss.pending_restart_all(conn)
        return

    ss.apply_queries(conn, role_queries)
    ss.apply_settings(conn, setting_queries)
    if new_hba is not None:
        errors_before = pghba.file_errors(conn)
        if p['backup']:
            result['backup_file'] = pghba.backup_file(hba_file)
        pghba.write_file(hba_file, new_hba)

    if (setting_queries or new_hba is not None) and p['reload']:
        result['reloaded'] = ss.reload(conn)
        if new_hba is not None:
            try:
                pghba.restore_if_rejected(conn, hba_file, old_hba, errors_before, ss.reload)
            except pghba.HbaError as exc:
                module.fail_json(msg=exc.message, **result)
    elif new_hba is not None:
        result['reload_required'] = True

    if result['reloaded'] and setting_queries:
        pending = ss.wait_pending_restart(conn, ss.MANAGED, needs_restart)
        for name, plan in plans.items():
            plan.info['pending_restart'] = bool(pending.get(name))
    else:
        for name, row in ss.read_settings(conn, ss.MANAGED).items():
            plans[name].info['pending_restart'] = row['pending_restart']
    result['settings'] = {name: plan.to_dict() for name, plan in plans.items()}
    result['restart_required'] = any(s['pending_restart'] for s in result['settings'].values())
    result['pending_restart'] = ss.pending_restart_all(conn)


if __name__ == '__main__':
    main()
