# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pre-migration check catalogue behind pg_dts_verify and the start of pg_dts_migrate.

`run_checks()` returns check items `{id, status, message, hint, objects}` with stable ids. Work happens in two phases:
check_facts.gather() reads both servers (a fixed number of set-based queries per database), then every item declared
here with `@item(id)` judges those facts, and only those: an item is a pure function of the facts, so each can be
tested on made-up facts (tests/unit/test_check_items.py). A server or database that cannot be reached turns into failed
items, never into an exception.
"""

from __future__ import annotations

import fnmatch
import os
import struct

from ansible_collections.pgdts.migration.plugins.module_utils import catalog
from ansible_collections.pgdts.migration.plugins.module_utils import check_facts
from ansible_collections.pgdts.migration.plugins.module_utils import schema
from ansible_collections.pgdts.migration.plugins.module_utils import task_state
from ansible_collections.pgdts.migration.plugins.module_utils.check_facts import (
    APPLY_FUNCTIONS, CONNECTION_HINTS, FAILED, LONG_TRANSACTION_SECONDS, PASS, STATE_DATABASE, STATUSES, WARNING, Facts,
    gather, setting, source_schemas)
from ansible_collections.pgdts.migration.plugins.module_utils.connection import ConnectionFailure

try:
    import psycopg
    from psycopg import sql
except ImportError:  # pragma: no cover - connect() reports the missing library as a failed item
    psycopg = None
    sql = None

SOURCE_MIN_VERSION = 110000          # pg_replication_slot_advance() and publications of partitioned tables
SOURCE_MAX_TESTED_MAJOR = 18
SOURCE_MIN_TESTED_MAJOR = 12         # the oldest major of the tested upgrade matrix (docs/versions.md)
WAL_SENDER_TIMEOUT_MIN_MS = 60000
DISK_HEADROOM = 1.5                  # indexes are rebuilt, WAL and apply bloat come on top of the table data
NAMES_IN_MESSAGE = 5
NUMERIC_TYPE_OIDS = (700, 701, 1700)  # float4, float8, numeric: wal2json writes NaN/Infinity of these as null
FENCE_RIGHTS = check_facts.FENCE_RIGHTS     # the write fence's rights; cutover.py reads them with fence_rights()
fence_rights = check_facts.fence_rights


def _item(check_id, status, message, hint='', objects=None):
    return {'id': check_id, 'status': status, 'message': message, 'hint': hint or '', 'objects': list(objects or [])}


def summarize(items):
    """Counts of items per status: {'pass': n, 'warning': n, 'failed': n}."""
    counts = dict.fromkeys(STATUSES, 0)
    for entry in items:
        counts[entry['status']] += 1
    return counts


def _names(values, limit=NAMES_IN_MESSAGE):
    values = list(values)
    if len(values) <= limit:
        return ', '.join(values)
    return '%s and %d more' % (', '.join(values[:limit]), len(values) - limit)


def _plural(count, word, plural=None):
    return '%d %s' % (count, word if count == 1 else (plural or word + 's'))


def _qname(*parts):
    """A display name: parts joined with dots, each quoted the way SQL would need it."""
    return '.'.join(_ident(p) for p in parts)


# Reserved key words of PostgreSQL: names spelled like one must be quoted in the SQL we suggest.
_RESERVED = frozenset('''
all analyse analyze and any array as asc asymmetric authorization binary both case cast check collate collation column
concurrently constraint create cross current_catalog current_date current_role current_schema current_time
current_timestamp current_user default deferrable desc distinct do else end except false fetch for foreign freeze from
full grant group having ilike in initially inner intersect into is isnull join lateral leading left like limit localtime
localtimestamp natural not notnull null offset on only or order outer overlaps placing primary references returning right
select session_user similar some symmetric system_user table tablesample then to trailing true union unique user using
variadic verbose when where window with
'''.split())


def _ident(name):
    """A name as SQL needs it in a suggested statement (quoted only when it has to be, like quote_ident())."""
    if (name and (name[0].isalpha() or name[0] == '_') and name.replace('_', 'a').isalnum() and name == name.lower()
            and name.isascii() and name not in _RESERVED):
        return name
    return sql.Identifier(name).as_string()


def _literal(value):
    return sql.Literal(value).as_string()


def _bytes(number):
    value = float(number)
    for unit in ('bytes', 'kB', 'MB', 'GB', 'TB'):
        if abs(value) < 1024 or unit == 'TB':
            return ('%d %s' % (value, unit)) if unit == 'bytes' else ('%.1f %s' % (value, unit))
        value /= 1024.0
    return str(number)


def _major(version_num):
    return version_num // 10000 if version_num >= 100000 else version_num // 100


def _version_text(version_num):
    if version_num >= 100000:
        return '%d.%d' % (version_num // 10000, version_num % 10000)
    return '%d.%d.%d' % (version_num // 10000, (version_num // 100) % 100, version_num % 100)


# The write fence (FENCE_RIGHTS is read with the facts; cutover.py reads it too)


def fence_problems(rights, dbnames, user):
    """(message, hint) when the login whose fence_rights() row is `rights` cannot fence `dbnames`, else None."""
    if not rights:
        return 'the source login is not in pg_roles', 'Run as a role that exists on the source.'
    superuser, signal, not_owned = rights.rolsuper, rights.signal_backend, set(rights.not_owned or ())
    if superuser:
        return None
    missing, fixes = [], []
    foreign = [d for d in dbnames if d in not_owned]
    if foreign:
        missing.append('does not own %s %s (ALTER DATABASE ... SET default_transaction_read_only needs the owner)'
                       % ('database' if len(foreign) == 1 else 'databases', _names('"%s"' % d for d in foreign)))
        fixes.extend('ALTER DATABASE %s OWNER TO %s;' % (_ident(d), _ident(user)) for d in foreign[:3])
    if not signal:
        missing.append('is not a member of pg_signal_backend (ending the sessions of other roles needs it)')
        fixes.append('GRANT pg_signal_backend TO %s;' % _ident(user))
    if not missing:
        return None
    return ('role "%s" cannot fence the source writers at the cutover: it %s' % (user, '; it '.join(missing)),
            'On the source, as a superuser: %s Or finish as a superuser (pg_dts_finish source.user), or with '
            'fence=none if the applications are stopped otherwise.' % ' '.join(fixes))


# ------------------------------------------------------------------------------------------------------------------
# Phase 2: items
# ------------------------------------------------------------------------------------------------------------------

ITEMS = []      # (id, function) of every check item, in the order of the output; filled by @item


def item(check_id):
    """Declare a check item: `check_id` is its stable id; the function is called as function(ctx, check_id)."""
    def register(function):
        if check_id in {i for i, _f in ITEMS}:
            raise ValueError('check item %s is declared twice' % check_id)
        ITEMS.append((check_id, function))
        return function
    return register


def _skip_source(check_id):
    return _item(check_id, FAILED, 'skipped because pgdts could not connect to the source (see source.connection)',
                 'Fix the source connection first.')


def _skip_destination(check_id):
    return _item(check_id, FAILED, 'skipped because pgdts could not connect to the destination (see '
                                   'destination.connection)', 'Fix the destination connection first.')


def _fact_error(check_id, holder, *keys):
    for key in keys:
        if key in holder.errors:
            where = 'the %s' % holder.name if holder.name in ('source', 'destination') else 'database "%s"' % holder.name
            return _item(check_id, FAILED, 'could not be checked: reading %s failed: %s' % (where, holder.errors[key]),
                         'Grant the role read access to the system catalogs named in the error, or check manually.')
    return None


def _with_unreachable(ctx, entry):
    """Escalate an item to failed when some selected databases could not be read."""
    missing = ctx.unreachable_dbs()
    if not missing:
        return entry
    entry['status'] = FAILED
    entry['message'] = ('skipped for %s because pgdts could not connect to %s (see source.databases); %s'
                        % (_names('"%s"' % d for d in missing), 'it' if len(missing) == 1 else 'them', entry['message']))
    entry['hint'] = entry['hint'] or 'Fix the database connections first.'
    return entry


def _table_obj(db, schema, name, **extra):
    obj = {'type': 'table', 'database': db, 'schema': schema, 'name': name}
    obj.update(extra)
    return obj


def _tdisplay(db, schema, name):
    return _qname(db, schema, name)


def _per_db_items(ctx, check_id, keys, evaluate):
    """Collect per-database findings with `evaluate(db, holder)` -> list of objects; errors become failed items."""
    if not ctx.src.ok:
        return None, _skip_source(check_id)
    if ctx.selection_error:
        return None, _item(check_id, FAILED, 'skipped because the table selection is invalid (see tables.selection)',
                           'Fix the tables / exclude_tables patterns.')
    found = []
    for db in ctx.reachable_dbs():
        holder = ctx.src_dbs[db]
        error = _fact_error(check_id, holder, *keys)
        if error:
            return None, error
        found.extend(evaluate(db, holder))
    return found, None


@item('task.name')
def check_task_name(ctx, cid):
    if ctx.task_error:
        return _item(cid, FAILED, ctx.task_error,
                     'Use a name that starts with a lower-case letter and holds only lower-case letters, digits and '
                     'underscores (at most 40 characters).')
    return _item(cid, PASS, 'task name "%s" is valid; its slots, publications and origins are named '
                            'pgdts_%s_<database tag>' % (ctx.task, ctx.task))


def _connection_item(check_id, holder, spec, role):
    obj = {'type': 'server', 'role': role, 'host': spec.host, 'port': spec.port, 'dbname': spec.dbname, 'user': spec.user}
    if not holder.ok:
        failure = holder.failure
        return _item(check_id, FAILED, 'cannot connect to the %s: %s' % (role, failure.message),
                     CONNECTION_HINTS.get(failure.kind, 'Check the connection options and the server log.'), [obj])
    return _item(check_id, PASS, 'connected to the %s %s (PostgreSQL %s)'
                 % (role, spec.describe(), holder.get('version_text') or _version_text(holder.get('version'))), '', [obj])


@item('source.connection')
def check_source_connection(ctx, cid):
    return _connection_item(cid, ctx.src, ctx.source_spec, 'source')


@item('destination.connection')
def check_destination_connection(ctx, cid):
    return _connection_item(cid, ctx.dst, ctx.dest_spec, 'destination')


@item('source.databases')
def check_databases(ctx, cid):
    if not ctx.src.ok:
        return _skip_source(cid)
    error = _fact_error(cid, ctx.src, 'databases')
    if error:
        return error
    problems = list(ctx.db_problems)
    for db in ctx.unreachable_dbs():
        failure = ctx.src_dbs[db].failure if db in ctx.src_dbs else None
        problems.append((db, 'cannot be connected to: %s' % (failure.message if failure else 'unknown error')))
    objects = [{'type': 'database', 'name': db, 'problem': p} for db, p in problems]
    if problems:
        hints = []
        if any('state database' in p for _d, p in problems):
            hints.append('"pgdts" is reserved for the pgdts state database: remove it from databases.')
        if any('does not exist' in p for _d, p in problems):
            hints.append('List only databases that exist on the source (SELECT datname FROM pg_database).')
        if any('template' in p or 'datallowconn' in p for _d, p in problems):
            hints.append('Template databases and databases that refuse connections cannot be migrated.')
        if any('cannot be connected' in p for _d, p in problems):
            hints.append('Let the role connect to these databases (GRANT CONNECT ON DATABASE ...; a pg_hba.conf line '
                         'for them).')
        return _item(cid, FAILED, 'selected databases with problems: %s'
                     % '; '.join('"%s" %s' % (d, p) for d, p in problems), ' '.join(hints), objects)
    if not ctx.db_names:
        return _item(cid, FAILED, 'no database selected: the source has no non-template database that allows '
                                  'connections', 'Create the databases to migrate or list them in databases.')
    default = '' if ctx.databases_option else ' (every database that allows connections; "%s" excluded)' % STATE_DATABASE
    shown = _names('"%s"' % d for d in ctx.db_names)
    return _item(cid, PASS, '%s selected%s: %s' % (_plural(len(ctx.db_names), 'database'), default, shown),
                 '', [{'type': 'database', 'name': d} for d in ctx.db_names])


@item('source.replication_connection')
def check_replication_connection(ctx, cid):
    if not ctx.src.ok:
        return _skip_source(cid)
    bad = [(db, err) for db, err in ctx.repl.items() if err]
    if bad:
        text = ' '.join(err for _d, err in bad)
        hints = []
        if 'superuser or replication role' in text or 'permission denied to start WAL sender' in text:
            hints.append('Give the role the REPLICATION attribute: ALTER ROLE %s REPLICATION;'
                         % _ident(ctx.source_spec.user or 'current_user'))
        if 'max_wal_senders' in text or 'replication slots' in text:
            hints.append('Raise max_wal_senders on the source (ALTER SYSTEM SET max_wal_senders = ...; restart).')
        if 'pg_hba.conf' in text:
            hints.append('A logical replication connection is matched by pg_hba.conf like a normal connection to the '
                         'database: add a line for this database, user and address, then reload.')
        if not hints:
            hints.append('Check pg_hba.conf, the REPLICATION attribute and max_wal_senders on the source.')
        return _item(cid, FAILED, 'replication connections (replication=database) failed: %s'
                     % '; '.join('"%s": %s' % (d, e) for d, e in bad), ' '.join(hints),
                     [{'type': 'database', 'name': d, 'error': e} for d, e in bad])
    return _item(cid, PASS, 'replication connections (replication=database) work for %s'
                 % _names('"%s"' % d for d in ctx.repl), '', [{'type': 'database', 'name': d} for d in ctx.repl])


@item('servers.distinct')
def check_distinct(ctx, cid):
    if not ctx.src.ok:
        return _skip_source(cid)
    if not ctx.dst.ok:
        return _skip_destination(cid)
    a, b = ctx.src.get('identity'), ctx.dst.get('identity')
    if not a or not b:
        return (_fact_error(cid, ctx.src, 'identity') or _fact_error(cid, ctx.dst, 'identity')
                or _item(cid, FAILED, 'could not read the server identities'))
    sys_a, sys_b = ctx.src.get('system_identifier'), ctx.dst.get('system_identifier')
    same_system = sys_a is None or sys_b is None or sys_a == sys_b
    if a.started == b.started and same_system:
        return _item(cid, FAILED, 'source and destination are the same server (system identifier %s, started %s)'
                     % (sys_a or sys_b or 'unknown', a.started), 'Point destination at a different PostgreSQL server.',
                     [{'type': 'server', 'system_identifier': sys_a or sys_b, 'started': a.started}])
    note = ' (the destination was cloned from the source: same system identifier)' if sys_a and sys_a == sys_b else ''
    return _item(cid, PASS, 'source and destination are different servers%s' % note)


@item('source.version')
def check_source_version(ctx, cid):
    if not ctx.src.ok:
        return _skip_source(cid)
    version = ctx.src.get('version')
    text = ctx.src.get('version_text') or _version_text(version)
    obj = [{'type': 'server', 'role': 'source', 'version': text, 'version_num': version}]
    if version < SOURCE_MIN_VERSION:
        return _item(cid, FAILED, 'source runs PostgreSQL %s; pgdts supports sources from %d on'
                     % (text, _major(SOURCE_MIN_VERSION)),
                     'Upgrade the source to PostgreSQL %d or later, or migrate it with pg_dump and downtime.'
                     % _major(SOURCE_MIN_VERSION), obj)
    if _major(version) > SOURCE_MAX_TESTED_MAJOR:
        return _item(cid, WARNING, 'source runs PostgreSQL %s, newer than the newest major pgdts was tested with (%d)'
                     % (text, SOURCE_MAX_TESTED_MAJOR), 'Run a trial migration first.', obj)
    if _major(version) < SOURCE_MIN_TESTED_MAJOR:
        return _item(cid, WARNING, 'source runs PostgreSQL %s, older than the oldest major pgdts was tested with (%d)'
                     % (text, SOURCE_MIN_TESTED_MAJOR), 'Run a trial migration first.', obj)
    return _item(cid, PASS, 'source runs PostgreSQL %s (supported: %d to %d)'
                 % (text, SOURCE_MIN_TESTED_MAJOR, SOURCE_MAX_TESTED_MAJOR), '', obj)


def compare_versions(source_num, dest_num):
    """(status, message) for a source/destination server_version_num pair."""
    src_major, dst_major = _major(source_num), _major(dest_num)
    if dst_major < src_major:
        return FAILED, ('destination runs PostgreSQL %d, older than the source (%d): schema and data dumped from a '
                        'newer server may not restore on an older one' % (dst_major, src_major))
    if dst_major != src_major:
        return WARNING, ('destination runs PostgreSQL %d, source %d: a major version upgrade; planner behaviour, '
                         'extension versions and defaults can differ' % (dst_major, src_major))
    return PASS, 'source and destination run the same major version (%d)' % src_major


@item('destination.version')
def check_destination_version(ctx, cid):
    if not ctx.src.ok:
        return _skip_source(cid)
    if not ctx.dst.ok:
        return _skip_destination(cid)
    status, message = compare_versions(ctx.src.get('version'), ctx.dst.get('version'))
    hint = {FAILED: 'Use a destination that runs the same or a newer major version than the source.',
            WARNING: 'Test the application against the destination version before cutover.'}.get(status, '')
    return _item(cid, status, message, hint, [
        {'type': 'server', 'role': 'source', 'version_num': ctx.src.get('version')},
        {'type': 'server', 'role': 'destination', 'version_num': ctx.dst.get('version')}])


@item('worker.client_programs')
def check_client_programs(ctx, cid):
    """pg_dump and pg_restore (psql too, if it is there) the worker can run for these servers, on this host."""
    if not ctx.src.ok:
        return _skip_source(cid)
    if not ctx.dst.ok:
        return _skip_destination(cid)
    low, high = schema.client_bounds(ctx.src.get('version'), ctx.dst.get('version'))
    bindir = getattr(ctx, 'pg_bindir', None)
    try:
        found = schema.client_bindir(bindir, ctx.src.get('version'), ctx.dst.get('version'))
    except schema.SchemaError as exc:
        need = ('%d or newer' % low) if high is None else ('%d to %d' % (low, high)) if low < high else str(low)
        why = ('' if high is None else ' (pg_restore of 17 or newer sends SET transaction_timeout, which a '
               'destination before 17 rejects)')
        return _item(cid, FAILED, 'no pg_dump and pg_restore of PostgreSQL %s on this host%s: %s' % (need, why, exc),
                     'Install the client programs of PostgreSQL %s on the worker host (Debian/Ubuntu: '
                     'postgresql-client-%d from apt.postgresql.org; RHEL: postgresql%d) and, if they are not under '
                     '/usr/lib/postgresql or on PATH, give their directory as pg_bindir.' % (need, low, low))
    programs = [{'type': 'program', 'name': name, 'path': os.path.join(found, name),
                 'major': schema.client_major(os.path.join(found, name))} for name in ('pg_dump', 'pg_restore')]
    return _item(cid, PASS, 'pg_dump and pg_restore of PostgreSQL %s in %s' % (programs[0]['major'], found), '',
                 programs)


@item('source.recovery')
def check_source_recovery(ctx, cid):
    if not ctx.src.ok:
        return _skip_source(cid)
    identity = ctx.src.get('identity')
    if not identity:
        return _fact_error(cid, ctx.src, 'identity') or _item(cid, FAILED, 'could not read the recovery state')
    if identity.in_recovery:
        return _item(cid, FAILED, 'the source is a standby in recovery: pgdts needs the primary, where it creates its '
                                  'publication and slots and where the writes happen',
                     'Point source at the primary server (SELECT pg_is_in_recovery() returns false there).')
    return _item(cid, PASS, 'the source is a primary (not in recovery)')


@item('destination.recovery')
def check_destination_recovery(ctx, cid):
    if not ctx.dst.ok:
        return _skip_destination(cid)
    identity = ctx.dst.get('identity')
    if not identity:
        return _fact_error(cid, ctx.dst, 'identity') or _item(cid, FAILED, 'could not read the recovery state')
    if identity.in_recovery:
        return _item(cid, FAILED, 'the destination is a standby in recovery and accepts no writes',
                     'Point destination at a primary (or promote it: SELECT pg_promote()).')
    return _item(cid, PASS, 'the destination accepts writes (not in recovery)')


@item('source.wal_level')
def check_wal_level(ctx, cid):
    if not ctx.src.ok:
        return _skip_source(cid)
    value = setting(ctx.src, 'wal_level')
    current = value['setting'] if value else 'unknown'
    obj = [{'type': 'setting', 'name': 'wal_level', 'value': current, 'required': 'logical'}]
    if current != 'logical':
        return _item(cid, FAILED, 'wal_level is %s on the source; logical decoding needs logical' % current,
                     'ALTER SYSTEM SET wal_level = logical; then restart the source (pgdts.migration.pg_dts_source_config '
                     'does both).', obj)
    return _item(cid, PASS, 'wal_level is logical', '', obj)


def _own_slots(ctx):
    if not ctx.object_re:
        return []
    return [r for r in ctx.src.get('slots') or [] if ctx.object_re.match(r.slot_name)]


@item('source.replication_slots')
def check_replication_slots(ctx, cid):
    if not ctx.src.ok:
        return _skip_source(cid)
    error = _fact_error(cid, ctx.src, 'slots')
    if error:
        return error
    maximum = int(setting(ctx.src, 'max_replication_slots')['setting'])
    slots = ctx.src.get('slots')
    reused = len(_own_slots(ctx)) if ctx.resuming else 0
    needed = max(len(ctx.db_names) - reused, 0)
    free = maximum - len(slots)
    obj = [{'type': 'setting', 'name': 'max_replication_slots', 'value': maximum, 'in_use': len(slots),
            'needed': needed}]
    idle = [r.slot_name for r in slots if not r.active and not (ctx.object_re and ctx.object_re.match(r.slot_name))]
    obj += [{'type': 'replication_slot', 'name': r.slot_name, 'plugin': r.plugin, 'slot_type': r.slot_type,
             'database': r.database, 'active': r.active} for r in slots]
    counts = 'max_replication_slots = %d, %d in use, %d free; this task needs %d (one per database%s)' % (
        maximum, len(slots), free, needed, ', its existing slots are reused' if reused else '')
    hint = ('Raise max_replication_slots (ALTER SYSTEM SET max_replication_slots = %d; restart the source)%s.'
            % (len(slots) + needed + 1, ', or drop slots nobody uses: %s' % _names(
                'SELECT pg_drop_replication_slot(%s)' % _literal(s) for s in idle) if idle else ''))
    if free < needed:
        return _item(cid, FAILED, 'not enough free replication slots: ' + counts, hint, obj)
    if needed and free == needed:
        return _item(cid, WARNING, 'no spare replication slot: ' + counts + '; a table re-copied after a crash needs '
                                   'one more, temporary slot', hint, obj)
    return _item(cid, PASS, counts, '', obj)


@item('source.wal_senders')
def check_wal_senders(ctx, cid):
    if not ctx.src.ok:
        return _skip_source(cid)
    error = _fact_error(cid, ctx.src, 'walsenders')
    if error:
        return error
    maximum = int(setting(ctx.src, 'max_wal_senders')['setting'])
    used = int(ctx.src.get('walsenders') or 0)
    needed = len(ctx.db_names)
    free = maximum - used
    counts = 'max_wal_senders = %d, %d in use, %d free; this task needs %d (one replication connection per database)' % (
        maximum, used, free, needed)
    obj = [{'type': 'setting', 'name': 'max_wal_senders', 'value': maximum, 'in_use': used, 'needed': needed}]
    if free < needed:
        return _item(cid, FAILED, 'not enough free WAL senders: ' + counts,
                     'Raise max_wal_senders (ALTER SYSTEM SET max_wal_senders = %d; restart the source).'
                     % (used + needed + 2), obj)
    return _item(cid, PASS, counts, '', obj)


@item('source.max_slot_wal_keep_size')
def check_max_slot_wal_keep_size(ctx, cid):
    if not ctx.src.ok:
        return _skip_source(cid)
    value = setting(ctx.src, 'max_slot_wal_keep_size')
    if value is None:
        return _item(cid, PASS, 'max_slot_wal_keep_size does not exist before PostgreSQL 13: slots keep all the WAL '
                                'they need')
    obj = [{'type': 'setting', 'name': 'max_slot_wal_keep_size', 'value': value['display']}]
    if int(value['setting']) >= 0:
        return _item(cid, WARNING, 'max_slot_wal_keep_size = %s: once the task\'s slot holds back more WAL than that '
                                   '(a long copy or a paused sync on a busy source), the server invalidates the slot '
                                   'and the task must start over' % value['display'],
                     'ALTER SYSTEM SET max_slot_wal_keep_size = -1; SELECT pg_reload_conf(); (or a size larger than '
                     'the WAL the source writes during the whole copy, and watch disk space under pg_wal).', obj)
    return _item(cid, PASS, 'max_slot_wal_keep_size = -1: the slot keeps all the WAL the task needs', '', obj)


WAL_RATE_MIN_SECONDS = 86400        # an average WAL rate over less than a day says little about a day


@item('source.wal_retention')
def check_wal_retention(ctx, cid):
    """Can a slot of this task fill the source's disk? Judged on the settings only: the free space under pg_wal cannot
    be read through SQL, so no comparison with it is made; on 14+ the average WAL rate since the statistics were reset
    (pg_stat_wal) tells how much a day of retention would be."""
    if not ctx.src.ok:
        return _skip_source(cid)
    keep = setting(ctx.src, 'max_slot_wal_keep_size')
    if ctx.max_retained_wal:
        return _item(cid, PASS, 'max_retained_wal = %s: when a slot of the task holds back more WAL than that, the '
                                'worker drops the task\'s slots and fails the task, before the source\'s disk fills up'
                     % ctx.max_retained_wal, '', [{'type': 'option', 'name': 'max_retained_wal',
                                                   'value': ctx.max_retained_wal}])
    if keep is not None and int(keep['setting']) >= 0:
        return _item(cid, PASS, 'max_slot_wal_keep_size = %s limits the WAL a slot holds back (the source '
                                'invalidates the slot past it; see source.max_slot_wal_keep_size)' % keep['display'],
                     '', [{'type': 'setting', 'name': 'max_slot_wal_keep_size', 'value': keep['display']}])
    limit = ('max_slot_wal_keep_size = -1 (unlimited)' if keep is not None else
             'max_slot_wal_keep_size does not exist before PostgreSQL 13')
    message = ('%s and the task sets no max_retained_wal: while the destination or the worker is down or behind, and '
               'during the whole copy, the task\'s slot keeps every WAL segment the source writes, until the disk '
               'under pg_wal is full and the source stops (PANIC on a failed WAL write)' % limit)
    written = ctx.src.get('wal_written')
    obj = [{'type': 'setting', 'name': 'max_slot_wal_keep_size', 'value': keep['display'] if keep else None}]
    if written is not None and written.seconds and written.seconds >= WAL_RATE_MIN_SECONDS:
        per_day = int(written.bytes * 86400 / written.seconds)
        message += ('. The source wrote %s of WAL per day on average over the last %d days (pg_stat_wal): about what '
                    'one day of retention holds' % (_bytes(per_day), int(written.seconds // 86400)))
        obj[0]['wal_per_day_bytes'] = per_day
    message += ('. pgdts cannot read the free space under pg_wal: compare it with the WAL the source writes yourself')
    return _item(cid, WARNING, message,
                 'Set max_retained_wal on the task (e.g. max_retained_wal: 10GB, well below the free space under '
                 'pg_wal; pgdts_max_retained_wal in the playbooks): the worker then drops the task\'s slots and fails '
                 'the task first. Or set max_slot_wal_keep_size on the source (the server then invalidates the slot).',
                 obj)


def _session_setting_item(ctx, cid, rules, fix_value):
    """Per-database session settings (role and database defaults apply) judged by `rules`: [(name, bad, why)]."""
    def evaluate(db, holder):
        out = []
        for name, bad, why in rules:
            value = setting(holder, name)
            if value is not None and bad(int(value['setting'])):
                out.append((db, name, value, why))
        return out

    findings, error = _per_db_items(ctx, cid, ['settings'], evaluate)
    if error:
        return error
    if not findings:
        shown = []
        for name, _bad, _why in rules:
            values = sorted({setting(ctx.src_dbs[db], name)['display'] for db in ctx.reachable_dbs()
                             if setting(ctx.src_dbs[db], name)})
            if values:
                shown.append('%s is %s' % (name, ' / '.join(values)))
        return _with_unreachable(ctx, _item(cid, PASS, '%s for the source role' % ' and '.join(shown) if shown else
                                            '%s does not exist on this version' % rules[0][0]))
    user = _ident(ctx.source_spec.user or 'current_user')
    hints = []
    for db, name, value, _why in findings:
        if value['source'] == 'database user':
            hints.append('ALTER ROLE %s IN DATABASE %s SET %s = %s;' % (user, _ident(db), name, fix_value))
        else:
            hints.append('ALTER ROLE %s SET %s = %s;' % (user, name, fix_value))
    hint = '%s (a role setting overrides the configuration file and database settings; new sessions pick it up).' % (
        ' '.join(sorted(set(hints))))
    objects = [{'type': 'setting', 'name': name, 'database': db, 'value': v['display'], 'set_by': v['source']}
               for db, name, v, _why in findings]
    parts = []
    for name, _bad, why in rules:
        mine = [(db, v) for db, n, v, _w in findings if n == name]
        if mine:
            parts.append('%s is %s: %s' % (name, _names('%s in "%s" (set by %s)' % (v['display'], db, v['source'])
                                                        for db, v in mine), why))
    return _with_unreachable(ctx, _item(cid, WARNING, '; '.join(parts), hint, objects))


@item('source.wal_sender_timeout')
def check_wal_sender_timeout(ctx, cid):
    return _session_setting_item(ctx, cid, [(
        'wal_sender_timeout', lambda v: v == 0 or v < WAL_SENDER_TIMEOUT_MIN_MS,
        'below 60s the source drops the change stream while the destination applies one large transaction; 0 never '
        'notices a dead connection, which keeps the slot busy so a resumed task cannot use it')], '60000')


@item('source.statement_timeout')
def check_statement_timeout(ctx, cid):
    return _session_setting_item(ctx, cid, [
        ('statement_timeout', lambda v: v > 0,
         'copying one table is a single COPY statement, so a table whose copy takes longer is cancelled'),
        ('transaction_timeout', lambda v: v > 0,
         'each copy worker reads in one long transaction, which this timeout ends')], '0')


@item('source.idle_in_transaction_session_timeout')
def check_idle_timeout(ctx, cid):
    return _session_setting_item(ctx, cid, [(
        'idle_in_transaction_session_timeout', lambda v: v > 0,
        'copy sessions keep their snapshot transaction open while they wait for the destination and would be ended')],
        '0')


@item('source.replication_privilege')
def check_replication_privilege(ctx, cid):
    if not ctx.src.ok:
        return _skip_source(cid)
    role = ctx.src.get('role')
    if not role:
        return _fact_error(cid, ctx.src, 'role') or _item(cid, FAILED, 'the source role is not in pg_roles')
    name, superuser, replication = role.rolname, role.rolsuper, role.rolreplication
    obj = [{'type': 'role', 'name': name, 'superuser': superuser, 'replication': replication}]
    if superuser or replication:
        return _item(cid, PASS, 'role "%s" %s' % (name, 'is a superuser' if superuser else 'has the REPLICATION attribute'),
                     '', obj)
    return _item(cid, FAILED, 'role "%s" has neither REPLICATION nor superuser: it cannot create or read replication '
                              'slots' % name,
                 'ALTER ROLE %s REPLICATION; (on managed services grant the provider\'s replication role, for example '
                 'rds_replication).' % _ident(name), obj)


@item('source.select_privilege')
def check_select_privilege(ctx, cid):

    def evaluate(db, holder):
        out = []
        by_oid = holder.get('by_oid')
        for r in holder.get('no_select') or []:
            t = by_oid[r.oid]
            out.append(_table_obj(db, t.schema, t.name, privilege='SELECT'))
        for r in holder.get('no_usage') or []:
            out.append({'type': 'schema', 'database': db, 'name': r.nspname, 'privilege': 'USAGE'})
        for r in holder.get('sequences') or []:
            if not r.has_sequence_privilege:
                out.append({'type': 'sequence', 'database': db, 'schema': r.nspname, 'name': r.relname,
                            'privilege': 'SELECT'})
        return out

    found, error = _per_db_items(ctx, cid, ['no_select', 'no_usage', 'sequences'], evaluate)
    if error:
        return error
    user = _ident(ctx.source_spec.user or 'current_user')
    if found:
        schemas = sorted({(o['database'], o.get('schema') or o['name']) for o in found})
        shown = _names('%s %s' % (o['type'], _qname(o['database'], o['name']) if o['type'] == 'schema' else
                                  _tdisplay(o['database'], o['schema'], o['name'])) for o in found)
        grants = ' '.join('GRANT USAGE ON SCHEMA {s} TO {u}; GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {u}; '
                          'GRANT SELECT ON ALL SEQUENCES IN SCHEMA {s} TO {u};'.format(s=_ident(s), u=user)
                          for _d, s in schemas[:3])
        return _with_unreachable(ctx, _item(
            cid, FAILED, 'the source role lacks read access to %s: %s' % (_plural(len(found), 'object'), shown),
            'In each database: %s (or GRANT pg_read_all_data TO %s on PostgreSQL 14+).' % (grants, user), found))
    count = sum(len(ctx.selected(db)) for db in ctx.reachable_dbs())
    return _with_unreachable(ctx, _item(cid, PASS, 'the source role can read every selected table (%d), its schema and '
                                                   'its sequences' % count))


@item('source.row_security')
def check_row_security(ctx, cid):

    def evaluate(db, holder):
        by_oid = holder.get('by_oid')
        return [_table_obj(db, by_oid[r.oid].schema, by_oid[r.oid].name, forced=bool(r.forced))
                for r in holder.get('rls_filtered') or []]

    found, error = _per_db_items(ctx, cid, ['rls_filtered'], evaluate)
    if error:
        return error
    if not found:
        return _with_unreachable(ctx, _item(cid, PASS, 'row-level security hides no row of a selected table from the '
                                                       'source role'))
    user = _ident(ctx.source_spec.user or 'current_user')
    forced = [o for o in found if o['forced']]
    hint = ('ALTER ROLE %s BYPASSRLS; (as a superuser), or migrate as a superuser, or as the owner of the tables'
            % user)
    if forced:
        hint += (' (the owner too is filtered where FORCE ROW LEVEL SECURITY is set: ALTER TABLE ... NO FORCE ROW '
                 'LEVEL SECURITY, or BYPASSRLS)')
    return _with_unreachable(ctx, _item(
        cid, FAILED, 'row-level security would hide rows of %s from the source role, so the copy and the comparison '
                     'would see fewer rows (pgdts reads with row_security = off and fails instead): %s'
        % (_plural(len(found), 'table'), _names(_tdisplay(o['database'], o['schema'], o['name']) for o in found)),
        hint + '.', found))


@item('source.fence_privilege')
def check_fence_privilege(ctx, cid):
    if not ctx.src.ok:
        return _skip_source(cid)
    rights = ctx.src.get('fence_rights')
    if rights is None:
        return _fact_error(cid, ctx.src, 'fence_rights') or _item(cid, FAILED, 'could not read the source role')
    user = ctx.source_spec.user or 'current_user'
    problem = fence_problems(rights, ctx.db_names, user)
    obj = [{'type': 'role', 'name': user, 'superuser': bool(rights.rolsuper), 'pg_signal_backend': bool(rights.signal_backend)}]
    if problem:
        return _item(cid, FAILED, problem[0], problem[1], obj)
    return _item(cid, PASS, 'role "%s" can fence the selected databases at the cutover (%s)' % (
        user, 'superuser' if rights.rolsuper else 'owner of the databases and member of pg_signal_backend'), '', obj)


@item('source.publication_privilege')
def check_publication_privilege(ctx, cid):
    if ctx.plugin != 'pgoutput':
        return _item(cid, PASS, 'plugin %s needs no publication' % ctx.plugin)

    def evaluate(db, holder):
        out = []
        if holder.get('can_create') is False:
            out.append({'type': 'database', 'name': db, 'privilege': 'CREATE'})
        by_oid = holder.get('by_oid')
        for r in holder.get('not_owned') or []:
            t = by_oid[r.oid]
            out.append(_table_obj(db, t.schema, t.name, privilege='OWNER'))
        return out

    found, error = _per_db_items(ctx, cid, ['not_owned', 'can_create'], evaluate)
    if error:
        return error
    if found:
        user = _ident(ctx.source_spec.user or 'current_user')
        dbs = [o for o in found if o['type'] == 'database']
        tables = [o for o in found if o['type'] == 'table']
        parts = []
        if dbs:
            parts.append('no CREATE privilege on %s' % _names('database "%s"' % o['name'] for o in dbs))
        if tables:
            parts.append('does not own %s: %s' % (_plural(len(tables), 'table'),
                                                  _names(_tdisplay(o['database'], o['schema'], o['name']) for o in tables)))
        return _with_unreachable(ctx, _item(
            cid, FAILED, 'pgoutput needs a publication of the selected tables, and the source role %s (adding a table to '
                         'a publication needs its ownership)' % '; '.join(parts),
            'Connect as the tables\' owner or a superuser, or GRANT <owner role> TO %s;%s or use plugin wal2json, '
            'which needs no publication.' % (user, ' GRANT CREATE ON DATABASE ... TO %s;' % user if dbs else ''), found))
    return _with_unreachable(ctx, _item(cid, PASS, 'the source role may create the publication (it owns the selected '
                                                   'tables and may create in the databases)'))


@item('source.long_transactions')
def check_long_transactions(ctx, cid):
    if not ctx.src.ok:
        return _skip_source(cid)
    error = _fact_error(cid, ctx.src, 'long_transactions')
    if error:
        return error
    rows = ctx.src.get('long_transactions') or []
    hidden = int(ctx.src.get('hidden_xid_sessions') or 0)
    note = ''
    if hidden:
        note = ('; %s of other roles hold a transaction id but their age is hidden from this role (grant it '
                'pg_read_all_stats to see them)' % _plural(hidden, 'session'))
    if not rows:
        return _item(cid, PASS, 'no transaction has held a transaction id for more than %d s%s'
                     % (LONG_TRANSACTION_SECONDS, note))
    objects = [{'type': 'session', 'pid': r.pid, 'user': r.usename, 'database': r.datname,
                'application_name': r.application_name, 'state': r.state, 'backend_type': r.backend_type,
                'transaction_seconds': r.seconds} for r in rows]
    shown = _names('pid %d (%s, %s, %s, open %d s)' % (r.pid, r.usename, r.datname, r.state, r.seconds) for r in rows)
    return _item(cid, WARNING, '%s %s open with a transaction id: creating the task\'s slot waits until they end%s: %s'
                 % (_plural(len(rows), 'transaction'), 'is' if len(rows) == 1 else 'are', note, shown),
                 'Let them finish, or end them: SELECT pg_terminate_backend(pid) for %s. Sessions "idle in '
                 'transaction" usually come from an application that forgot to commit.'
                 % _names(str(r.pid) for r in rows), objects)


@item('source.prepared_transactions')
def check_prepared_transactions(ctx, cid):
    if not ctx.src.ok:
        return _skip_source(cid)
    error = _fact_error(cid, ctx.src, 'prepared')
    if error:
        return error
    rows = ctx.src.get('prepared') or []
    if not rows:
        return _item(cid, PASS, 'no prepared (two-phase) transactions on the source')
    objects = [{'type': 'prepared_transaction', 'gid': r.gid, 'owner': r.owner, 'database': r.database,
                'seconds': r.seconds} for r in rows]
    return _item(cid, WARNING, '%s %s: creating the task\'s slot waits until each is committed or rolled back: %s'
                 % (_plural(len(rows), 'prepared transaction'), 'is pending' if len(rows) == 1 else 'are pending',
                    _names('%s (database %s, prepared %d s ago)' % (_literal(r.gid), r.database, r.seconds) for r in rows)),
                 'Resolve them with their transaction manager, or in the named database: COMMIT PREPARED %s; or '
                 'ROLLBACK PREPARED %s;' % (_literal(rows[0].gid), _literal(rows[0].gid)), objects)


@item('plugin.load')
def check_plugin_load(ctx, cid):
    if not ctx.src.ok:
        return _skip_source(cid)
    status, message, hint = ctx.plugin_result
    return _item(cid, status, message, hint, [{'type': 'plugin', 'name': ctx.plugin}])


@item('plugin.numeric_special_values')
def check_numeric_special_values(ctx, cid):
    if ctx.plugin != 'wal2json':
        return _item(cid, PASS, 'plugin %s carries NaN and Infinity of numeric and float columns as they are' % ctx.plugin)

    def evaluate(db, holder):
        return [{'type': 'column', 'database': db, 'schema': t.schema, 'table': t.name, 'name': c.name,
                 'data_type': c.type_name, 'table_has_key': bool(t.key_columns)}
                for t in holder.get('selected', []) if t.relkind != 'p' for c in t.columns
                if c.type_oid in NUMERIC_TYPE_OIDS and not c.generated]

    found, error = _per_db_items(ctx, cid, ['tables'], evaluate)
    if error:
        return error
    if not found:
        return _with_unreachable(ctx, _item(cid, PASS, 'no selected column is numeric, real or double precision'))
    shown = _names('%s.%s (%s)' % (_tdisplay(o['database'], o['schema'], o['table']), _ident(o['name']), o['data_type'])
                   for o in found)
    keyless = sorted({_tdisplay(o['database'], o['schema'], o['table']) for o in found if not o['table_has_key']})
    message = ('wal2json before 2.6 (Debian 12 ships 2.5) writes NaN, Infinity and -Infinity of numeric, real and '
               'double precision columns as null, like a real NULL: during the sync both are applied as NULL (a NaN '
               'or Infinity into a NOT NULL column fails the sync); pg_dts_finish, under the write fence, gives every '
               'such NULL on the destination the source\'s value, by key; %s: %s' % (_plural(len(found), 'column'), shown))
    if keyless:
        message += ('. In tables without a key (%s) such a value written during the sync stays NULL: the checksum '
                    'comparison of pg_dts_finish reports the table as different, compare: count does not see it'
                    % _names(keyless))
    return _with_unreachable(ctx, _item(
        cid, WARNING, message,
        'Use plugin pgoutput, or wal2json 2.6 or later (numeric-data-types-as-string), or make sure these columns '
        "never hold NaN or Infinity (for example CHECK (col <> 'NaN')).", found))


@item('task.objects')
def check_task_objects(ctx, cid):
    if ctx.task_error:
        return _item(cid, FAILED, 'skipped because the task name is invalid (see task.name)', 'Fix the task name.')
    if not ctx.src.ok:
        return _skip_source(cid)
    if not ctx.dst.ok:
        return _skip_destination(cid)
    error = _fact_error(cid, ctx.src, 'slots') or _fact_error(cid, ctx.dst, 'origins')
    if error:
        return error
    objects = []
    for r in _own_slots(ctx):
        objects.append({'type': 'replication_slot', 'name': r.slot_name, 'plugin': r.plugin, 'slot_type': r.slot_type,
                        'database': r.database, 'active': r.active, 'active_pid': r.active_pid,
                        'wal_status': r.wal_status})
    for db in ctx.reachable_dbs():
        holder = ctx.src_dbs[db]
        for r in holder.get('publications') or []:
            if ctx.object_re.match(r.pubname):
                objects.append({'type': 'publication', 'name': r.pubname, 'database': db})
    for r in ctx.dst.get('origins') or []:
        if ctx.object_re.match(r.roname):
            objects.append({'type': 'replication_origin', 'name': r.roname})
    unknown = ''
    if ctx.unreachable_dbs():
        unknown = ' (publications in %s not checked: no connection)' % _names('"%s"' % d for d in ctx.unreachable_dbs())
    if not objects:
        return _item(cid, PASS, 'no slot, publication or origin named for task "%s" exists%s' % (ctx.task, unknown))
    shown = _names('%s %s' % (o['type'].replace('_', ' '), o['name']) for o in objects)
    if not ctx.resuming:
        drops = []
        for o in objects:
            if o['type'] == 'replication_slot':
                drops.append('on the source: SELECT pg_drop_replication_slot(%s);' % _literal(o['name']))
            elif o['type'] == 'publication':
                drops.append('in source database %s: DROP PUBLICATION %s;' % (_ident(o['database']), _ident(o['name'])))
            else:
                drops.append('on the destination: SELECT pg_replication_origin_drop(%s);' % _literal(o['name']))
        return _item(cid, FAILED, 'objects named for task "%s" already exist and no resumable task of that name does: '
                                  '%s' % (ctx.task, shown),
                     'Choose another task name, or if they are leftovers of an abandoned run drop them: %s'
                     % ' '.join(drops), objects)
    problems = []
    for o in objects:
        if o['type'] != 'replication_slot':
            continue
        expected_db = ctx.expected_names.get(o['name'])
        if o['slot_type'] != 'logical' or (o['plugin'] and o['plugin'] != ctx.plugin):
            problems.append((FAILED, 'slot %s uses plugin %s, the task now asks for %s' % (o['name'], o['plugin'], ctx.plugin)))
        if expected_db and o['database'] != expected_db:
            problems.append((FAILED, 'slot %s belongs to database "%s", not "%s"' % (o['name'], o['database'], expected_db)))
        if o['wal_status'] == 'lost':
            problems.append((FAILED, 'slot %s lost WAL it needed (wal_status lost): the changes since the copy are gone'
                             % o['name']))
        if o['active']:
            problems.append((WARNING, 'slot %s is in use by pid %s: a resumed worker cannot take it until that session ends'
                             % (o['name'], o['active_pid'])))
    if problems:
        status = FAILED if any(s == FAILED for s, _m in problems) else WARNING
        return _item(cid, status, 'the resumable task "%s" has objects that cannot be reused as they are: %s'
                     % (ctx.task, '; '.join(m for _s, m in problems)),
                     'A slot with another plugin or with lost WAL cannot continue the task: cancel the task and start a '
                     'new one (the copy starts over). An active slot: end the session holding it '
                     '(SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = ...).',
                     objects)
    return _item(cid, PASS, 'task "%s" is resumed: its existing objects are reused: %s%s' % (ctx.task, shown, unknown),
                 '', objects)


@item('tables.selection')
def check_selection(ctx, cid):
    if ctx.selection_error:
        return _item(cid, FAILED, 'invalid table pattern: %s' % ctx.selection_error,
                     'Write patterns as schema.table or database.schema.table; * and ? are globs; quote names that hold '
                     'dots ("my.schema".table).', [])
    if not ctx.src.ok:
        return _skip_source(cid)
    error = None
    for db in ctx.reachable_dbs():
        error = error or _fact_error(cid, ctx.src_dbs[db], 'tables')
    if error:
        return error
    per_db = {db: ctx.selected(db) for db in ctx.reachable_dbs()}
    total = sum(len(v) for v in per_db.values())
    if not total:
        if ctx.unreachable_dbs():
            return _with_unreachable(ctx, _item(cid, FAILED, 'no table selected in the databases pgdts could read', ''))
        what = 'the patterns match no table' if ctx.include else 'the selected databases hold no table'
        return _item(cid, FAILED, 'empty selection: %s%s, so there is nothing to migrate'
                     % (what, ' after exclude_tables' if ctx.exclude else ''),
                     'Check databases, tables and exclude_tables (patterns are schema.table, globs allowed).')
    partitions = sum(1 for v in per_db.values() for t in v if t.is_partition)
    objects = [{'type': 'database', 'name': db, 'tables': len(v)} for db, v in per_db.items()]
    message = '%s selected in %s%s' % (_plural(total, 'table'), _plural(len(per_db), 'database'),
                                       ' (%d of them partitions)' % partitions if partitions else '')
    empty = [db for db, v in per_db.items() if not v]
    if empty and ctx.include:
        return _with_unreachable(ctx, _item(
            cid, WARNING, message + '; %s no selected table but would still be part of the task'
            % ('database %s holds' % _names('"%s"' % d for d in empty) if len(empty) == 1 else
               'databases %s hold' % _names('"%s"' % d for d in empty)),
            'List only the databases you mean in databases.', objects))
    return _with_unreachable(ctx, _item(cid, PASS, message, '', objects))


@item('tables.missing')
def check_missing(ctx, cid):
    if ctx.selection_error:
        return _item(cid, FAILED, 'skipped because the table selection is invalid (see tables.selection)',
                     'Fix the tables / exclude_tables patterns.')
    if not ctx.include:
        return _item(cid, PASS, 'no table patterns given: every table of the selected databases is selected')
    if not ctx.src.ok:
        return _skip_source(cid)
    missing = []
    for pattern in ctx.include:
        parsed = catalog.split_pattern(pattern)
        dbs = [d for d in ctx.reachable_dbs() if parsed[0] is None or fnmatch.fnmatchcase(d, parsed[0])]
        if not any(catalog.select_tables(ctx.src_dbs[d].get('tables', []), [pattern]) for d in dbs):
            where = ('no selected database matches "%s"' % parsed[0]) if not dbs else \
                ('no table matches in %s' % _names('"%s"' % d for d in dbs))
            missing.append({'type': 'pattern', 'pattern': pattern, 'problem': where})
    if missing:
        return _with_unreachable(ctx, _item(
            cid, FAILED, 'selected tables that do not exist: %s'
            % '; '.join('%s (%s)' % (o['pattern'], o['problem']) for o in missing),
            'Correct the patterns (names are case sensitive; views, materialized views and foreign tables are not '
            'tables) or create the tables.', missing))
    return _with_unreachable(ctx, _item(cid, PASS, 'every table pattern matches at least one table'))


@item('tables.replica_identity')
def check_replica_identity(ctx, cid):
    mode = getattr(ctx, 'replica_identity', 'fail') or 'fail'

    def evaluate(db, holder):
        by_oid = holder.get('by_oid')
        not_owned = {r.oid for r in holder.get('not_owned') or []}
        # unlogged tables are never published (see tables.unlogged)
        rows = [by_oid[r.oid] for r in holder.get('no_replica_identity') or [] if by_oid[r.oid].relpersistence != 'u']
        parents = {t.qualified for t in holder.get('selected', []) if t.relkind == 'p'}
        return [_table_obj(db, t.schema, t.name, replica_identity={'d': 'default', 'n': 'nothing', 'i': 'index'}.get(
            t.replica_identity, t.replica_identity), owned=t.oid not in not_owned,
            partition_of=t.parent if t.is_partition and t.parent in parents else None)
            for t in sorted(rows, key=lambda x: (x.schema, x.name))]

    found, error = _per_db_items(ctx, cid, ['no_replica_identity', 'not_owned'], evaluate)
    if error:
        return error
    if not found:
        return _with_unreachable(ctx, _item(cid, PASS, 'every selected table has a primary key or a usable replica '
                                                       'identity'))
    shown = _names(_tdisplay(o['database'], o['schema'], o['name']) for o in found)
    if not ctx.incremental:
        return _with_unreachable(ctx, _item(
            cid, PASS, '%s no primary key or replica identity, which only matters for incremental sync (off): %s'
            % (_plural(len(found), 'table has', 'tables have'), shown), '', found))
    cost = ('REPLICA IDENTITY FULL writes the whole old row to the WAL on every UPDATE and DELETE of the table (free '
            'for insert-only tables), and the destination matches updated and deleted rows on all columns')
    inner = [o for o in found if o['partition_of']]
    if mode == 'exclude' and inner:
        return _with_unreachable(ctx, _item(
            cid, FAILED, 'replica_identity: exclude cannot leave out %s of a selected partitioned table (the '
            'publication of the parent publishes %s, and the source\'s UPDATE and DELETE on %s would fail): %s'
            % (_plural(len(inner), 'partition'), 'it' if len(inner) == 1 else 'them',
               'it' if len(inner) == 1 else 'them',
               _names(_tdisplay(o['database'], o['schema'], o['name']) for o in inner)),
            'Add a primary key to the partitioned table, or use replica_identity: full.', found))
    if mode == 'exclude':
        return _with_unreachable(ctx, _item(
            cid, WARNING, '%s no primary key or usable replica identity and %s left out of the task '
            '(replica_identity: exclude): not copied, not synced and not in the comparison of pg_dts_finish: %s'
            % (_plural(len(found), 'table has', 'tables have'), 'is' if len(found) == 1 else 'are', shown),
            'Add a primary key (or use replica_identity: full) to migrate them.', found))
    if mode == 'full':
        foreign = [o for o in found if not o['owned']]
        if foreign:
            return _with_unreachable(ctx, _item(
                cid, FAILED, 'replica_identity: full needs to set REPLICA IDENTITY FULL on %s, but the source login '
                'does not own %s: %s' % (_plural(len(found), 'table'), 'it' if len(foreign) == 1 else 'them',
                                         _names(_tdisplay(o['database'], o['schema'], o['name']) for o in foreign)),
                'Run the task as the tables\' owner, or let the owner run ALTER TABLE %s REPLICA IDENTITY FULL; '
                'before the task starts.' % _qname(foreign[0]['schema'], foreign[0]['name']), found))
        return _with_unreachable(ctx, _item(
            cid, WARNING, '%s no primary key or usable replica identity; the task sets REPLICA IDENTITY FULL on %s '
            'on the source before it publishes %s (replica_identity: full): %s. %s'
            % (_plural(len(found), 'table has', 'tables have'), 'it' if len(found) == 1 else 'them',
               'it' if len(found) == 1 else 'them', shown, cost),
            'A primary key is cheaper; REPLICA IDENTITY FULL stays set after the task (ALTER TABLE ... REPLICA '
            'IDENTITY DEFAULT undoes it).', found))
    if ctx.plugin == 'pgoutput':
        effect = ('a publication of %s updates would make every UPDATE and DELETE on %s fail on the source ("cannot '
                  'update table ... because it does not have a replica identity and publishes updates"), and the '
                  'task never publishes %s so' % (('its', 'it', 'it') if len(found) == 1 else ('their', 'them', 'them')))
    else:
        effect = ('%s updates and deletes would reach the destination without a key and could not be matched to a row'
                  % ('its' if len(found) == 1 else 'their'))
    statements = ' '.join('ALTER TABLE %s REPLICA IDENTITY FULL;' % _qname(o['schema'], o['name']) for o in found[:3])
    return _with_unreachable(ctx, _item(
        cid, FAILED, '%s no primary key or usable replica identity: %s: %s'
        % (_plural(len(found), 'table has', 'tables have'), effect, shown),
        'Add a primary key; or in the table\'s database: %s%s; or start the task with replica_identity: full (the '
        'task sets it; %s) or replica_identity: exclude (the tables are left out: not copied, synced or compared).'
        % (statements, ' ...' if len(found) > 3 else '', cost), found))


_ENABLED = {'O': 'origin', 'D': 'disabled', 'R': 'replica', 'A': 'always'}


def _trigger_like_item(ctx, cid, key, kind):
    def evaluate(db, holder):
        by_oid = holder.get('by_oid')
        out = []
        for row in holder.get(key) or []:
            t = by_oid[row.relid]
            out.append({'type': kind, 'database': db, 'schema': t.schema, 'table': t.name, 'name': row.name,
                        'enabled': _ENABLED.get(row.enabled, row.enabled)})
        return out

    found, error = _per_db_items(ctx, cid, [key], evaluate)
    if error:
        return error
    active = [o for o in found if o['enabled'] != 'disabled']
    if not active:
        return _with_unreachable(ctx, _item(cid, PASS, 'no selected table has %ss%s' % (
            kind, ' (only disabled ones)' if found else '')))
    firing = [o for o in active if o['enabled'] in ('always', 'replica')]
    shown = _names('%s on %s' % (_ident(o['name']), _tdisplay(o['database'], o['schema'], o['table'])) for o in active)
    message = ('%s on selected tables: %s. The destination gets the same %ss. Changes are applied with '
               'session_replication_role = replica, so ordinary %ss stay silent during the sync'
               % (_plural(len(active), kind), shown, kind, kind))
    verb = 'TRIGGER' if kind == 'trigger' else 'RULE'
    if firing:
        message += ('; but %s %s ENABLE ALWAYS or ENABLE REPLICA, so %s for every applied row and %s what the source '
                    'already did: %s' % (_plural(len(firing), kind), 'is' if len(firing) == 1 else 'are',
                                         'it fires' if len(firing) == 1 else 'they fire',
                                         'repeats' if len(firing) == 1 else 'repeat',
                                         _names('%s on %s' % (_ident(o['name']), _qname(o['schema'], o['table']))
                                                for o in firing)))
        disable = ' '.join('ALTER TABLE %s DISABLE %s %s;' % (_qname(o['schema'], o['table']), verb, _ident(o['name']))
                           for o in firing[:3])
        hint = ('On the destination disable them until cutover (%s%s), then enable them again; ' % (
            disable, ' ...' if len(firing) > 3 else ''))
    else:
        hint = ''
    hint += ('make sure no %s writes to another migrated table in a way the source does not (its effects arrive from '
             'the source already).' % kind)
    hint = hint[0].upper() + hint[1:]
    return _with_unreachable(ctx, _item(cid, WARNING, message, hint, active))


@item('tables.triggers')
def check_triggers(ctx, cid):
    return _trigger_like_item(ctx, cid, 'triggers', 'trigger')


@item('tables.rules')
def check_rules(ctx, cid):
    return _trigger_like_item(ctx, cid, 'rules', 'rule')


@item('tables.unlogged')
def check_unlogged(ctx, cid):

    def evaluate(db, holder):
        return [_table_obj(db, t.schema, t.name) for t in holder.get('selected', []) if t.relpersistence == 'u']

    found, error = _per_db_items(ctx, cid, ['tables'], evaluate)
    if error:
        return error
    if not found:
        return _with_unreachable(ctx, _item(cid, PASS, 'no selected table is unlogged'))
    shown = _names(_tdisplay(o['database'], o['schema'], o['name']) for o in found)
    if not ctx.incremental:
        return _with_unreachable(ctx, _item(cid, PASS, '%s unlogged; the full copy includes them: %s'
                                            % (_plural(len(found), 'selected table is', 'selected tables are'), shown),
                                            '', found))
    return _with_unreachable(ctx, _item(
        cid, WARNING, '%s unlogged: changes to unlogged tables are not written to WAL, so the incremental sync cannot '
                      'see them; the full copy copies them, the publication and the sync leave them out, and '
                      'pg_dts_finish copies them again (TRUNCATE and COPY) under the write fence, which lengthens the '
                      'fence by their copy time: %s'
                      % (_plural(len(found), 'selected table is', 'selected tables are'), shown),
        'ALTER TABLE %s SET LOGGED; before the migration (it rewrites the table) to have them synced continuously '
        'instead.' % _qname(found[0]['schema'], found[0]['name']), found))


@item('tables.materialized_views')
def check_materialized_views(ctx, cid):
    whole = not ctx.include and not ctx.exclude

    def evaluate(db, holder):
        rows = holder.get('matviews') or []
        if whole:
            return [{'type': 'materialized_view', 'database': db, 'schema': r.nspname, 'name': r.relname,
                     'carried': True} for r in rows]
        # a table selection carries the matviews of the schemas of its tables (the schema dump holds them)
        schemas = {t.schema for t in holder.get('selected', [])}
        patterns = [catalog.split_pattern(p) for p in ctx.include]
        named = [(r.nspname, r.relname) for r in rows
                 if any((p[0] is None or fnmatch.fnmatchcase(db, p[0])) and fnmatch.fnmatchcase(r.nspname, p[1])
                        and fnmatch.fnmatchcase(r.relname, p[2]) for p in patterns)]
        return [{'type': 'materialized_view', 'database': db, 'schema': r.nspname, 'name': r.relname,
                 'carried': r.nspname in schemas}
                for r in rows if r.nspname in schemas or (r.nspname, r.relname) in named]

    found, error = _per_db_items(ctx, cid, ['matviews'], evaluate)
    if error:
        return error
    if not found:
        return _with_unreachable(ctx, _item(cid, PASS, 'no materialized view in the selection'))
    left = [o for o in found if not o['carried']]
    if left:
        shown = _names(_tdisplay(o['database'], o['schema'], o['name']) for o in left)
        return _with_unreachable(ctx, _item(
            cid, WARNING, 'the table patterns match %s, which are not tables and are not carried (a table selection '
                          'carries the materialized views of the schemas of its tables only): %s'
                          % (_plural(len(left), 'materialized view'), shown),
            'Select a table of their schema, or create %s (and the others) on the destination after cutover and '
            'REFRESH it there.' % _qname(left[0]['schema'], left[0]['name']), found))
    shown = _names(_tdisplay(o['database'], o['schema'], o['name']) for o in found)
    return _with_unreachable(ctx, _item(
        cid, PASS, '%s: logical decoding does not carry their contents, so pgdts refreshes them on the destination '
                   'after the copy and again at cutover after the catch-up (in dependency order; one that is not '
                   'populated on the source stays unpopulated); they then hold what a refresh on the source at the '
                   'fence would give, which differs from a source matview not refreshed since its tables changed: %s'
                   % (_plural(len(found), 'materialized view'), shown), None, found))


@item('tables.large_objects')
def check_large_objects(ctx, cid):
    whole = not ctx.include and not ctx.exclude
    found, error = _per_db_items(ctx, cid, ['large_objects'], lambda db, h: [
        {'type': 'database', 'name': db, 'large_objects': int(h.get('large_objects'))}
        for _x in [0] if int(h.get('large_objects') or 0) > 0])
    if error:
        return error
    if not found:
        return _with_unreachable(ctx, _item(cid, PASS, 'no large objects in the selected databases'))
    counts = _names('%d in "%s"' % (o['large_objects'], o['name']) for o in found)
    if whole:
        return _with_unreachable(ctx, _item(
            cid, PASS, 'large objects (%s): copied with the full copy under its snapshot, with their oids (owners and '
                       'privileges with migrate_roles), and brought up to date at cutover while the source is fenced '
                       '(created, unlinked, written again where the md5 of the data differs), since logical decoding '
                       'does not carry them' % counts,
            None, found))
    return _with_unreachable(ctx, _item(
        cid, WARNING, 'large objects exist (%s): a table selection does not carry large objects (nothing tells which '
                      'of them belong to the selected tables), so the destination gets none of them' % counts,
        'Migrate the whole database (no tables / exclude_tables) to carry them, or copy them yourself while writes '
        'are stopped at cutover (pg_dump --large-objects --data-only).', found))


@item('tables.generated_columns')
def check_generated_columns(ctx, cid):

    def evaluate(db, holder):
        return [{'type': 'column', 'database': db, 'schema': t.schema, 'table': t.name, 'name': c.name}
                for t in holder.get('selected', []) for c in t.columns if c.generated]

    found, error = _per_db_items(ctx, cid, ['tables'], evaluate)
    if error:
        return error
    if not found:
        return _with_unreachable(ctx, _item(cid, PASS, 'no selected table has generated columns'))
    shown = _names('%s.%s' % (_tdisplay(o['database'], o['schema'], o['table']), _ident(o['name'])) for o in found)
    return _with_unreachable(ctx, _item(
        cid, WARNING, '%s: their values are not copied but computed again by the destination, so they match the source '
                      'only if the functions and collations their expressions use behave the same there: %s'
                      % (_plural(len(found), 'generated column'), shown),
        'Check that the functions used by these expressions exist with the same definition on the destination (compare '
        'a sample after the copy).', found))


@item('tables.foreign_keys')
def check_foreign_keys(ctx, cid):

    def evaluate(db, holder):
        by_oid = holder.get('by_oid')
        selected = {t.oid for t in holder.get('selected', [])}
        selected_names = {t.qualified for t in holder.get('selected', [])}
        out, seen = [], set()
        for fk in holder.get('foreign_keys') or []:
            if fk.confrelid in selected:
                continue
            table = by_oid[fk.conrelid]
            if fk.inherited and table.parent in selected_names:
                continue                # reported on the partitioned parent
            key = (fk.conrelid, fk.conname)
            if key in seen:
                continue
            seen.add(key)
            out.append({'type': 'foreign_key', 'database': db, 'schema': table.schema, 'table': table.name,
                        'name': fk.conname, 'references': '%s.%s' % (fk.ref_schema, fk.ref_name)})
        return out

    found, error = _per_db_items(ctx, cid, ['foreign_keys'], evaluate)
    if error:
        return error
    if not found:
        return _with_unreachable(ctx, _item(cid, PASS, 'every foreign key of the selected tables references a selected '
                                                       'table'))
    shown = _names('%s references %s (constraint %s)' % (_tdisplay(o['database'], o['schema'], o['table']),
                                                         _qname(o['database'], *o['references'].split('.', 1)),
                                                         _ident(o['name'])) for o in found)
    refs = sorted({'%s.%s' % (o['database'], o['references']) for o in found})
    return _with_unreachable(ctx, _item(
        cid, FAILED, 'selected tables reference tables that are not selected, so their foreign keys cannot be created '
                     'on the destination: %s' % shown,
        'Add the referenced tables to tables (%s), or exclude the referencing tables.' % _names(refs), found))


def _available(ctx):
    table = {}
    for r in ctx.dst.get('available_extensions') or []:
        table.setdefault(r.name, {})[r.version] = (r.superuser, r.trusted)
    return table


@item('destination.extensions')
def check_extensions(ctx, cid):
    if not ctx.dst.ok:
        return _skip_destination(cid)
    error = _fact_error(cid, ctx.dst, 'available_extensions')
    if error:
        return error
    available = _available(ctx)
    role = ctx.dst.get('role')
    dest_super = bool(role and role.rolsuper)

    def evaluate(db, holder):
        out = []
        installed = {}
        if db in ctx.dst_dbs and ctx.dst_dbs[db].ok:
            installed = {r.extname: r.extversion for r in ctx.dst_dbs[db].get('extensions') or []}
        for name, version in ((r.extname, r.extversion) for r in holder.get('extensions') or []):
            obj = {'type': 'extension', 'database': db, 'name': name, 'version': version}
            if name in installed:
                if installed[name] != version:
                    out.append(dict(obj, status=WARNING, problem='is installed on the destination at version %s, the '
                                                                 'source has %s' % (installed[name], version)))
                continue
            versions = available.get(name)
            if not versions:
                out.append(dict(obj, status=FAILED, problem='is not available on the destination (no control file)'))
                continue
            flags = versions.get(version) or next(iter(versions.values()))
            if flags[0] and not flags[1] and not dest_super:
                out.append(dict(obj, status=FAILED, problem='needs a superuser to create and the destination role is '
                                                            'not one'))
            elif version not in versions:
                out.append(dict(obj, status=WARNING, problem='version %s is not available on the destination (it has '
                                                             '%s)' % (version, _names(sorted(versions)))))
        return out

    found, error = _per_db_items(ctx, cid, ['extensions'], evaluate)
    if error:
        return error
    if not found:
        names = sorted({e.extname for db in ctx.reachable_dbs() for e in ctx.src_dbs[db].get('extensions') or []})
        if not names:
            return _with_unreachable(ctx, _item(cid, PASS, 'the selected databases use no extension (besides plpgsql)'))
        return _with_unreachable(ctx, _item(cid, PASS, 'the destination can provide every extension used on the source: '
                                                       '%s' % _names(names, 20)))
    status = FAILED if any(o['status'] == FAILED for o in found) else WARNING
    shown = '; '.join('%s %s in "%s" %s' % (o['name'], o['version'], o['database'], o['problem']) for o in found)
    hint = ('Install the extension packages on the destination server (the same versions as the source), or create the '
            'extensions there as a superuser before the migration (CREATE EXTENSION ... in each database).')
    return _with_unreachable(ctx, _item(cid, status, 'extensions: %s' % shown, hint, found))


def _dest_db_row(ctx, db):
    for row in ctx.dst.get('databases') or []:
        if row.datname == db:
            return row
    return None


def _src_db_row(ctx, db):
    for row in ctx.src.get('databases') or []:
        if row.datname == db:
            return row
    return None


def encoding_status(source_encoding, dest_encoding):
    """(status, reason) for storing data of a source database encoding in a destination database encoding."""
    if source_encoding == dest_encoding:
        return PASS, 'same encoding'
    if dest_encoding == 'SQL_ASCII':
        return WARNING, 'SQL_ASCII stores bytes without checking or converting them'
    if source_encoding == 'SQL_ASCII':
        return WARNING, 'SQL_ASCII data is not checked on the source; bytes invalid in %s fail to load' % dest_encoding
    if dest_encoding == 'UTF8':
        return WARNING, 'every %s character exists in UTF8; data is converted while copying' % source_encoding
    return FAILED, 'characters of %s without an equivalent in %s cannot be stored' % (source_encoding, dest_encoding)


@item('destination.encoding')
def check_encoding(ctx, cid):
    if not ctx.src.ok:
        return _skip_source(cid)
    if not ctx.dst.ok:
        return _skip_destination(cid)
    found = []
    for db in ctx.db_names:
        src_row, dst_row = _src_db_row(ctx, db), _dest_db_row(ctx, db)
        if not src_row or not dst_row:
            continue                    # a database the migration creates gets the source's encoding
        status, reason = encoding_status(src_row.encoding, dst_row.encoding)
        if status != PASS:
            found.append({'type': 'database', 'name': db, 'source_encoding': src_row.encoding,
                          'destination_encoding': dst_row.encoding,
                          'status': status, 'problem': reason})
    if not found:
        return _item(cid, PASS, 'encodings match (databases the migration creates get the source\'s encoding)')
    status = FAILED if any(o['status'] == FAILED for o in found) else WARNING
    return _item(cid, status, 'database encodings differ: %s' % '; '.join(
        '"%s" is %s on the source and %s on the destination: %s' % (o['name'], o['source_encoding'],
                                                                    o['destination_encoding'], o['problem'])
        for o in found),
        'Let pgdts create the destination database (drop the empty one there) so it gets the source\'s encoding, or '
        'create it with: CREATE DATABASE ... ENCODING \'<source encoding>\' TEMPLATE template0;', found)


def _norm_locale(value):
    return (value or '').lower().replace('-', '')


@item('destination.collation')
def check_collation(ctx, cid):
    if not ctx.src.ok:
        return _skip_source(cid)
    if not ctx.dst.ok:
        return _skip_destination(cid)
    catalog_colls = ctx.dst.get('catalog_collations') or []
    libc_locales = {_norm_locale(r.collcollate) for r in catalog_colls if r.provider == 'c'} | {'c', 'posix'}
    has_icu = any(r.provider == 'i' for r in catalog_colls)
    found = []
    for db in ctx.db_names:
        src_row, dst_row = _src_db_row(ctx, db), _dest_db_row(ctx, db)
        if not src_row:
            continue
        if dst_row:
            diffs = [(label, a, b) for label, a, b in (('LC_COLLATE', src_row.datcollate, dst_row.datcollate),
                                                       ('LC_CTYPE', src_row.datctype, dst_row.datctype),
                                                       ('ICU locale', src_row.icu_locale, dst_row.icu_locale))
                     if (a or '') != (b or '')]
            if diffs:
                found.append({'type': 'database', 'name': db, 'status': WARNING, 'problem': 'differs: %s' % ', '.join(
                    '%s %s on the source, %s on the destination' % d for d in diffs)})
        else:
            if src_row.provider == 'i' and not has_icu:
                found.append({'type': 'database', 'name': db, 'status': FAILED,
                              'problem': 'uses ICU locale %s but the destination has no ICU support' % src_row.icu_locale})
            for label, value in (('LC_COLLATE', src_row.datcollate), ('LC_CTYPE', src_row.datctype)):
                if _norm_locale(value) not in libc_locales:
                    found.append({'type': 'database', 'name': db, 'status': WARNING,
                                  'problem': '%s %s is not among the destination\'s locales, so creating the database '
                                             'with it may fail' % (label, value)})

    def evaluate(db, holder):
        out = []
        wanted = holder.get('collations') or []
        migrated_schemas = set(source_schemas(ctx, db)) if ctx.whole_databases else set()
        if db in ctx.dst_dbs and ctx.dst_dbs[db].ok:
            present = {(r.nspname, r.collname) for r in ctx.dst_dbs[db].get('collations') or []}
        else:
            present = {('pg_catalog', r.collname) for r in catalog_colls}
        for r in wanted:
            if (r.nspname, r.collname) not in present and r.nspname not in migrated_schemas:
                out.append({'type': 'collation', 'database': db, 'schema': r.nspname, 'name': r.collname,
                            'status': FAILED,
                            'problem': 'is used by selected columns and does not exist on the destination'})
        return out

    columns, error = _per_db_items(ctx, cid, ['collations'], evaluate)
    if error:
        return error
    found += columns
    if not found:
        return _with_unreachable(ctx, _item(cid, PASS, 'collations and locales of the selected databases are available '
                                                       'and equal on the destination'))
    status = FAILED if any(o['status'] == FAILED for o in found) else WARNING

    def label(o):
        if o['type'] == 'database':
            return 'database "%s"' % o['name']
        return 'collation %s in "%s"' % (_qname(o['schema'], o['name']), o['database'])

    shown = '; '.join('%s %s' % (label(o), o['problem']) for o in found)
    return _with_unreachable(ctx, _item(
        cid, status, 'collation differences: %s' % shown,
        'Different locales sort text differently (ORDER BY, range queries, unique indexes on text); create the destination '
        'database with the source\'s LC_COLLATE / LC_CTYPE, and create missing collations on the destination before the '
        'migration (CREATE COLLATION ...).', found))


@item('destination.create_privilege')
def check_create_privilege(ctx, cid):
    if not ctx.dst.ok:
        return _skip_destination(cid)
    role = ctx.dst.get('role')
    if not role:
        return _fact_error(cid, ctx.dst, 'role') or _item(cid, FAILED, 'the destination role is not in pg_roles')
    name, superuser, createdb = role.rolname, role.rolsuper, role.rolcreatedb
    if superuser:
        return _item(cid, PASS, 'destination role "%s" is a superuser' % name)
    problems = []
    if _dest_db_row(ctx, STATE_DATABASE) is None and not createdb:
        problems.append({'type': 'database', 'name': STATE_DATABASE, 'privilege': 'CREATEDB',
                         'problem': 'the state database "%s" does not exist and the role may not create databases'
                                    % STATE_DATABASE})
    for db in ctx.db_names:
        row = _dest_db_row(ctx, db)
        if row is None:
            if not createdb:
                problems.append({'type': 'database', 'name': db, 'privilege': 'CREATEDB',
                                 'problem': 'database "%s" does not exist and the role may not create databases' % db})
            continue
        holder = ctx.dst_dbs.get(db)
        if holder is None or not holder.ok:
            problems.append({'type': 'database', 'name': db, 'privilege': 'CONNECT',
                             'problem': 'cannot connect to database "%s": %s'
                                        % (db, holder.failure.message if holder else 'unknown')})
            continue
        existing = {r.nspname: r for r in holder.get('schemas') or []}
        wanted = source_schemas(ctx, db) if db in ctx.src_dbs and ctx.src_dbs[db].ok else []
        for schema in wanted:
            if schema in existing and not existing[schema].can_create:
                problems.append({'type': 'schema', 'database': db, 'name': schema, 'privilege': 'CREATE',
                                 'problem': 'no CREATE privilege on schema %s in "%s"' % (_ident(schema), db)})
            elif schema not in existing and not row.can_create:
                problems.append({'type': 'database', 'name': db, 'privilege': 'CREATE',
                                 'problem': 'no CREATE privilege on database "%s" to create schema %s'
                                            % (db, _ident(schema))})
    if problems:
        return _item(cid, FAILED, 'destination role "%s" cannot create what the migration needs: %s'
                     % (name, '; '.join(p['problem'] for p in problems)),
                     'ALTER ROLE %s CREATEDB; and/or GRANT CREATE ON DATABASE <db> TO %s; GRANT CREATE ON SCHEMA <schema> '
                     'TO %s; (or migrate as a superuser).' % (_ident(name), _ident(name), _ident(name)), problems)
    return _item(cid, PASS, 'destination role "%s" can create the databases, schemas and tables of the migration' % name)


@item('destination.apply_privilege')
def check_apply_privilege(ctx, cid):
    if not ctx.dst.ok:
        return _skip_destination(cid)
    role = ctx.dst.get('role')
    if not role:
        return _fact_error(cid, ctx.dst, 'role') or _item(cid, FAILED, 'the destination role is not in pg_roles')
    if role.rolsuper:
        return _item(cid, PASS, 'destination role "%s" is a superuser: replication origins and session_replication_role '
                                'are available' % role.rolname)
    error = _fact_error(cid, ctx.dst, 'function_privileges')
    if error:
        return error
    missing = [{'type': 'function', 'name': f, 'privilege': 'EXECUTE'}
               for f, ok in zip(APPLY_FUNCTIONS, ctx.dst.get('function_privileges')) if not ok]
    version = ctx.dst.get('version')
    srr = ctx.dst.get('srr_privilege') if version >= 150000 else False
    if not srr:
        missing.append({'type': 'parameter', 'name': 'session_replication_role', 'privilege': 'SET'})
    if not missing:
        return _item(cid, PASS, 'destination role "%s" may use replication origins and set session_replication_role'
                     % role.rolname)
    user = _ident(role.rolname)
    grants = ['GRANT EXECUTE ON FUNCTION %s TO %s;' % (o['name'], user) for o in missing if o['type'] == 'function']
    if not srr:
        grants.append('GRANT SET ON PARAMETER session_replication_role TO %s;' % user if version >= 150000 else
                      '(before PostgreSQL 15 only a superuser may set session_replication_role)')
    return _item(cid, FAILED, 'destination role "%s" cannot do what the apply needs: %s'
                 % (role.rolname, _names(('EXECUTE on %s' % o['name'].split('(')[0].replace('pg_catalog.', '')) if
                                         o['type'] == 'function' else 'SET %s' % o['name'] for o in missing)),
                 'As a superuser on the destination: %s' % ' '.join(grants), missing)


@item('destination.replication_origins')
def check_replication_origins(ctx, cid):
    if not ctx.dst.ok:
        return _skip_destination(cid)
    name = 'max_active_replication_origins' if ctx.dst.get('version') >= 180000 else 'max_replication_slots'
    value = setting(ctx.dst, name)
    if value is None:
        return _item(cid, FAILED, 'could not read %s on the destination' % name, 'Check the destination role.')
    maximum = int(value['setting'])
    own = [r.roname for r in ctx.dst.get('origins') or [] if ctx.object_re and ctx.object_re.match(r.roname)]
    needed = max(len(ctx.db_names) - (len(own) if ctx.resuming else 0), 0)
    obj = [{'type': 'setting', 'name': name, 'value': maximum, 'needed': needed}]
    hint = ('ALTER SYSTEM SET %s = %d; on the destination and restart it (replication origins are tracked in as many '
            'slots as this setting allows).' % (name, max(maximum, 0) + needed + 1))
    if maximum == 0:
        return _item(cid, FAILED, '%s = 0 on the destination: replication origins, which make the apply exactly-once, '
                                  'cannot be used' % name, hint, obj)
    used = ctx.dst.get('origin_states')
    if used is None:
        return _item(cid, WARNING, '%s = %d on the destination, but the origins in use cannot be counted (%s)'
                     % (name, maximum, ctx.dst.errors.get('origin_states', 'unknown')),
                     'Run the check as a superuser to count them, or make sure %d are free.' % needed, obj)
    free = maximum - int(used)
    obj[0]['in_use'] = int(used)
    counts = '%s = %d, %d origins in use, %d free; this task needs %d (one per database)' % (
        name, maximum, int(used), free, needed)
    if free < needed:
        return _item(cid, FAILED, 'not enough replication origin slots on the destination: ' + counts, hint, obj)
    return _item(cid, PASS, counts, '', obj)


@item('destination.conflicts')
def check_conflicts(ctx, cid):
    if not ctx.src.ok:
        return _skip_source(cid)
    if not ctx.dst.ok:
        return _skip_destination(cid)
    if ctx.resuming:
        return _item(cid, PASS, 'task "%s" is resumed: its tables on the destination hold the partial copy and are '
                                'expected' % ctx.task)
    found = []
    for db in ctx.db_names:
        holder = ctx.dst_dbs.get(db)
        if holder is None:
            continue                    # the database does not exist on the destination yet
        if not holder.ok:
            found.append({'type': 'database', 'name': db, 'status': FAILED,
                          'problem': 'cannot be inspected: %s' % holder.failure.message})
            continue
        error = _fact_error(cid, holder, 'relations', 'schemas')
        if error:
            return error
        has_rows = holder.get('has_rows') or {}
        for rel in holder.get('relations') or []:
            oid, relkind, readable = rel.oid, rel.relkind, rel.readable
            obj = {'type': 'table', 'database': db, 'schema': rel.nspname, 'name': rel.relname}
            if relkind not in ('r', 'p'):
                found.append(dict(obj, type={'v': 'view', 'm': 'materialized_view', 'f': 'foreign_table'}[relkind],
                                  status=FAILED, problem='exists with the name of a selected table'))
            elif not readable:
                found.append(dict(obj, status=FAILED, problem='exists and the destination role cannot read it'))
            elif oid not in has_rows:
                found.append(dict(obj, status=FAILED, problem='exists and could not be read'))
            elif has_rows[oid]:
                found.append(dict(obj, status=FAILED, problem='exists and holds rows'))
            else:
                found.append(dict(obj, status=WARNING, problem='exists and is empty'))
        tables_in = {o['schema'] for o in found if o.get('database') == db and 'schema' in o}
        for row in holder.get('schemas') or []:
            schema, relations = row.nspname, row.relations
            if schema in tables_in or (schema == 'public' and not relations):
                continue
            found.append({'type': 'schema', 'database': db, 'name': schema, 'relations': relations, 'status': WARNING,
                          'problem': 'exists already%s' % (' and holds %s' % _plural(relations, 'relation')
                                                           if relations else ' (empty)')})
    if not found:
        return _item(cid, PASS, 'none of the selected schemas or tables exists on the destination')
    status = FAILED if any(o['status'] == FAILED for o in found) else WARNING
    shown = '; '.join('%s %s %s' % (o['type'].replace('_', ' '), _qname(o['database'], o['name']) if o['type'] in (
        'schema', 'database') else _tdisplay(o['database'], o['schema'], o['name']), o['problem']) for o in found[:8])
    if len(found) > 8:
        shown += '; and %d more' % (len(found) - 8)
    return _item(cid, status, 'the destination already has objects of the selection: %s' % shown,
                 'Drop them on the destination (or migrate into another destination database) so the copy starts from '
                 'an empty schema; existing rows would be duplicated or conflict.', found)


def _read_system_identifier(datadir):
    try:
        with open(os.path.join(datadir, 'global', 'pg_control'), 'rb') as handle:
            data = handle.read(8)
    except OSError:
        return None
    if len(data) != 8:
        return None
    return str(struct.unpack('<Q', data)[0])


def disk_space_status(required, free):
    """(status, word) for `required` bytes of source data against `free` bytes on the destination."""
    if free < required:
        return FAILED, 'not enough'
    if free < required * DISK_HEADROOM:
        return WARNING, 'tight'
    return PASS, 'enough'


@item('destination.roles')
def check_roles(ctx, cid):
    """migrate_roles: the roles the task would create on the destination, and whether the destination login may."""
    if not ctx.migrate_roles:
        return _item(cid, PASS, 'migrate_roles is off: roles are not copied (object owners and privileges are left out)')
    if not ctx.src.ok:
        return _skip_source(cid)
    if not ctx.dst.ok:
        return _skip_destination(cid)
    found = ctx.roles_preview
    if isinstance(found, Exception):
        raise found                 # run_checks reports it as "the check itself failed", as before
    objects = [{'type': 'role', 'name': name, 'action': 'create'} for name in found['create']] + \
        [{'type': 'role', 'name': name, 'action': 'keep'} for name in found['kept']]
    counts = '%d role(s) to create, %d already on the destination (left as they are), %d membership(s) to grant' % (
        len(found['create']), len(found['kept']), found['memberships'])
    if found['problem']:
        return _item(cid, FAILED, found['problem'], 'Connect to the destination as a superuser (or a role with '
                     'CREATEROLE when no superuser role is to be created), or create the roles there first.', objects)
    if found['without_password']:
        return _item(cid, WARNING, '%s; the source login may not read password hashes (pg_authid), so %s will be '
                     'created without a password' % (counts, ', '.join('"%s"' % n for n in found['without_password'])),
                     'Connect to the source as a superuser to copy the passwords, or set them on the destination '
                     'after the copy.', objects)
    return _item(cid, PASS, counts, '', objects)


@item('destination.disk_space')
def check_disk_space(ctx, cid):
    if not ctx.src.ok:
        return _skip_source(cid)
    if not ctx.dst.ok:
        return _skip_destination(cid)
    required = sum(int(ctx.src_dbs[db].get('size') or 0) for db in ctx.reachable_dbs())
    datadir = (setting(ctx.dst, 'data_directory') or {}).get('setting')
    system_id = ctx.dst.get('system_identifier')
    local = bool(datadir and system_id and _read_system_identifier(datadir) == system_id)
    if not local:
        why = ('its data directory is not readable by the destination role' if not datadir else
               'its data directory %s is not on the host that runs pgdts' % datadir)
        return _with_unreachable(ctx, _item(
            cid, PASS, 'free space on the destination cannot be measured from here (%s); the selected tables take %s on '
                       'the source (with indexes), plan for about %s' % (why, _bytes(required),
                                                                         _bytes(required * DISK_HEADROOM))))
    stats = os.statvfs(datadir)
    free = stats.f_bavail * stats.f_frsize
    status, word = disk_space_status(required, free)
    obj = [{'type': 'filesystem', 'path': datadir, 'free_bytes': free, 'required_bytes': required}]
    message = ('%s free space on the destination: %s free under %s, the selected tables take %s on the source '
               '(with indexes; plan for %s)' % (word, _bytes(free), datadir, _bytes(required),
                                                _bytes(required * DISK_HEADROOM)))
    hint = '' if status == PASS else ('Free or add space on the destination before the migration (tablespaces other '
                                      'than the data directory are not counted).')
    return _with_unreachable(ctx, _item(cid, status, message, hint, obj))


CHECK_IDS = tuple(check_id for check_id, _function in ITEMS)


def validate_options(task, tables=None, exclude_tables=None, plugin='pgoutput'):
    """Raise ValueError (TaskNameError, SelectionError) for options no check can make sense of."""
    task_state.validate_task_name(task)
    for pattern in list(tables or []) + list(exclude_tables or []):
        catalog.split_pattern(pattern)
    if not plugin:
        raise ValueError('plugin must be given')


def task_is_resumable(destination, task):
    """True when the destination's state database holds task `task` in a stage it can be resumed from.

    Read only. Any problem reading the state (no server, no state database yet) means "not resumable": the checks then
    report the connection problem themselves.
    """
    try:
        store = task_state.TaskStore(destination)
        try:
            if not store.open(create=False):
                return False
            row = store.get_task(task)
        finally:
            store.close()
    except (ConnectionFailure, psycopg.Error):
        return False
    return bool(row) and row.get('stage') not in task_state.END_STAGES


def run_checks(source, destination, task, databases=None, tables=None, exclude_tables=None, plugin='pgoutput',
               incremental=True, resuming=False, migrate_roles=False, replica_identity='fail',
               pg_bindir=None, max_retained_wal=None):
    """source/destination: connection.ServerSpec. Returns a list of CheckItem dicts
    {'id': str, 'status': 'pass'|'warning'|'failed', 'message': str, 'hint': str, 'objects': list}."""
    ctx = Facts(source, destination, task, databases, tables, exclude_tables, plugin, incremental, resuming,
                migrate_roles)
    ctx.replica_identity = replica_identity or 'fail'
    ctx.pg_bindir = pg_bindir
    ctx.max_retained_wal = max_retained_wal
    try:
        task_state.validate_task_name(task)
        ctx.object_re = task_state.object_name_re(task)
    except task_state.TaskNameError as exc:
        ctx.task_error = str(exc)
    try:
        for pattern in ctx.include + ctx.exclude:
            catalog.split_pattern(pattern)
    except catalog.SelectionError as exc:
        ctx.selection_error = str(exc)
    gather(ctx)
    if ctx.object_re:
        ctx.expected_names = {task_state.object_name(task, db): db for db in ctx.db_names}
    items = []
    for check_id, check in ITEMS:
        try:
            items.append(check(ctx, check_id))
        except Exception as exc:  # pylint: disable=broad-except  # one broken check must not hide the others
            items.append(_item(check_id, FAILED, 'the check itself failed: %s: %s' % (exc.__class__.__name__, exc),
                               'Report this as a pgdts bug, with the message.'))
    return items
