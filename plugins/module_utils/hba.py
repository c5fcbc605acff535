# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_hba.conf: parse the rules into objects, make sure the entries a migration needs are effective, and replace the
file on the database host (backup, atomic write, roll back when the server rejects the new file).

PostgreSQL uses the first rule that matches a connection (type, database, user, client address). An entry is
effective when the first rule that can match any connection it describes covers all of them with the same method
and options. Otherwise the entry is inserted just before that rule (or appended when no rule can match), so that
first-match order makes it effective. Every other line (rules, comments, blank lines) is kept byte for byte.

Plain Python (no Ansible imports).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import time

from ansible_collections.pgdts.migration.plugins.module_utils import files
from ansible_collections.pgdts.migration.plugins.module_utils.connection import query_all

try:
    import psycopg
except ImportError:  # pragma: no cover - connection.require_psycopg() reports it
    psycopg = None

HOST_TYPES = ('host', 'hostssl', 'hostnossl', 'hostgssenc', 'hostnogssenc')
RULE_TYPES = ('local',) + HOST_TYPES
INCLUDE_TYPES = ('include', 'include_if_exists', 'include_dir')
METHODS = ('trust', 'reject', 'scram-sha-256', 'md5', 'password', 'gss', 'sspi', 'ident', 'peer', 'ldap', 'radius',
           'cert', 'pam', 'bsd')
ADDRESS_KEYWORDS = ('all', 'samehost', 'samenet')
MARKER = 'pgdts.migration'
_SIMPLE_TOKEN = re.compile(r'^[A-Za-z0-9_.:/@+-]+$')

# Answers of the matching helpers
NO, PARTLY, FULLY = 0, 1, 2


class HbaError(Exception):
    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind
        self.message = message


class Token:
    """One item of a field: `value` without quotes; `quoted` tells a literal "all" from the keyword all."""

    __slots__ = ('value', 'quoted')

    def __init__(self, value, quoted=False):
        self.value = value
        self.quoted = quoted

    def is_keyword(self, *words):
        return not self.quoted and self.value in words

    def render(self):
        if self.quoted or not _SIMPLE_TOKEN.match(self.value):
            return '"%s"' % self.value.replace('"', '""')
        return self.value

    def __eq__(self, other):
        return isinstance(other, Token) and (self.value, self.quoted) == (other.value, other.quoted)

    def __hash__(self):
        return hash((self.value, self.quoted))

    def __repr__(self):
        return 'Token(%r%s)' % (self.value, ', quoted' if self.quoted else '')


def _split_fields(text):
    """Fields of one line: a list of lists of Tokens (comma-separated items); the trailing comment is dropped."""
    fields, items, current, quoted, in_quotes, i = [], [], [], False, False, 0
    started = False
    while i < len(text):
        char = text[i]
        if in_quotes:
            if char == '"':
                if i + 1 < len(text) and text[i + 1] == '"':
                    current.append('"')
                    i += 1
                else:
                    in_quotes = False
            else:
                current.append(char)
        elif char == '"':
            in_quotes, quoted, started = True, True, True
        elif char == '#':
            break
        elif char == ',':
            items.append(Token(''.join(current), quoted))
            current, quoted = [], False
            # a comma keeps the field open even across spaces ("db1, db2" is one field in PostgreSQL too)
            i += 1
            while i < len(text) and text[i] in ' \t':
                i += 1
            continue
        elif char in ' \t\r':
            if started:
                items.append(Token(''.join(current), quoted))
                fields.append(items)
                items, current, quoted, started = [], [], False, False
        else:
            current.append(char)
            started = True
        i += 1
    if in_quotes:
        raise HbaError('parse', 'unterminated quoted string')
    if started or items:
        items.append(Token(''.join(current), quoted))
        fields.append(items)
    return fields


class Rule:
    """A rule line of pg_hba.conf."""

    def __init__(self, conn_type, databases, users, address=None, method='scram-sha-256', options=None, raw=None,
                 line_number=None):
        self.type = conn_type
        self.databases = databases      # [Token]
        self.users = users              # [Token]
        self.address = address          # None (local), a keyword, an ip_network, or a host name text
        self.method = method
        self.options = list(options or [])
        self.raw = raw
        self.line_number = line_number

    # -- construction ------------------------------------------------------------------------------------------
    @classmethod
    def parse(cls, fields, raw, line_number):
        conn_type = fields[0][0].value
        if conn_type not in RULE_TYPES:
            raise HbaError('parse', 'line %d: unknown connection type %r' % (line_number, conn_type))
        rest = fields[1:]
        need = 3 if conn_type == 'local' else 4
        if len(rest) < need:
            raise HbaError('parse', 'line %d: too few fields' % line_number)
        databases, users = rest[0], rest[1]
        rest = rest[2:]
        address = None
        if conn_type != 'local':
            addr_token = rest[0][0]
            rest = rest[1:]
            mask = None
            if ('/' not in addr_token.value and not addr_token.quoted and rest and _looks_like_mask(addr_token.value)
                    and _looks_like_mask(rest[0][0].value)):
                mask = rest[0][0].value
                rest = rest[1:]
            address = parse_address(addr_token.value, mask, addr_token.quoted)
        if not rest:
            raise HbaError('parse', 'line %d: no authentication method' % line_number)
        method = rest[0][0].value
        options = [','.join(t.value for t in field) for field in rest[1:]]
        return cls(conn_type, databases, users, address, method, options, raw, line_number)

    # -- comparison --------------------------------------------------------------------------------------------
    def key(self):
        return (self.type, frozenset(self.databases), frozenset(self.users), address_key(self.address))

    def render(self):
        parts = [self.type, ','.join(t.render() for t in self.databases), ','.join(t.render() for t in self.users)]
        if self.type != 'local':
            parts.append(address_text(self.address))
        widths = (7, 15, 15, 23)
        columns = [part.ljust(widths[i]) for i, part in enumerate(parts)]
        return ' '.join(columns + [self.method] + self.options) + '  # ' + MARKER

    def describe(self):
        parts = [self.type, ','.join(t.render() for t in self.databases), ','.join(t.render() for t in self.users)]
        if self.type != 'local':
            parts.append(address_text(self.address))
        return ' '.join(parts + [self.method] + self.options)

    def to_dict(self):
        return {'type': self.type, 'databases': [t.value for t in self.databases], 'users': [t.value for t in self.users],
                'address': address_text(self.address) if self.type != 'local' else None, 'method': self.method,
                'options': self.options, 'line': self.line_number}


def _looks_like_mask(text):
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def parse_address(text, mask=None, quoted=False):
    """A rule address: a keyword ('all', 'samehost', 'samenet'), an ip_network, or a host name (text)."""
    if text in ADDRESS_KEYWORDS and not quoted:
        return text
    try:
        if mask is not None and '/' not in text:
            netmask = ipaddress.ip_address(mask)
            prefix = bin(int(netmask)).count('1')
            return ipaddress.ip_network('%s/%d' % (text, prefix), strict=False)
        if '/' in text:
            return ipaddress.ip_network(text, strict=False)
        return ipaddress.ip_network(text)  # a bare address is only valid as a wanted entry (a /32 or /128)
    except ValueError:
        return text.lower()


def address_key(address):
    if isinstance(address, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return str(address)
    return address


def address_text(address):
    return address_key(address) if address is not None else ''


# -- matching -------------------------------------------------------------------------------------------------

def _type_match(rule, entry):
    if rule.type == 'local' or entry.type == 'local':
        return FULLY if rule.type == entry.type else NO
    if rule.type == 'host':
        return FULLY
    if rule.type == entry.type:
        return FULLY
    if entry.type == 'host':
        return PARTLY       # e.g. a hostssl rule matches only the SSL part of what the entry allows
    if {rule.type, entry.type} == {'hostssl', 'hostnossl'}:
        return NO
    return PARTLY


def _database_match(rule, db_token, user_token):
    """How a rule's database field matches the connections of one entry database (the keyword replication, or a
    database name)."""
    best = NO
    replication = db_token.is_keyword('replication')
    for token in rule.databases:
        if replication:
            if token.is_keyword('replication'):
                return FULLY
            continue
        if token.is_keyword('all'):
            return FULLY
        if token.is_keyword('replication'):
            continue
        if token.is_keyword('sameuser'):
            if db_token.value == user_token.value:
                return FULLY
            continue
        if token.is_keyword('samerole', 'samegroup') or token.value.startswith('@') and not token.quoted:
            best = max(best, PARTLY)
            continue
        if token.value.startswith('/') and not token.quoted:
            try:
                if re.search(token.value[1:], db_token.value):
                    best = max(best, PARTLY)
            except re.error:
                best = max(best, PARTLY)
            continue
        if token.value == db_token.value:
            return FULLY
    return best


def _user_match(rule, user_token):
    best = NO
    for token in rule.users:
        if token.is_keyword('all'):
            return FULLY
        if (token.value.startswith('+') or token.value.startswith('@')) and not token.quoted:
            best = max(best, PARTLY)     # group membership or a file: may match
            continue
        if token.value.startswith('/') and not token.quoted:
            try:
                if re.search(token.value[1:], user_token.value):
                    best = max(best, PARTLY)
            except re.error:
                best = max(best, PARTLY)
            continue
        if token.value == user_token.value:
            return FULLY
    return best


def _address_match(rule, entry):
    if rule.type == 'local':
        return FULLY
    ra, ea = rule.address, entry.address
    if ra == 'all':
        return FULLY
    if ea == 'all' or isinstance(ra, str) or isinstance(ea, str):
        # keywords and host names: cannot tell without resolving
        if isinstance(ra, str) and isinstance(ea, str) and ra == ea:
            return FULLY
        return PARTLY
    if ra.version != ea.version:
        return NO
    if ea.subnet_of(ra):
        return FULLY
    if ra.overlaps(ea):
        return PARTLY
    return NO


def match(rule, entry):
    """NO, PARTLY or FULLY: whether `rule` matches none, some or all connections `entry` (one database, one user)
    describes."""
    if not isinstance(rule, Rule):
        return PARTLY    # an include line: its rules are unknown here
    parts = [_type_match(rule, entry), _database_match(rule, entry.databases[0], entry.users[0]),
             _user_match(rule, entry.users[0]), _address_match(rule, entry)]
    return min(parts)


class Include:
    """An include / include_if_exists / include_dir line (PostgreSQL 16+): treated as rules we cannot see."""

    def __init__(self, raw, line_number):
        self.raw = raw
        self.line_number = line_number


class HbaFile:
    """The lines of a pg_hba.conf: raw text kept for every line; rule lines also parsed."""

    def __init__(self, text):
        self.original = text
        self.lines = []     # [(raw_text_without_newline, Rule|Include|None)]
        raw_lines = text.split('\n')
        trailing_newline = text.endswith('\n')
        if trailing_newline:
            raw_lines = raw_lines[:-1]
        self.trailing_newline = trailing_newline or not text
        for number, raw in enumerate(raw_lines, start=1):
            fields = _split_fields(raw) if raw.strip() and not raw.lstrip().startswith('#') else []
            if raw.rstrip().endswith('\\'):
                raise HbaError('parse', 'line %d: continuation lines are not supported by pgdts; join them' % number)
            if not fields:
                self.lines.append((raw, None))
            elif fields[0][0].value in INCLUDE_TYPES and not fields[0][0].quoted:
                self.lines.append((raw, Include(raw, number)))
            else:
                self.lines.append((raw, Rule.parse(fields, raw, number)))

    def rules(self):
        return [obj for _raw, obj in self.lines if isinstance(obj, Rule)]

    def render(self):
        text = '\n'.join(raw for raw, _obj in self.lines)
        return text + '\n' if self.trailing_newline and self.lines else text

    def ensure(self, entry):
        """Make `entry` effective. Returns None when it already is, else a dict describing the change."""
        first_index = None
        for index, (_raw, obj) in enumerate(self.lines):
            if obj is None:
                continue
            if match(obj, entry) != NO:
                first_index = index
                break
        if first_index is not None:
            obj = self.lines[first_index][1]
            if isinstance(obj, Rule) and match(obj, entry) == FULLY and obj.method == entry.method and \
                    obj.options == entry.options:
                return None
            if isinstance(obj, Rule) and obj.key() == entry.key():
                # the same rule with another method: change it where it is
                old = obj.raw
                new_line = entry.render()
                self.lines[first_index] = (new_line, _reparse(entry, new_line))
                return {'action': 'replaced', 'line': first_index + 1, 'before': old, 'after': new_line,
                        'entry': entry.describe()}
            new_line = entry.render()
            self.lines.insert(first_index, (new_line, _reparse(entry, new_line)))
            return {'action': 'inserted', 'line': first_index + 1, 'before_rule': self.lines[first_index + 1][0],
                    'after': new_line, 'entry': entry.describe()}
        new_line = entry.render()
        self.lines.append((new_line, _reparse(entry, new_line)))
        return {'action': 'appended', 'line': len(self.lines), 'after': new_line, 'entry': entry.describe()}


def _reparse(entry, line):
    rule = Rule(entry.type, entry.databases, entry.users, entry.address, entry.method, entry.options, raw=line)
    return rule


def wanted_entries(user, databases, addresses, method='scram-sha-256', conn_type='host', replication=True):
    """One entry per (database, address) plus, with `replication`, one physical-replication entry per address."""
    if not user:
        raise HbaError('invalid', 'a user is needed for pg_hba entries')
    if method not in METHODS:
        raise HbaError('invalid', 'unknown authentication method %r' % method)
    if conn_type not in HOST_TYPES:
        raise HbaError('invalid', 'connection type must be one of %s' % ', '.join(HOST_TYPES))
    entries = []
    user_token = Token(user, quoted=user == 'all' or not _SIMPLE_TOKEN.match(user))
    db_tokens = []
    if replication:
        db_tokens.append(Token('replication'))
    for name in databases:
        db_tokens.append(Token(name, quoted=name in ('all', 'sameuser', 'samerole', 'samegroup', 'replication')
                               or not _SIMPLE_TOKEN.match(name)))
    for address in addresses:
        parsed = parse_wanted_address(address)
        for db_token in db_tokens:
            entries.append(Rule(conn_type, [db_token], [user_token], parsed, method))
    return entries


def parse_wanted_address(text):
    text = str(text).strip()
    if not text:
        raise HbaError('invalid', 'an empty address was given')
    if text in ADDRESS_KEYWORDS:
        return text
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        pass
    if re.match(r'^\.?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$', text):
        return text.lower()
    raise HbaError('invalid', 'address %r is neither an IP address, a CIDR network, a host name nor one of %s' % (
        text, ', '.join(ADDRESS_KEYWORDS)))


def ensure_entries(text, entries):
    """New file text and the list of changes that make every entry effective (text unchanged when none)."""
    hba = HbaFile(text)
    changes = []
    for entry in entries:
        change = hba.ensure(entry)
        if change:
            changes.append(change)
    return (hba.render() if changes else text), changes


# -- the file on the database host ----------------------------------------------------------------------------------

def read_file(path):
    """The text of the pg_hba.conf at `path` (HbaError 'unreadable' when it cannot be read here)."""
    try:
        with open(path, 'r') as handle:
            return handle.read()
    except OSError as exc:
        raise HbaError('unreadable', 'cannot read %s: %s (the module must run on the database host)' % (path, exc))


def backup_file(path):
    """A copy of `path` beside it, with its mode, owner and times (as Ansible's backup_local names and makes it)."""
    backup = '%s.%s.%s' % (path, os.getpid(), time.strftime('%Y-%m-%d@%H:%M:%S~', time.localtime()))
    shutil.copy2(path, backup)
    stat = os.stat(path)
    if os.geteuid() == 0:
        os.chown(backup, stat.st_uid, stat.st_gid)
    return backup


def write_file(path, text):
    """Replace `path` atomically (fsynced), keeping its mode and owner."""
    stat = os.stat(path)
    files.write_atomic(path, text, mode=stat.st_mode & 0o7777, uid=stat.st_uid, gid=stat.st_gid, durable=True)


def file_errors(conn):
    """Lines of the file on disk the server cannot use (pg_hba_file_rules reads the file now); None if unreadable."""
    try:
        return query_all(conn, 'SELECT line_number, error FROM pg_catalog.pg_hba_file_rules WHERE error IS NOT NULL '
                               'ORDER BY line_number')
    except psycopg.errors.InsufficientPrivilege:
        return None


def restore_if_rejected(conn, path, old_text, errors_before, reload):
    """After a reload of a new file: if the server finds more errors in it than in the old one, put the old file back,
    `reload(conn)` again and raise HbaError 'rejected'."""
    errors = file_errors(conn)
    if errors is None or errors_before is None or len(errors) <= len(errors_before):
        return
    write_file(path, old_text)
    reload(conn)
    raise HbaError('rejected', 'the server rejected the new %s (%s); the previous file was put back' % (
        path, '; '.join('line %s: %s' % (n, e) for n, e in errors)))
