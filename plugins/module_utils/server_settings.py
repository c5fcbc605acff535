# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Server settings a logical-decoding source needs, and the migration login role.

Values are written with ALTER SYSTEM (postgresql.auto.conf: survives restarts, leaves postgresql.conf and its
comments alone). What is compared is what the server reports: the running value (pg_settings), the value the
configuration files will give after a restart (pg_file_settings) and pending_restart.

Plain Python (no Ansible imports).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time

from ansible_collections.pgdts.migration.plugins.module_utils.connection import query_all, query_one, query_value

try:
    import psycopg
    from psycopg import sql
except ImportError:  # pragma: no cover - the module reports the missing library itself
    psycopg = None
    sql = None

WAL_LEVELS = {'minimal': 0, 'archive': 1, 'hot_standby': 1, 'replica': 1, 'logical': 2}
MANAGED = ('wal_level', 'max_replication_slots', 'max_wal_senders')
PGDTS_PREFIX = 'pgdts'
# pg_file_settings.error for a value that is fine but waits for a restart
_PENDING_ERROR = 'setting could not be applied'

MEMORY_UNITS = {'B': 1, 'kB': 1024, 'MB': 1024 ** 2, 'GB': 1024 ** 3, 'TB': 1024 ** 4}
TIME_UNITS = {'us': 0.001, 'ms': 1, 's': 1000, 'min': 60000, 'h': 3600000, 'd': 86400000}


class SettingsError(Exception):
    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind
        self.message = message


# -- value normalisation (so that 4MB equals 4096kB and on equals true) ----------------------------------------

def normalise(value, vartype, unit=None):
    """A comparable form of a setting value of the given pg_settings vartype and base unit."""
    if value is None:
        return None
    text = str(value).strip().strip("'")
    if vartype == 'bool':
        lowered = text.lower()
        if lowered in ('on', 'true', 'yes', '1', 't', 'y'):
            return True
        if lowered in ('off', 'false', 'no', '0', 'f', 'n'):
            return False
        return lowered
    if vartype == 'enum':
        return text.lower()
    if vartype in ('integer', 'real'):
        match = re.match(r'^(-?[0-9.eE+]+)\s*([A-Za-z]*)$', text)
        if not match:
            return text
        number = float(match.group(1))
        given_unit = match.group(2)
        if unit and given_unit:
            factor, base = _unit_factor(given_unit), _unit_factor(unit)
            if factor is not None and base is not None:
                number = number * factor / base
        return round(number, 6)
    return text


def _unit_factor(unit):
    match = re.match(r'^(\d*)(B|kB|MB|GB|TB|us|ms|s|min|h|d)$', unit or '')
    if not match:
        return None
    multiple = int(match.group(1) or 1)
    table = MEMORY_UNITS if match.group(2) in MEMORY_UNITS else TIME_UNITS
    return multiple * table[match.group(2)]


# -- what the server reports ----------------------------------------------------------------------------------

def read_settings(conn, names):
    rows = query_all(conn, 'SELECT name, setting, unit, vartype, context, source, sourcefile, sourceline, boot_val, '
                           'pending_restart FROM pg_catalog.pg_settings WHERE name = ANY(%s)', (list(names),))
    keys = ('name', 'setting', 'unit', 'vartype', 'context', 'source', 'sourcefile', 'sourceline', 'boot_val',
            'pending_restart')
    return {row[0]: dict(zip(keys, row)) for row in rows}


def file_settings(conn, names):
    """The value each setting will have from the configuration files after a restart: {name: (value, file, line)}.

    Needs pg_file_settings (superusers, or members of pg_read_all_settings on recent versions); None when it
    cannot be read.
    """
    try:
        rows = query_all(conn, 'SELECT name, setting, sourcefile, sourceline, error FROM pg_catalog.pg_file_settings '
                               'WHERE name = ANY(%s) ORDER BY seqno', (list(names),))
    except psycopg.errors.InsufficientPrivilege:
        return None
    values = {}
    for name, setting, sourcefile, sourceline, error in rows:
        if error and error != _PENDING_ERROR:
            continue
        values[name] = (setting, sourcefile, sourceline)
    return values


def in_use(conn):
    """Replication slots and WAL senders in use by others (pgdts's own count as what the migration needs)."""
    slots = query_value(conn, "SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name NOT LIKE 'pgdts\\_%'")
    senders = query_value(conn, "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE backend_type = 'walsender' "
                                "AND coalesce(application_name, '') NOT LIKE 'pgdts%'")
    return {'replication_slots': int(slots or 0), 'wal_senders': int(senders or 0)}


def server_paths(conn):
    row = query_one(conn, "SELECT current_setting('data_directory'), current_setting('config_file'), "
                          "current_setting('hba_file')")
    return {'data_directory': row[0], 'config_file': row[1], 'hba_file': row[2]}


# -- planning -------------------------------------------------------------------------------------------------

class SettingPlan:
    """One managed setting: running value, value after a restart, the value we want, and what to do."""

    def __init__(self, name, info, configured, wanted, reason):
        self.name = name
        self.info = info
        self.running = info['setting']
        self.configured = configured    # what the files give after a restart (None: the built-in default)
        self.wanted = wanted            # None: nothing to write
        self.reason = reason

    @property
    def after_restart(self):
        if self.wanted is not None:
            return self.wanted
        return self.configured if self.configured is not None else self.info['boot_val']

    def needs_restart(self):
        if self.info['context'] != 'postmaster':
            return False
        return (normalise(self.running, self.info['vartype'], self.info['unit'])
                != normalise(self.after_restart, self.info['vartype'], self.info['unit']))

    def to_dict(self):
        return {'running': self.running, 'configured': self.configured, 'after': self.after_restart,
                'changed': self.wanted is not None, 'context': self.info['context'], 'reason': self.reason,
                'pending_restart': bool(self.info['pending_restart']) or self.needs_restart()}


def plan_settings(conn, databases_count, reserve):
    """What to write so that the server can decode `databases_count` databases; never lowers a value."""
    if databases_count < 0 or reserve < 0:
        raise SettingsError('invalid', 'databases and reserve must not be negative')
    info = read_settings(conn, MANAGED)
    files = file_settings(conn, MANAGED)
    used = in_use(conn)
    plans = {}
    for name in MANAGED:
        row = info[name]
        if files is None:
            configured = row['setting'] if row['source'] in ('configuration file',) else None
        else:
            configured = files.get(name, (None,))[0]
        after = configured if configured is not None else row['boot_val']
        if row['source'] in ('command line', 'environment variable', 'override'):
            # Values given on the postgres command line win over every configuration file.
            after = row['setting']
        if name == 'wal_level':
            need, reason = 'logical', 'logical decoding needs wal_level = logical'
            ok = WAL_LEVELS.get(str(after).lower(), -1) >= WAL_LEVELS['logical']
            target = need
        else:
            kind = 'replication_slots' if name == 'max_replication_slots' else 'wal_senders'
            need = used[kind] + databases_count + reserve
            reason = '%d in use + %d for the migration + %d reserve' % (used[kind], databases_count, reserve)
            current = max(int(normalise(row['setting'], 'integer')), int(normalise(after, 'integer')))
            ok = int(normalise(after, 'integer')) >= need
            target = str(max(need, current))
        wanted = None if ok else target
        if wanted is not None and row['source'] in ('command line', 'environment variable', 'override'):
            raise SettingsError('command_line', '%s is set to %s on the postgres command line, which overrides the '
                                                'configuration files; change it there to %s' % (name, row['setting'], target))
        plans[name] = SettingPlan(name, row, configured, wanted, reason)
    return plans, used


def alter_system_queries(conn, plans):
    """ALTER SYSTEM statements for the settings that change (composed, and as text for the result)."""
    queries = []
    for plan in plans.values():
        if plan.wanted is None:
            continue
        query = sql.SQL('ALTER SYSTEM SET {} = {}').format(sql.Identifier(plan.name), sql.Literal(str(plan.wanted)))
        queries.append((query, query.as_string(conn)))
    return queries


def apply_settings(conn, queries):
    """Run ALTER SYSTEM (it cannot run in a transaction: the connection must be in autocommit)."""
    if not conn.autocommit:
        raise SettingsError('invalid', 'ALTER SYSTEM needs an autocommit connection')
    for query, _text in queries:
        conn.execute(query)


def reload(conn):
    return bool(query_value(conn, 'SELECT pg_catalog.pg_reload_conf()'))


def wait_pending_restart(conn, names, expected, timeout_s=5.0):
    """After a reload, wait (briefly) until this backend reports pending_restart for the expected settings."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = dict(query_all(conn, 'SELECT name, pending_restart FROM pg_catalog.pg_settings WHERE name = ANY(%s)',
                              (list(names),)))
        if all(rows.get(n) for n in expected) or time.monotonic() >= deadline:
            return rows
        time.sleep(0.1)


def pending_restart_all(conn):
    return [r[0] for r in query_all(conn, 'SELECT name FROM pg_catalog.pg_settings WHERE pending_restart ORDER BY name')]


def describe(plans, which):
    lines = []
    for name in MANAGED:
        plan = plans[name]
        if which == 'after':
            value = plan.after_restart
        else:
            value = plan.configured if plan.configured is not None else plan.info['boot_val']
        lines.append('%s = %s' % (name, value))
    return '\n'.join(lines) + '\n'


# -- the migration login role ---------------------------------------------------------------------------------

def _scram_matches(stored, password):
    match = re.match(r'^SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)$', stored or '')
    if not match:
        return False
    iterations, salt = int(match.group(1)), base64.b64decode(match.group(2))
    salted = hashlib.pbkdf2_hmac('sha256', password.encode('utf-8'), salt, iterations)
    client_key = hmac.new(salted, b'Client Key', hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b'Server Key', hashlib.sha256).digest()
    return (hmac.compare_digest(base64.b64encode(stored_key).decode(), match.group(3))
            and hmac.compare_digest(base64.b64encode(server_key).decode(), match.group(4)))


def password_matches(stored, password, user):
    """Whether a pg_authid.rolpassword value is the verifier of `password` (SCRAM or md5)."""
    if not stored:
        return False
    if stored.startswith('SCRAM-SHA-256$'):
        return _scram_matches(stored, password)
    if stored.startswith('md5') and len(stored) == 35:
        return hmac.compare_digest(stored, 'md5' + hashlib.md5((password + user).encode('utf-8')).hexdigest())
    return False


def encrypted_password(conn, user, password):
    """The verifier the server would store (libpq PQencryptPasswordConn): the plain password never reaches the
    server, so it cannot end up in its logs."""
    algorithm = query_value(conn, 'SHOW password_encryption')
    return conn.pgconn.encrypt_password(password.encode('utf-8'), user.encode('utf-8'),
                                        algorithm.encode('ascii') if algorithm else None).decode('ascii')


def plan_login_role(conn, name, password, update_password='always'):
    """Statements that make `name` a LOGIN REPLICATION role with the password: ([(query, masked_text)], state)."""
    row = query_one(conn, 'SELECT rolcanlogin, rolreplication, rolsuper FROM pg_catalog.pg_roles WHERE rolname = %s',
                    (name,))
    stored = None
    readable = True
    if row is not None and password:
        try:
            stored = query_value(conn, 'SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = %s', (name,))
        except psycopg.errors.InsufficientPrivilege:
            readable = False
    queries = []
    masked = sql.Literal('********')
    if row is None:
        attrs = sql.SQL('LOGIN REPLICATION')
        if password:
            verifier = encrypted_password(conn, name, password)
            stmt = sql.SQL('CREATE ROLE {} {} PASSWORD {}').format(sql.Identifier(name), attrs, sql.Literal(verifier))
            text = sql.SQL('CREATE ROLE {} {} PASSWORD {}').format(sql.Identifier(name), attrs, masked)
        else:
            stmt = text = sql.SQL('CREATE ROLE {} {}').format(sql.Identifier(name), attrs)
        queries.append((stmt, text.as_string(conn)))
        return queries, 'created'
    can_login, replication, superuser = row
    if not can_login or not (replication or superuser):
        stmt = sql.SQL('ALTER ROLE {} LOGIN REPLICATION').format(sql.Identifier(name))
        queries.append((stmt, stmt.as_string(conn)))
    if password and update_password == 'always' and (not readable or not password_matches(stored, password, name)):
        if readable:
            verifier = encrypted_password(conn, name, password)
            stmt = sql.SQL('ALTER ROLE {} PASSWORD {}').format(sql.Identifier(name), sql.Literal(verifier))
            text = sql.SQL('ALTER ROLE {} PASSWORD {}').format(sql.Identifier(name), masked)
            queries.append((stmt, text.as_string(conn)))
    return queries, ('changed' if queries else 'unchanged')


def apply_queries(conn, queries):
    for query, _text in queries:
        conn.execute(query)
