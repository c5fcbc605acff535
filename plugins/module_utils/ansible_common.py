# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Glue shared by the modules: the connection argument spec (mirrors the doc fragment) and error reporting."""

from __future__ import annotations

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.pgdts.migration.plugins.module_utils.connection import (
    HAS_PSYCOPG, PSYCOPG_IMPORT_ERROR, ConnectionFailure, ServerSpec,
)

SERVER_OPTIONS = dict(
    host=dict(type='str'),
    port=dict(type='int'),
    user=dict(type='str'),
    password=dict(type='str', no_log=True),
    dbname=dict(type='str'),
    sslmode=dict(type='str', choices=['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full']),
    sslrootcert=dict(type='path'),
    connect_timeout=dict(type='int'),
)


def server_argument_spec(*names):
    """Argument spec entries for the given server options (source, destination)."""
    return {name: dict(type='dict', default={}, options=dict(SERVER_OPTIONS)) for name in names}


def ensure_psycopg(module):
    if not HAS_PSYCOPG:
        module.fail_json(msg=missing_required_lib('psycopg (psycopg 3)'), exception=PSYCOPG_IMPORT_ERROR)


def server_spec(module, name):
    """The ServerSpec for option `name`; a bad value fails the module with a clear message."""
    try:
        spec = ServerSpec.from_options(module.params.get(name))
    except ConnectionFailure as exc:
        module.fail_json(msg='%s: %s' % (name, exc.message))
    if spec.password:
        module.no_log_values.add(spec.password)
    return spec


def fail_connection(module, role, exc, **result):
    module.fail_json(msg='%s: %s' % (role, exc.message), failure=exc.kind, **result)
