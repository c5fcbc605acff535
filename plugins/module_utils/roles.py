# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Roles: bring the source's roles to the destination (migrate_roles).

Read from the source: every non-system role (not `pg_*`, not the bootstrap superuser) with its attributes, its
password hash from pg_authid when the source login may read it, its memberships (pg_auth_members, with ADMIN OPTION)
and its role-wide settings (pg_db_role_setting with setdatabase = 0).

Written to the destination, in one transaction: every role that is missing there, with the same attributes and
password hash; the memberships of the roles created (missing ones only); their role-wide settings. Roles that
already exist are left exactly as they are. The password hash travels only inside the composed CREATE ROLE statement
(utility statements take no bind parameters); it is never logged, returned or put into an error message, and when
the destination login may do so, statement logging is turned off for the transaction.

Plain Python (no Ansible imports).
"""

from __future__ import annotations

from ansible_collections.pgdts.migration.plugins.module_utils.connection import (
    WRITER_OPTIONS, connect, error_text, query_all, query_one, query_value, scrub,
)

try:
    import psycopg
    from psycopg import sql
except ImportError:  # pragma: no cover - connection.require_psycopg() reports it
    psycopg = None
    sql = None


# advisory lock key (in the destination database the connection uses) held while roles are created: 'pgdtsrol'
ROLES_LOCK = 0x7067647473726F6C


class RolesError(Exception):
    """Roles could not be brought to the destination; nothing was created. The message names the role."""


# pg_roles column -> (keyword when true, keyword when false), in the order pg_dumpall writes them
ATTRIBUTES = (
    ('rolsuper', 'SUPERUSER', 'NOSUPERUSER'),
    ('rolinherit', 'INHERIT', 'NOINHERIT'),
    ('rolcreaterole', 'CREATEROLE', 'NOCREATEROLE'),
    ('rolcreatedb', 'CREATEDB', 'NOCREATEDB'),
    ('rolcanlogin', 'LOGIN', 'NOLOGIN'),
    ('rolreplication', 'REPLICATION', 'NOREPLICATION'),
    ('rolbypassrls', 'BYPASSRLS', 'NOBYPASSRLS'),
)

# Settings whose stored value is a list of (possibly double-quoted) names, as pg_dumpall's
# variable_is_guc_list_quote(): each element becomes its own literal.
LIST_SETTINGS = ('local_preload_libraries', 'search_path', 'session_preload_libraries', 'shared_preload_libraries',
                 'temp_tablespaces', 'unix_socket_directories')

# Set locally in the destination transaction when the login may (superuser, or GRANT SET ON PARAMETER), so that no
# statement of it (CREATE ROLE ... PASSWORD '<hash>') is written to the server log: not by log_statement, not as the
# statement of an error, not as a slow or sampled statement.
QUIET_LOGGING = (
    ('log_statement', 'none'),
    ('log_min_error_statement', 'panic'),
    ('log_min_duration_statement', '-1'),
    ('log_min_duration_sample', '-1'),
    ('log_transaction_sample_rate', '0'),
)

_NON_SYSTEM = "r.rolname !~ '^pg_' AND r.oid <> 10"

_ROLES = """
SELECT r.rolname, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, r.rolcanlogin, r.rolreplication,
       r.rolbypassrls, r.rolconnlimit,
       CASE WHEN r.rolvaliduntil IS NULL THEN NULL
            WHEN pg_catalog.isfinite(r.rolvaliduntil)
            THEN pg_catalog.to_char(r.rolvaliduntil AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00"')
            ELSE r.rolvaliduntil::text END,
       s.setconfig
  FROM pg_catalog.pg_roles r
  LEFT JOIN pg_catalog.pg_db_role_setting s ON s.setrole = r.oid AND s.setdatabase = 0
 WHERE """ + _NON_SYSTEM + """
 ORDER BY r.rolname"""

_PASSWORDS = "SELECT r.rolname, r.rolpassword FROM pg_catalog.pg_authid r WHERE " + _NON_SYSTEM

# Memberships of non-system members, in non-system or predefined (pg_*) roles; one row per (role, member) even when
# several grantors granted it (PostgreSQL 16+).
_MEMBERSHIPS = """
SELECT g.rolname, m.rolname, pg_catalog.bool_or(a.admin_option)
  FROM pg_catalog.pg_auth_members a
  JOIN pg_catalog.pg_roles g ON g.oid = a.roleid
  JOIN pg_catalog.pg_roles m ON m.oid = a.member
 WHERE m.rolname !~ '^pg_' AND m.oid <> 10 AND g.oid <> 10
 GROUP BY g.rolname, m.rolname
 ORDER BY g.rolname, m.rolname"""

_DESTINATION_MEMBERSHIPS = """
SELECT g.rolname, m.rolname
  FROM pg_catalog.pg_auth_members a
  JOIN pg_catalog.pg_roles g ON g.oid = a.roleid
  JOIN pg_catalog.pg_roles m ON m.oid = a.member"""


class Role:
    """A source role. `password` is the hash from pg_authid (None when absent or unreadable); repr() hides it."""

    __slots__ = ('name', 'attributes', 'connection_limit', 'valid_until', 'password', 'settings')

    def __init__(self, name, attributes, connection_limit=-1, valid_until=None, password=None, settings=()):
        self.name = name
        self.attributes = dict(attributes)
        self.connection_limit = connection_limit
        self.valid_until = valid_until
        self.password = password
        self.settings = list(settings or ())

    @property
    def superuser(self):
        return bool(self.attributes.get('rolsuper'))

    @property
    def login(self):
        return bool(self.attributes.get('rolcanlogin'))

    def __repr__(self):
        return 'Role(%r)' % self.name


class Membership:
    __slots__ = ('role', 'member', 'admin_option')

    def __init__(self, role, member, admin_option=False):
        self.role = role
        self.member = member
        self.admin_option = bool(admin_option)

    def as_dict(self):
        return {'role': self.role, 'member': self.member, 'admin_option': self.admin_option}

    def __repr__(self):
        return 'Membership(%r, %r, %r)' % (self.role, self.member, self.admin_option)


# -- statements ----------------------------------------------------------------------------------------------------

def create_role_statement(role):
    """CREATE ROLE with every attribute spelled out, the connection limit, VALID UNTIL and the password hash."""
    parts = [sql.SQL('CREATE ROLE {} WITH').format(sql.Identifier(role.name))]
    for column, yes, no in ATTRIBUTES:
        parts.append(sql.SQL(yes if role.attributes.get(column) else no))
    parts.append(sql.SQL('CONNECTION LIMIT {}').format(sql.Literal(int(role.connection_limit))))
    if role.valid_until is not None:
        parts.append(sql.SQL('VALID UNTIL {}').format(sql.Literal(role.valid_until)))
    if role.password is not None:
        parts.append(sql.SQL('PASSWORD {}').format(sql.Literal(role.password)))
    return sql.SQL(' ').join(parts)


def grant_statement(membership):
    statement = sql.SQL('GRANT {} TO {}').format(sql.Identifier(membership.role), sql.Identifier(membership.member))
    if membership.admin_option:
        statement = statement + sql.SQL(' WITH ADMIN OPTION')
    return statement


def split_guc_list(text):
    """The elements of a list-valued setting as stored (e.g. `app, "$user", public`), like PostgreSQL's SplitGUCList:
    double-quoted elements keep everything inside (two double quotes stand for one), unquoted ones end at a comma or
    a blank."""
    items = []
    pos, size = 0, len(text)
    while pos < size and text[pos].isspace():
        pos += 1
    if pos == size:
        return items
    while True:
        if pos < size and text[pos] == '"':
            pos += 1
            chars = []
            while True:
                end = text.find('"', pos)
                if end < 0:
                    raise ValueError('unterminated quoted name in %r' % text)
                chars.append(text[pos:end])
                pos = end + 1
                if pos < size and text[pos] == '"':
                    chars.append('"')
                    pos += 1
                    continue
                break
            items.append(''.join(chars))
        else:
            start = pos
            while pos < size and text[pos] != ',' and not text[pos].isspace():
                pos += 1
            if pos == start:
                raise ValueError('empty name in %r' % text)
            items.append(text[start:pos])
        while pos < size and text[pos].isspace():
            pos += 1
        if pos == size:
            return items
        if text[pos] != ',':
            raise ValueError('unexpected %r in %r' % (text[pos], text))
        pos += 1
        while pos < size and text[pos].isspace():
            pos += 1


def parse_setting(entry):
    """`name=value` of pg_db_role_setting.setconfig -> (name, [values]); list settings give one value per element."""
    name, sep, value = entry.partition('=')
    if not sep or not name:
        raise ValueError('not a name=value setting: %r' % entry)
    if name.lower() in LIST_SETTINGS:
        return name, split_guc_list(value) or ['']
    return name, [value]


def setting_statement(role_name, entry):
    """ALTER ROLE ... SET name TO value(s) for one setconfig entry, as pg_dumpall writes it."""
    name, values = parse_setting(entry)
    return sql.SQL('ALTER ROLE {} SET {} TO {}').format(
        sql.Identifier(role_name), sql.Identifier(*name.split('.')),
        sql.SQL(', ').join(sql.Literal(v) for v in values))


# -- reading the source --------------------------------------------------------------------------------------------

def read_source(conn):
    """(roles, memberships, passwords_read) of the source. Passwords come from pg_authid, which only a superuser (or a
    role granted SELECT on it) may read; otherwise every role's password is None and passwords_read is False."""
    roles = []
    for row in query_all(conn, _ROLES):
        attributes = {column: bool(value) for (column, _yes, _no), value in zip(ATTRIBUTES, row[1:8])}
        roles.append(Role(row[0], attributes, row[8], row[9], settings=row[10] or ()))
    passwords_read = bool(query_value(conn, "SELECT pg_catalog.has_table_privilege('pg_catalog.pg_authid', 'SELECT')"))
    if passwords_read:
        hashes = dict(query_all(conn, _PASSWORDS))
        for role in roles:
            role.password = hashes.get(role.name)
    memberships = [Membership(*row) for row in query_all(conn, _MEMBERSHIPS)]
    return roles, memberships, passwords_read


# -- writing the destination ---------------------------------------------------------------------------------------

def _check_privileges(conn, to_create):
    """Refuse before anything is sent (a failing CREATE ROLE would carry its password hash into the server log as the
    statement of the error, which a non-superuser cannot prevent)."""
    if not to_create:
        return
    user, superuser, createrole, replication, bypassrls = query_one(
        conn, 'SELECT rolname, rolsuper, rolcreaterole, rolreplication, rolbypassrls FROM pg_catalog.pg_roles '
              'WHERE rolname = current_user')
    if superuser:
        return
    supers = [r.name for r in to_create if r.superuser]
    if supers:
        raise RolesError(
            'migrate_roles: %s on the source; creating a superuser role needs a superuser on the destination, and '
            'the destination user "%s" is not one. No role was created. Connect to the destination as a superuser, or '
            'create %s yourself first (existing roles are left as they are).' % (
                ('roles %s are superusers' if len(supers) > 1 else 'role %s is a superuser')
                % ', '.join('"%s"' % n for n in supers), user, 'them' if len(supers) > 1 else 'it'))
    if not createrole:
        raise RolesError(
            'migrate_roles: the destination user "%s" may not create roles (it needs CREATEROLE, or to be a superuser) '
            'and the destination lacks role%s %s. No role was created.' % (
                user, 's' if len(to_create) > 1 else '', ', '.join('"%s"' % r.name for r in to_create)))
    # PostgreSQL 15 and older: only a superuser gives REPLICATION or BYPASSRLS; 16 and newer: a role that has it
    new_rules = conn.info.server_version >= 160000
    limited = (('rolreplication', 'REPLICATION', replication), ('rolbypassrls', 'BYPASSRLS', bypassrls))
    for column, keyword, held in limited:
        wanting = [r.name for r in to_create if r.attributes.get(column)]
        if wanting and not (new_rules and held):
            raise RolesError(
                'migrate_roles: role%s %s %s %s on the source; the destination user "%s" may not give that attribute '
                '(%s). No role was created.' % (
                    's' if len(wanting) > 1 else '', ', '.join('"%s"' % n for n in wanting),
                    'have' if len(wanting) > 1 else 'has', keyword, user,
                    'it needs the attribute itself' if new_rules else 'a superuser is needed'))


def _quiet_logging(conn):
    """Inside the open transaction: SET LOCAL every QUIET_LOGGING setting this login may set (each in a savepoint).
    Returns the names it could not set (a non-superuser usually cannot set any)."""
    present = {r[0] for r in query_all(conn, 'SELECT name FROM pg_catalog.pg_settings WHERE name = ANY(%s)',
                                       ([name for name, _value in QUIET_LOGGING],))}
    refused = []
    for name, value in QUIET_LOGGING:
        if name not in present:
            continue
        try:
            with conn.transaction():
                conn.execute(sql.SQL('SET LOCAL {} = {}').format(sql.Identifier(name), sql.Literal(value)))
        except psycopg.errors.InsufficientPrivilege:
            refused.append(name)
    return refused


def _execute(conn, statement, what, secrets):
    try:
        conn.execute(statement)
    except psycopg.Error as exc:
        detail = scrub(error_text(exc), secrets)
        raise RolesError('migrate_roles: %s on the destination failed: %s. No role was created.' % (what, detail)) \
            from exc


def plan(roles, memberships, existing_roles, existing_memberships):
    """(to_create, kept, grants, skipped) from what the source has and the destination has.

    Grants: memberships of the source in which the role or the member is created now, that the destination lacks;
    skipped: such memberships whose other side the destination has not got (a predefined role of a newer version)."""
    to_create = [r for r in roles if r.name not in existing_roles]
    kept = [r.name for r in roles if r.name in existing_roles]
    created = {r.name for r in to_create}
    will_exist = set(existing_roles) | created
    grants, skipped = [], []
    for membership in memberships:
        if membership.role not in created and membership.member not in created:
            continue
        if (membership.role, membership.member) in existing_memberships:
            continue
        if membership.role not in will_exist or membership.member not in will_exist:
            skipped.append(membership)
            continue
        grants.append(membership)
    return to_create, kept, grants, skipped


def preview(src_conn, dst_conn):
    """What migrate_roles() would do, read only: {'create': [names], 'kept': [names], 'memberships': n,
    'passwords_read': bool, 'problem': None or the RolesError message it would fail with}."""
    roles, memberships, passwords_read = read_source(src_conn)
    existing_roles = {r[0] for r in query_all(dst_conn, 'SELECT rolname FROM pg_catalog.pg_roles')}
    existing_memberships = {(r[0], r[1]) for r in query_all(dst_conn, _DESTINATION_MEMBERSHIPS)}
    to_create, kept, grants, _skipped = plan(roles, memberships, existing_roles, existing_memberships)
    problem = None
    try:
        _check_privileges(dst_conn, to_create)
    except RolesError as exc:
        problem = str(exc)
    return {'create': [r.name for r in to_create], 'kept': kept, 'memberships': len(grants),
            'passwords_read': passwords_read, 'without_password': [] if passwords_read else
            [r.name for r in to_create if r.login], 'problem': problem}


def migrate_roles(source, destination):
    """Bring the source's roles to the destination (see the module docstring). Returns a plain dict without secrets:
    created, kept (role names), memberships (granted: role, member, admin_option), memberships_skipped, settings
    (role, name), without_password (created LOGIN roles whose password the source login could not read),
    passwords_read, logging_quiet (False when the destination login could not turn statement logging off).
    Raises RolesError (nothing created) or a connection error."""
    with connect(source, application_name='pgdts-roles') as src:
        roles, memberships, passwords_read = read_source(src)
    secrets = [r.password for r in roles if r.password]
    with connect(destination, application_name='pgdts-roles', options=WRITER_OPTIONS) as conn:
        settings = []
        refused = []
        with conn.transaction():
            # two tasks bringing roles to one destination at once: the second waits, then sees the first one's roles
            # as existing (kept) instead of failing on them
            conn.execute('SELECT pg_catalog.pg_advisory_xact_lock(%s)', (ROLES_LOCK,))
            existing_roles = {r[0] for r in query_all(conn, 'SELECT rolname FROM pg_catalog.pg_roles')}
            existing_memberships = {(r[0], r[1]) for r in query_all(conn, _DESTINATION_MEMBERSHIPS)}
            to_create, kept, grants, skipped = plan(roles, memberships, existing_roles, existing_memberships)
            _check_privileges(conn, to_create)
            if to_create or grants:
                refused = _quiet_logging(conn)
                for role in to_create:
                    _execute(conn, create_role_statement(role), 'creating role "%s"' % role.name, secrets)
                for membership in grants:
                    _execute(conn, grant_statement(membership), 'granting role "%s" to "%s"' % (
                        membership.role, membership.member), secrets)
                for role in to_create:
                    for entry in role.settings:
                        try:
                            statement = setting_statement(role.name, entry)
                        except ValueError as exc:
                            raise RolesError('migrate_roles: role "%s": cannot read its setting %s: %s. No role was '
                                             'created.' % (role.name, entry.partition('=')[0], exc))
                        name = entry.partition('=')[0]
                        _execute(conn, statement, 'setting %s of role "%s"' % (name, role.name), secrets)
                        settings.append({'role': role.name, 'name': name})
    return {
        'created': [r.name for r in to_create],
        'kept': kept,
        'memberships': [m.as_dict() for m in grants],
        'memberships_skipped': [m.as_dict() for m in skipped],
        'settings': settings,
        'without_password': [] if passwords_read else [r.name for r in to_create if r.login],
        'passwords_read': passwords_read,
        'logging_quiet': 'log_statement' not in refused,
    }


def describe(result):
    """One line for the task's log: counts and role names, never a secret."""

    def names(items):
        return ' (%s)' % ', '.join('"%s"' % n for n in items) if items else ''

    parts = ['roles: %d created%s' % (len(result['created']), names(result['created'])),
             '%d already on the destination, left as they are%s' % (len(result['kept']), names(result['kept'])),
             '%d membership(s) granted' % len(result['memberships']),
             '%d role setting(s) set' % len(result['settings'])]
    if result['memberships_skipped']:
        parts.append('%d membership(s) skipped, their role is missing on the destination: %s' % (
            len(result['memberships_skipped']),
            ', '.join('"%s" in "%s"' % (m['member'], m['role']) for m in result['memberships_skipped'])))
    if result['without_password']:
        parts.append('created without password (the source login may not read pg_authid; set them with ALTER ROLE '
                     '... PASSWORD): %s' % ', '.join('"%s"' % n for n in result['without_password']))
    if result['created'] and not result['logging_quiet']:
        parts.append('the destination login may not turn off log_statement: the CREATE ROLE statements may be in '
                     'its server log')
    return '; '.join(parts)
