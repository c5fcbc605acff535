# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Glue shared by the modules: the connection options (one table: the argument spec and the doc fragment
`pgdts.migration.connection` are both built from SERVER_OPTION_TABLE) and error reporting."""

from __future__ import annotations

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.pgdts.migration.plugins.module_utils.connection import (
    HAS_PSYCOPG, PSYCOPG_IMPORT_ERROR, ConnectionFailure, ServerSpec,
)

# The options of `source` and `destination`: (name, argument spec, description). `{role}` in a description is the
# option's name (source or destination).
SERVER_OPTION_TABLE = (
    ('host', dict(type='str'), [
        'Host name, IP address or Unix socket directory of the server.',
        'Falls back to the C(PGHOST) environment variable, then to the libpq default.']),
    ('port', dict(type='int'), [
        'Port of the server.',
        'Falls back to C(PGPORT), then to C(5432).']),
    ('user', dict(type='str'), [
        'Role to log in as.',
        'Falls back to C(PGUSER), then to the libpq default (the operating system user).']),
    ('password', dict(type='str', no_log=True), [
        'Password of O({role}.user).',
        'Falls back to C(PGPASSWORD); a C(~/.pgpass) file is honoured by libpq as usual.',
        'Never logged, never returned, never passed on a command line.']),
    ('dbname', dict(type='str'), [
        'Maintenance database to connect to for server-wide work.',
        'Falls back to C(PGDATABASE), then to C(postgres).']),
    ('sslmode', dict(type='str', choices=['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full']), [
        'libpq SSL mode.',
        'Falls back to C(PGSSLMODE), then to C(prefer).']),
    ('sslrootcert', dict(type='path'), [
        'File with the certificate authorities that sign the server certificate.',
        'Falls back to C(PGSSLROOTCERT).']),
    ('connect_timeout', dict(type='int'), [
        'Seconds to wait for a connection before giving up.',
        'Falls back to C(PGCONNECT_TIMEOUT), then to C(10).']),
)
SERVER_OPTIONS = {name: spec for name, spec, _description in SERVER_OPTION_TABLE}
SERVER_ROLES = {'source': 'How to reach the source PostgreSQL server.',
                'destination': 'How to reach the destination PostgreSQL server.'}


def server_argument_spec(*names):
    """Argument spec entries for the given server options (source, destination)."""
    return {name: dict(type='dict', default={}, options=dict(SERVER_OPTIONS)) for name in names}


def server_option_doc(role):
    """The documentation of option `role` (source, destination) as the doc fragment gives it."""
    suboptions = {}
    for name, spec, description in SERVER_OPTION_TABLE:
        entry = {'description': [line.format(role=role) for line in description], 'type': spec['type']}
        if 'choices' in spec:
            entry['choices'] = list(spec['choices'])
        suboptions[name] = entry
    return {'options': {role: {
        'description': [SERVER_ROLES[role],
                        'Each key falls back to the matching libpq environment variable when it is not given.'],
        'type': 'dict', 'default': {}, 'suboptions': suboptions}}}


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
