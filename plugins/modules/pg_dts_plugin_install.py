#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: pg_dts_plugin_install
short_description: Install a logical decoding output plugin into the PostgreSQL lib directory
version_added: 0.1.0
description:
  - Installs the shared object of a logical decoding output plugin (the decoding plugin, for example C(wal2json))
    into the directory the server loads plugins from (C(pg_config --pkglibdir) of the server's major version).
  - The plugin comes from a shared object file or from an archive (C(.zip), C(.tar.gz), C(.tgz), C(.tar)) that holds it,
    on the controller or, with O(remote_src=true), already on the host. Without O(src) the plugin must already be
    there (a built-in plugin such as C(pgoutput) or C(test_decoding), or one installed by an OS package) and is only
    verified.
  - The file is checked before anything is written (O(checksum), ELF architecture, the PostgreSQL major version in its
    module magic block when present) and written atomically (a new file renamed over the old one, so running backends
    keep the copy they loaded).
  - With a connection (any key of O(source) set) and C(wal_level=logical), the module proves that the plugin loads by
    creating and dropping a temporary logical replication slot with it. A plugin that was just written and does not
    load is rolled back.
  - Installing from an OS package (for example C(postgresql-15-wal2json)) is done with the package manager, see the
    role C(pgdts.migration.source_prepare).
  - Runs on the database host.
extends_documentation_fragment:
  - pgdts.migration.connection.source
  - pgdts.migration.connection.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
options:
  name:
    description:
      - Name of the plugin as used when creating a replication slot, for example C(wal2json). The file is C(<name>.so).
    type: str
    required: true
  state:
    description:
      - V(present) installs or verifies the plugin, V(absent) removes its file.
      - V(absent) refuses to remove a built-in plugin, and refuses while a replication slot uses the plugin (checked over
        the connection; without one, O(force=true) is needed).
    type: str
    choices: [present, absent]
    default: present
  src:
    description:
      - Shared object (C(.so)) or archive (C(.zip), C(.tar.gz), C(.tgz), C(.tar)) holding exactly one C(.so) file
        (or choose one with O(member)).
      - A path on the controller (looked up in the role's C(files) directory like M(ansible.builtin.copy) does) unless
        O(remote_src=true).
      - Omit it to verify a plugin that is already installed.
    type: path
  remote_src:
    description:
      - O(src) is already on the database host.
    type: bool
    default: false
  member:
    description:
      - Path of the C(.so) inside the archive, when it holds more than one.
    type: str
  checksum:
    description:
      - sha256 of O(src) (the archive or the shared object as given), as C(<hex>) or C(sha256:<hex>).
      - Checked before anything is written.
    type: str
  pkglibdir:
    description:
      - Directory to install into, instead of the detected one.
      - Detection order is O(pg_config), the server's own C(pg_config) view (with a connection, superuser), then
        C(pg_config) programs of the server's major version in the usual places.
    type: path
  pg_config:
    description:
      - The C(pg_config) program of the server's installation.
    type: path
  major_version:
    description:
      - PostgreSQL major version (for example C(15)) used to pick C(pg_config) when there is no connection.
    type: str
  owner:
    description:
      - Owner of the installed file. Defaults to the owner of an existing file, else the user running the module.
      - Only used with O(src); a plugin that is only verified keeps its attributes.
    type: str
  group:
    description:
      - Group of the installed file. Defaults to the group of an existing file, else the user's group.
    type: str
  mode:
    description:
      - Permissions of the installed file, as an octal string.
    type: str
    default: '0644'
  verify_load:
    description:
      - With a connection and C(wal_level=logical), prove that the plugin loads (temporary logical slot).
    type: bool
    default: true
  load_timeout:
    description:
      - Seconds the load probe may wait; creating a logical slot waits for running transactions to finish.
    type: int
    default: 30
  force:
    description:
      - With O(state=absent) and no connection, remove the file without checking for replication slots.
    type: bool
    default: false
notes:
  - The probe slot is temporary (C(pgdts_probe_<random>)) and is dropped at once; it needs the C(REPLICATION)
    attribute or a superuser, and one free replication slot.
  - In check mode the load probe is skipped and RV(loadable) is null.
seealso:
  - module: pgdts.migration.pg_dts_source_config
author:
  - pgdts developers (@pgdts)
'''

EXAMPLES = r'''
- name: Install wal2json from a release archive kept with the playbook
  pgdts.migration.pg_dts_plugin_install:
    name: wal2json
    src: files/wal2json-2.6-pg15-x86_64.zip
    checksum: sha256:0f2d0a1e6c6b8d7f9e0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60
    source:
      user: postgres

- name: Install a shared object that is already on the database host
  pgdts.migration.pg_dts_plugin_install:
    name: wal2json
    src: /opt/build/wal2json.so
    remote_src: true
    owner: root
    group: root

- name: Verify that the built-in pgoutput plugin is present and loads
  pgdts.migration.pg_dts_plugin_install:
    name: pgoutput
    source:
      host: 127.0.0.1
      user: postgres
      password: "{{ vault_pg_password }}"

- name: Remove a plugin no slot uses any more
  pgdts.migration.pg_dts_plugin_install:
    name: wal2json
    state: absent
    source:
      user: postgres
'''

RETURN = r'''
path:
  description: Full path of the plugin's shared object.
  returned: always
  type: str
  sample: /usr/lib/postgresql/15/lib/wal2json.so
pkglibdir:
  description: Directory the server loads plugins from, and how it was found (RV(pkglibdir_source)).
  returned: always
  type: str
  sample: /usr/lib/postgresql/15/lib
pkglibdir_source:
  description: C(option), C(server) (the server's C(pg_config) view) or C(pg_config <path>).
  returned: always
  type: str
  sample: server
bindir:
  description: Directory of the server's programs (C(pg_ctl), C(pg_isready)), when known.
  returned: always
  type: str
  sample: /usr/lib/postgresql/15/bin
builtin:
  description: Whether the plugin ships with PostgreSQL (C(pgoutput), C(test_decoding)).
  returned: always
  type: bool
sha256:
  description: sha256 of the installed shared object (null when absent).
  returned: always
  type: str
member:
  description: The archive member that was installed.
  returned: when O(src) is an archive
  type: str
  sample: wal2json-2.6/wal2json.so
built_for:
  description: PostgreSQL major version found in the module magic block of the shared object, when present.
  returned: when O(src) is given
  type: str
  sample: '15'
platform:
  description: Architecture of the shared object.
  returned: when O(src) is given
  type: str
  sample: x86_64 (64-bit, little-endian)
loadable:
  description:
    - V(true) when a temporary logical slot was created with the plugin, V(false) when loading failed (the module
      then fails), null when not checked (no connection, C(wal_level) not logical, check mode, or the probe could
      not decide; RV(load_check) says why).
  returned: always
  type: bool
load_check:
  description: What the load probe did or why it was skipped.
  returned: always
  type: str
  sample: plugin wal2json loads (a temporary logical slot was created and dropped)
server_major:
  description: Major version of the server (from the connection, else from C(pg_config)).
  returned: always
  type: str
  sample: '15'
server_version_num:
  description: C(server_version_num) of the server.
  returned: with a connection
  type: int
  sample: 150010
wal_level:
  description: The server's current C(wal_level).
  returned: with a connection
  type: str
  sample: logical
data_directory:
  description: The server's data directory.
  returned: with a connection
  type: str
  sample: /var/lib/postgresql/15/main
slots:
  description: Replication slots that use the plugin (the reason an O(state=absent) was refused).
  returned: with a connection and O(state=absent)
  type: list
  elements: str
'''

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgdts.migration.plugins.module_utils import ansible_common
from ansible_collections.pgdts.migration.plugins.module_utils.connection import ConnectionFailure, connect
from ansible_collections.pgdts.migration.plugins.module_utils import plugin_files as pf
from ansible_collections.pgdts.migration.plugins.module_utils.files import write_atomic


def connection_given(module):
    return any(value not in (None, '') for value in (module.params.get('source') or {}).values())


def fail(module, exc, **result):
    module.fail_json(msg=exc.message, failure=exc.kind, **result)


def main():
    argument_spec = ansible_common.server_argument_spec('source')
    argument_spec.update(
        name=dict(type='str', required=True),
        state=dict(type='str', choices=['present', 'absent'], default='present'),
        src=dict(type='path'),
        remote_src=dict(type='bool', default=False),
        member=dict(type='str'),
        checksum=dict(type='str'),
        pkglibdir=dict(type='path'),
        pg_config=dict(type='path'),
        major_version=dict(type='str'),
        owner=dict(type='str'),
        group=dict(type='str'),
        mode=dict(type='str', default='0644'),
        verify_load=dict(type='bool', default=True),
        load_timeout=dict(type='int', default=30),
        force=dict(type='bool', default=False),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           mutually_exclusive=[('pkglibdir', 'pg_config')])
    p = module.params
    result = dict(changed=False, loadable=None, load_check='not checked', builtin=p['name'] in pf.BUILTIN_PLUGINS)

    try:
        name = pf.check_plugin_name(p['name'])
        checksum = pf.normalise_checksum(p['checksum'])
        mode = pf.parse_mode(p['mode'])
        uid, gid = pf.resolve_owner(p['owner'], p['group'])
    except pf.PluginError as exc:
        fail(module, exc, **result)
    if p['src'] and not p['remote_src']:
        module.fail_json(msg='src %s is on the controller: run this module through its action plugin '
                             '(pgdts.migration.pg_dts_plugin_install), or set remote_src' % p['src'], **result)

    conn = None
    if connection_given(module):
        ansible_common.ensure_psycopg(module)
        spec = ansible_common.server_spec(module, 'source')
        try:
            conn = connect(spec)
        except ConnectionFailure as exc:
            ansible_common.fail_connection(module, 'source', exc, **result)

    try:
        run(module, conn, name, checksum, mode, uid, gid, result)
    except pf.PluginError as exc:
        fail(module, exc, **result)
    finally:
        if conn is not None:
            conn.close()
    module.exit_json(**result)


def run(module, conn, name, checksum, mode, uid, gid, result):
    p = module.params
    if conn is not None:
        result.update(pf.server_facts(conn))
    where = pf.locate_pkglibdir(p['pkglibdir'], p['pg_config'], conn, p['major_version'])
    result.update(pkglibdir=where['pkglibdir'], pkglibdir_source=where['how'], bindir=where.get('bindir'),
                  server_major=where.get('major'))
    path = os.path.join(where['pkglibdir'], name + '.so')
    result['path'] = path
    current = pf.file_state(path)
    result['sha256'] = current['sha256'] if current else None

    if p['state'] == 'absent':
        return remove(module, conn, name, path, current, result)

    previous_bytes = None
    if p['src']:
        if name in pf.BUILTIN_PLUGINS:
            raise pf.PluginError('builtin', 'refusing to overwrite the built-in plugin %s: omit src to verify it' % name)
        if checksum:
            actual = pf.sha256_file(p['src'])
            if actual != checksum:
                raise pf.PluginError('checksum_mismatch', 'checksum mismatch for %s: expected sha256 %s, got %s' % (
                    p['src'], checksum, actual))
        data, member = pf.read_plugin_source(p['src'], p['member'])
        label = '%s in %s' % (member, p['src']) if member else p['src']
        if member:
            result['member'] = member
        try:
            checked = pf.check_compatible(data, label, where['pkglibdir'], where.get('major'))
        except pf.PluginError as exc:
            if exc.kind == 'not_shared_object' and member is None:
                exc = pf.PluginError(exc.kind, '%s is %s: give the plugin\'s .so or an archive (.zip, .tar.gz) '
                                               'that holds it' % (p['src'], exc.message))
            raise exc
        result.update(built_for=checked['built_for'], platform=checked['platform'])
        wanted = pf.wanted_state(path, data, uid, gid, mode, current)
        content_changes = current is None or current['sha256'] != wanted['sha256']
        attr_changes = current is not None and not content_changes and any(
            current[k] != wanted[k] for k in ('uid', 'gid', 'mode'))
        if content_changes or attr_changes:
            result['changed'] = True
            result['diff'] = dict(before_header=path, after_header=path, before=pf.describe_state(current),
                                  after=pf.describe_state(wanted))
            if not module.check_mode:
                if content_changes:
                    if current is not None:
                        with open(path, 'rb') as handle:
                            previous_bytes = handle.read()
                    write_atomic(path, data, mode=mode, uid=wanted['uid'], gid=wanted['gid'], durable=True)
                else:
                    pf.set_attributes(path, wanted['uid'], wanted['gid'], mode)
        result['sha256'] = wanted['sha256']
    elif current is None:
        raise pf.PluginError('not_installed', 'plugin %s is not installed: %s does not exist (give src, or install '
                                              'the OS package that provides it)' % (name, path))
    verify(module, conn, name, path, current, previous_bytes, result)
    return result


def verify(module, conn, name, path, current, previous_bytes, result):
    p = module.params
    if conn is None:
        result['load_check'] = 'skipped: no connection (set source)'
        return
    if not p['verify_load']:
        result['load_check'] = 'skipped: verify_load is false'
        return
    if module.check_mode:
        result['load_check'] = 'skipped in check mode'
        return
    if result.get('wal_level') != 'logical':
        result['load_check'] = 'skipped: wal_level is %s, logical decoding needs logical' % result.get('wal_level')
        return
    loadable, message = pf.probe_load(conn, name, p['load_timeout'])
    result['loadable'] = loadable
    result['load_check'] = message
    if loadable is False:
        restored = False
        if result['changed'] and p['src']:
            if current is None:
                os.unlink(path)
                restored = True
            elif previous_bytes is not None:
                write_atomic(path, previous_bytes, mode=int(current['mode'], 8), uid=current['uid'], gid=current['gid'],
                             durable=True)
                restored = True
        if restored:
            result['changed'] = False
            result.pop('diff', None)
            message += '; the previous state of %s was restored' % path
        raise pf.PluginError('not_loadable', message)
    if loadable is None:
        module.warn(message)


def remove(module, conn, name, path, current, result):
    p = module.params
    if name in pf.BUILTIN_PLUGINS:
        raise pf.PluginError('builtin', 'refusing to remove the built-in plugin %s' % name)
    if conn is not None:
        slots = pf.slots_using(conn, name)
        result['slots'] = slots
        if slots:
            raise pf.PluginError('in_use', 'refusing to remove plugin %s: replication slot(s) %s use it' % (
                name, ', '.join(slots)))
    elif not p['force'] and current is not None:
        raise pf.PluginError('no_connection', 'refusing to remove plugin %s without a connection to check that no '
                                              'replication slot uses it: set source, or force=true' % name)
    if current is not None:
        result['changed'] = True
        result['diff'] = dict(before_header=path, after_header=path, before=pf.describe_state(current), after='')
        if not module.check_mode:
            os.unlink(path)
    result['sha256'] = None
    return result


if __name__ == '__main__':
    main()
