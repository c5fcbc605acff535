# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connection layer: how a server is described, how we connect to it, and what a failure means.

Plain Python (no Ansible imports) so that the worker and the tests use exactly what the modules use.
"""

from __future__ import annotations

import os
import re
import socket
import time
import traceback

try:
    import psycopg
    from psycopg import sql
    HAS_PSYCOPG = True
    PSYCOPG_IMPORT_ERROR = None
except ImportError:  # pragma: no cover - exercised only on hosts without psycopg
    psycopg = None
    sql = None
    HAS_PSYCOPG = False
    PSYCOPG_IMPORT_ERROR = traceback.format_exc()

APPLICATION_NAME = 'pgdts'
# Sessions that write to a destination the task protects (default_transaction_read_only = on for everyone else).
WRITER_OPTIONS = '-c default_transaction_read_only=off'
# The settings that shape the text of a value (dates, intervals, time zones, floats, bytea, money). Every session that
# reads or writes values as text (decoding, apply, comparison) sets them, so a value reads the same everywhere.
VALUE_TEXT_SETTINGS = (
    ('DateStyle', 'ISO, YMD'),
    ('IntervalStyle', 'postgres'),
    ('TimeZone', 'UTC'),
    ('extra_float_digits', '3'),
    ('bytea_output', 'hex'),
    ('lc_monetary', 'C'),
)

# Option name -> (libpq keyword, environment variable, default)
SERVER_KEYS = {
    'host': ('host', 'PGHOST', None),
    'port': ('port', 'PGPORT', 5432),
    'user': ('user', 'PGUSER', None),
    'password': ('password', 'PGPASSWORD', None),
    'dbname': ('dbname', 'PGDATABASE', 'postgres'),
    'sslmode': ('sslmode', 'PGSSLMODE', None),
    'sslrootcert': ('sslrootcert', 'PGSSLROOTCERT', None),
    'connect_timeout': ('connect_timeout', 'PGCONNECT_TIMEOUT', 10),
}
INT_KEYS = ('port', 'connect_timeout')


class ConnectionFailure(Exception):
    """A connection could not be made. `kind` is a stable word, `message` a short sentence without secrets."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind
        self.message = message


class ServerSpec:
    """Where a server is and how to log in; the password is kept out of repr() and of public_dict()."""

    def __init__(self, host=None, port=5432, user=None, password=None, dbname='postgres', sslmode=None,
                 sslrootcert=None, connect_timeout=10):
        self.host = host
        self.port = int(port) if port is not None else 5432
        self.user = user
        self.password = password
        self.dbname = dbname or 'postgres'
        self.sslmode = sslmode
        self.sslrootcert = sslrootcert
        self.connect_timeout = int(connect_timeout) if connect_timeout is not None else 10

    @classmethod
    def from_options(cls, options, environ=None):
        """Build a spec from a module's dict option, falling back to libpq environment variables."""
        environ = os.environ if environ is None else environ
        options = options or {}
        values = {}
        for key, (_keyword, env_name, default) in SERVER_KEYS.items():
            value = options.get(key)
            if value in (None, ''):
                value = environ.get(env_name) or default
            if key in INT_KEYS and value not in (None, ''):
                try:
                    value = int(value)
                except (TypeError, ValueError):
                    raise ConnectionFailure('invalid', '%s must be a whole number, got %r' % (key, value))
            values[key] = value
        return cls(**values)

    @classmethod
    def from_dict(cls, data):
        return cls(**{k: data.get(k) for k in SERVER_KEYS if k in data})

    def public_dict(self):
        """Everything but the password: safe to return, log and store."""
        return {k: getattr(self, k) for k in SERVER_KEYS if k != 'password'}

    def to_dict(self):
        """Everything including the password: only for the 0600 credential file."""
        return {k: getattr(self, k) for k in SERVER_KEYS}

    def with_dbname(self, dbname):
        clone = ServerSpec(**self.to_dict())
        clone.dbname = dbname
        return clone

    def describe(self, dbname=None):
        where = self.host or 'local socket'
        return '%s@%s:%s/%s' % (self.user or '(default user)', where, self.port, dbname or self.dbname)

    def connect_kwargs(self, dbname=None, application_name=APPLICATION_NAME, replication=None):
        kwargs = {'dbname': dbname or self.dbname, 'port': self.port,
                  'connect_timeout': self.connect_timeout, 'application_name': application_name}
        for key in ('host', 'user', 'password', 'sslmode', 'sslrootcert'):
            value = getattr(self, key)
            if value not in (None, ''):
                kwargs[key] = value
        if replication:
            kwargs['replication'] = replication
        return kwargs

    def libpq_env(self, dbname=None, application_name=APPLICATION_NAME):
        """Environment for libpq client programs (pg_dump, psql): the password travels here, never in argv."""
        env = {'PGDATABASE': dbname or self.dbname, 'PGPORT': str(self.port),
               'PGCONNECT_TIMEOUT': str(self.connect_timeout), 'PGAPPNAME': application_name}
        for key, env_name in (('host', 'PGHOST'), ('user', 'PGUSER'), ('password', 'PGPASSWORD'),
                              ('sslmode', 'PGSSLMODE'), ('sslrootcert', 'PGSSLROOTCERT')):
            value = getattr(self, key)
            if value not in (None, ''):
                env[env_name] = str(value)
        return env

    def __repr__(self):
        return 'ServerSpec(%s)' % self.describe()


def dbname_conninfo(dbname):
    """A connection string that holds only the database name, for a client program's --dbname.

    libpq reads a --dbname value that contains '=' or starts with postgres:// or postgresql:// as a connection string
    (a database "a=b" breaks it, a database named like a URI points the program, with our credentials, at another
    server). The name inside a connection string is never expanded again: quoted with backslashes before ' and \\."""
    return "dbname='%s'" % dbname.replace('\\', '\\\\').replace("'", "\\'")


def require_psycopg():
    if not HAS_PSYCOPG:
        raise ConnectionFailure('missing_library', 'psycopg 3 is required on the host that runs this: pip install "psycopg[binary]"')


_FAILURE_PATTERNS = (
    ('auth_failed', re.compile(r'password authentication failed|authentication failed|no password supplied|'
                               r'password is required|role ".*" does not exist', re.I),
     'authentication failed for %(who)s'),
    ('database_missing', re.compile(r'database ".*" does not exist', re.I),
     'database "%(db)s" does not exist on %(where)s'),
    ('not_allowed', re.compile(r'no pg_hba\.conf entry', re.I),
     'the server at %(where)s has no pg_hba.conf entry that allows %(who)s: %(detail)s'),
    ('ssl_required', re.compile(r'SSL off|server does not support SSL|SSL connection is required|'
                                r'no encryption', re.I),
     'SSL mismatch connecting to %(where)s: %(detail)s'),
    ('timeout', re.compile(r'timeout expired|timed out', re.I),
     'timed out connecting to %(where)s'),
    ('unreachable', re.compile(r'Connection refused|could not connect|could not translate host name|'
                               r'No route to host|Network is unreachable|No such file or directory|'
                               r'Name or service not known', re.I),
     'cannot reach %(where)s: %(detail)s'),
    ('too_many_connections', re.compile(r'too many clients|remaining connection slots', re.I),
     'the server at %(where)s accepts no more connections'),
    ('starting_up', re.compile(r'the database system is (starting up|shutting down|in recovery mode)', re.I),
     'the server at %(where)s is not accepting connections yet: %(detail)s'),
)


def scrub(text, secrets):
    """Remove every secret from a text (defence in depth: libpq does not echo passwords)."""
    text = str(text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, '********')
    return text


def classify_error(exc, spec, dbname=None):
    """Turn a psycopg connection error into a ConnectionFailure with a short, specific message."""
    raw = scrub(str(exc).strip(), [spec.password])
    detail = raw.splitlines()[-1] if raw else exc.__class__.__name__
    for line in raw.splitlines():
        if 'FATAL' in line or 'error' in line.lower():
            detail = line.split('FATAL:', 1)[-1].strip()
            break
    where = '%s:%s' % (spec.host or 'local socket', spec.port)
    values = {'who': 'user "%s"' % (spec.user or ''), 'db': dbname or spec.dbname, 'where': where, 'detail': detail}
    for kind, pattern, template in _FAILURE_PATTERNS:
        if pattern.search(raw):
            if kind == 'auth_failed' and 'does not exist' in raw and 'role' in raw:
                return ConnectionFailure(kind, 'authentication failed for %(who)s at %(where)s: role does not exist' % values)
            if kind == 'auth_failed':
                return ConnectionFailure(kind, 'authentication failed for %(who)s at %(where)s' % values)
            return ConnectionFailure(kind, template % values)
    return ConnectionFailure('error', 'cannot connect to %s: %s' % (where, detail))


def error_text(exc, detail=False):
    """The first line of an error as a person reads it: PostgreSQL's primary message when there is one (with its
    DETAIL when `detail`), else the first line of the exception, else its class name."""
    diag = getattr(exc, 'diag', None)
    primary = getattr(diag, 'message_primary', None) if diag is not None else None
    text = (primary or str(exc)).strip()
    text = text.splitlines()[0] if text else exc.__class__.__name__
    extra = getattr(diag, 'message_detail', None) if detail and diag is not None else None
    return '%s: %s' % (text, extra) if extra else text


# -- outages: a server that went away for a moment (restart, failover, network) is waited for -----------------------

# SQLSTATEs of a lost or refused connection besides class 08 (connection exception) and 57P (admin/crash shutdown,
# cannot connect now, database dropped, idle session timeout): too many connections.
_LOST_SQLSTATES = ('53300',)
# ConnectionFailure kinds that may pass (the server is down, starting, full, or the network failed).
LOST_KINDS = ('unreachable', 'timeout', 'starting_up', 'too_many_connections', 'error')
# The same, as libpq and the client programs (pg_dump, pg_restore, psql) word it in the errors other layers wrap.
_LOST_TEXT = re.compile(r'terminating connection due to|server closed the connection|connection is (lost|closed)|'
                        r'Connection refused|could not connect to server|connection to server .* failed|'
                        r'the database system is (starting up|shutting down|in recovery mode)|'
                        r'could not (receive|send) data (from|to) (server|client)|SSL SYSCALL error|'
                        r'no connection to the server|consuming input failed|Connection reset by peer|'
                        r'connection timed out|canceling statement due to conflict with recovery', re.I)
OUTAGE_NEW_AFTER = 60.0      # a failure after an attempt that ran this long (seconds) starts a new outage


class OutageTimeout(RuntimeError):
    """A server stayed unreachable for longer than retry_timeout."""


def connection_lost(exc, conn=None):
    """True when `exc` (or an error it was raised from) means a server went away, not that the data or the
    configuration is wrong (retry later); also when `conn`, the connection it came from, is closed or broken.
    Decoding, apply, copy and schema errors wrap the psycopg or client-program error."""
    if conn is not None and (conn.closed or conn.broken):
        return True
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OutageTimeout):
            return False
        if isinstance(exc, ConnectionFailure):
            return exc.kind in LOST_KINDS
        if isinstance(exc, (ConnectionError, TimeoutError, socket.gaierror)):
            return True
        if psycopg is not None and isinstance(exc, psycopg.Error):
            sqlstate = getattr(exc, 'sqlstate', None) or ''
            if isinstance(exc, psycopg.OperationalError) and not sqlstate:
                return True
            if sqlstate.startswith(('08', '57P')) or sqlstate in _LOST_SQLSTATES:
                return True
        if _LOST_TEXT.search(str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def retry_outages(step, limit, log, wait, what, before=None, on_error=None, passthrough=()):
    """Run `step()`; while it fails because a server went away (connection_lost), log it, `wait(seconds)` (0.5 s
    growing to 10 s) and run it again, for up to `limit` seconds of consecutive failures, then raise OutageTimeout.
    `before()` runs before every attempt; an error that is not an outage is raised after `on_error(exc)`; the
    exception types in `passthrough` are raised as they are."""
    failing_since = None
    while True:
        if before is not None:
            before()
        attempt = time.time()
        try:
            return step()
        except passthrough:
            raise
        except Exception as exc:  # pylint: disable=broad-except
            if not connection_lost(exc):
                if on_error is not None:
                    on_error(exc)
                raise
            if failing_since is None or time.time() - attempt > OUTAGE_NEW_AFTER:
                failing_since = attempt      # a new outage (the last attempt ran a while)
            waited = time.time() - failing_since
            if waited > limit:
                raise OutageTimeout('%sgave up after %d s of connection failures (retry_timeout %d s): %s'
                                    % (what, waited, limit, error_text(exc)))
            log('%sconnection problem (%s); retrying' % (what, error_text(exc)))
            wait(min(10.0, 0.5 + waited / 4))


def param_safe_query(query, params, context):
    """The query as psycopg must see it when `params` is given.

    With parameters psycopg reads every '%' of the query text as the start of a placeholder (or '%%'), also inside a
    quoted identifier or literal that sql.Identifier / sql.Literal composed: a table "pct%tab" becomes a '%t'
    placeholder, "a%%b" silently becomes "a%b". So in a composed query with parameters the '%' of every identifier and
    literal is doubled (psycopg turns '%%' back into '%'); sql.SQL text and placeholders are the code's own and stay
    as they are. Without parameters nothing is parsed and the query is left alone."""
    if params is None or sql is None or not isinstance(query, sql.Composable):
        return query
    return b''.join(_param_safe_parts(query, context))


def _param_safe_parts(part, context):
    if isinstance(part, sql.Composed):
        for item in part:
            yield from _param_safe_parts(item, context)
    elif isinstance(part, (sql.SQL, sql.Placeholder)):
        yield part.as_bytes(context)
    else:
        yield part.as_bytes(context).replace(b'%', b'%%')


if HAS_PSYCOPG:
    class ParamSafeCursor(psycopg.Cursor):
        """The cursor of every connection connect() opens: identifiers and literals holding '%' work with parameters."""

        def execute(self, query, params=None, **kwargs):  # pylint: disable=arguments-differ
            return super().execute(param_safe_query(query, params, self), params, **kwargs)

        def executemany(self, query, params_seq, **kwargs):  # pylint: disable=arguments-differ
            return super().executemany(param_safe_query(query, (), self), params_seq, **kwargs)

        def copy(self, statement, params=None, **kwargs):  # pylint: disable=arguments-differ
            return super().copy(param_safe_query(statement, params, self), params, **kwargs)

        def stream(self, query, params=None, **kwargs):  # pylint: disable=arguments-differ
            return super().stream(param_safe_query(query, params, self), params, **kwargs)

    class ParamSafeServerCursor(psycopg.ServerCursor):
        """The named (server-side) cursor of every connection connect() opens, likewise."""

        def execute(self, query, params=None, **kwargs):  # pylint: disable=arguments-differ
            return super().execute(param_safe_query(query, params, self), params, **kwargs)

        def executemany(self, query, params_seq, **kwargs):  # pylint: disable=arguments-differ
            return super().executemany(param_safe_query(query, (), self), params_seq, **kwargs)


def connect(spec, dbname=None, autocommit=True, application_name=APPLICATION_NAME, replication=None, **kwargs):
    """Open a psycopg connection; any failure becomes a ConnectionFailure. Its cursors are ParamSafeCursor."""
    require_psycopg()
    target_db = dbname or spec.dbname
    try:
        conn = psycopg.connect(autocommit=autocommit, **spec.connect_kwargs(target_db, application_name, replication), **kwargs)
    except psycopg.OperationalError as exc:
        raise classify_error(exc, spec, target_db) from None
    conn.cursor_factory = ParamSafeCursor
    conn.server_cursor_factory = ParamSafeServerCursor
    return conn


def server_version_num(conn):
    return conn.info.server_version


def query_all(conn, query, params=None):
    with conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchall() if cur.description else []


def query_one(conn, query, params=None):
    with conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchone() if cur.description else None


def query_value(conn, query, params=None):
    row = query_one(conn, query, params)
    return row[0] if row else None


def ident(*names):
    """A (possibly qualified) identifier composed safely."""
    return sql.Identifier(*names)
