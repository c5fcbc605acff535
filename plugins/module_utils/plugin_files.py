# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Decoding plugin files: where PostgreSQL loads them from, reading them out of archives, checking that a shared
object fits the server (architecture, major version), installing it atomically and proving that it loads.

Plain Python (no Ansible imports): the module pg_dts_plugin_install is a thin wrapper around this file.
"""

from __future__ import annotations

import glob
import grp
import hashlib
import io
import os
import pwd
import re
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import uuid
import zipfile

from ansible_collections.pgdts.migration.plugins.module_utils.connection import error_text, query_all, query_value

try:
    import psycopg
except ImportError:  # pragma: no cover - the module reports the missing library itself
    psycopg = None

BUILTIN_PLUGINS = ('pgoutput', 'test_decoding')
PLUGIN_NAME_RE = re.compile(r'^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$')
MAX_PLUGIN_BYTES = 256 * 1024 * 1024
ARCHIVE_SUFFIXES = ('.zip', '.tar.gz', '.tgz', '.tar')

ELF_MACHINES = {
    2: 'sparc', 3: 'i386', 8: 'mips', 20: 'ppc', 21: 'ppc64', 22: 's390x', 40: 'arm', 43: 'sparcv9',
    50: 'ia64', 62: 'x86_64', 183: 'aarch64', 243: 'riscv', 258: 'loongarch',
}
ET_DYN = 3

# PG_MODULE_MAGIC data block: len, version (PG_VERSION_NUM / 100), FUNC_MAX_ARGS, INDEX_MAX_KEYS, NAMEDATALEN, ...
# The last three are 100, 32 and 64 in every standard build; searching for them finds the block.
_MAGIC_TAIL = (100, 32, 64)


class PluginError(Exception):
    """A plugin cannot be installed, found or removed. `kind` is a stable word, `message` says what is wrong."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind
        self.message = message


# -- names and checksums ---------------------------------------------------------------------------------------

def check_plugin_name(name):
    if not name or not PLUGIN_NAME_RE.match(name) or name.endswith('.so'):
        raise PluginError('invalid_name', 'plugin name %r is not valid: give the name used in slots (e.g. wal2json), '
                                          'without directory or .so suffix' % (name,))
    return name


def normalise_checksum(value):
    """'sha256:<hex>' or '<hex>' -> lower-case hex; anything else is an error."""
    if value in (None, ''):
        return None
    text = str(value).strip()
    if ':' in text:
        algo, text = text.split(':', 1)
        if algo.strip().lower() != 'sha256':
            raise PluginError('invalid_checksum', 'checksum must be sha256 (got algorithm %r)' % algo)
    text = text.strip().lower()
    if not re.match(r'^[0-9a-f]{64}$', text):
        raise PluginError('invalid_checksum', 'checksum must be 64 hexadecimal digits of a sha256 sum, got %r' % value)
    return text


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for block in iter(lambda: handle.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


# -- ELF inspection --------------------------------------------------------------------------------------------

def elf_info(data):
    """Class, byte order, machine and type of an ELF file; PluginError('not_shared_object') for anything else."""
    if len(data) < 20 or data[:4] != b'\x7fELF':
        raise PluginError('not_shared_object', 'not an ELF shared object')
    elf_class = {1: 32, 2: 64}.get(data[4])
    endian = {1: '<', 2: '>'}.get(data[5])
    if elf_class is None or endian is None:
        raise PluginError('not_shared_object', 'not a valid ELF file (unknown class or byte order)')
    e_type, e_machine = struct.unpack(endian + 'HH', data[16:20])
    return {'bits': elf_class, 'endian': 'little' if endian == '<' else 'big', 'machine': e_machine,
            'machine_name': ELF_MACHINES.get(e_machine, 'machine %d' % e_machine), 'type': e_type}


def describe_platform(info):
    return '%s (%d-bit, %s-endian)' % (info['machine_name'], info['bits'], info['endian'])


def magic_version(data, info=None):
    """The PostgreSQL version a module was built for, from its PG_MODULE_MAGIC block: (major_text, raw) or None.

    raw is PG_VERSION_NUM / 100 (1500 for 15.x, 906 for 9.6); major_text is '15' or '9.6'.
    """
    info = info or elf_info(data)
    fmt = ('<' if info['endian'] == 'little' else '>') + 'i'
    tail = b''.join(struct.pack(fmt, v) for v in _MAGIC_TAIL)
    start = 0
    while True:
        pos = data.find(tail, start)
        if pos < 0:
            return None
        if pos >= 8:
            length, version = struct.unpack(fmt[0] + 'ii', data[pos - 8:pos])
            if 20 <= length <= 256 and 900 <= version <= 9999:
                return major_text_of_magic(version), version
        start = pos + 1


def major_text_of_magic(version):
    return str(version // 100) if version >= 1000 else '%d.%d' % (version // 100, version % 100)


def major_text_of_version_num(version_num):
    version_num = int(version_num)
    return str(version_num // 10000) if version_num >= 100000 else '%d.%d' % (version_num // 10000, (version_num // 100) % 100)


def reference_binary(pkglibdir):
    """A shared object known to fit the server (from its own installation), or None."""
    for name in ('pgoutput.so', 'plpgsql.so', 'test_decoding.so'):
        path = os.path.join(pkglibdir, name)
        if os.path.isfile(path):
            return path
    return None


def _read_head(path, size=None):
    with open(path, 'rb') as handle:
        return handle.read() if size is None else handle.read(size)


def check_compatible(data, label, pkglibdir, server_major=None):
    """Fail when the shared object cannot fit the server. Returns what was checked (for the result)."""
    info = elf_info(data)
    if info['type'] != ET_DYN:
        raise PluginError('not_shared_object', '%s is an ELF file but not a shared object (.so)' % label)
    checked = {'platform': describe_platform(info), 'built_for': None, 'reference': None}
    ref_path = reference_binary(pkglibdir)
    ref_data = None
    if ref_path:
        ref_data = _read_head(ref_path)
        checked['reference'] = ref_path
    else:
        exe = os.path.realpath(sys.executable)
        try:
            ref_data = _read_head(exe, 64)
            checked['reference'] = exe
        except OSError:
            ref_data = None
    if ref_data:
        try:
            ref = elf_info(ref_data)
        except PluginError:
            ref = None
        if ref and (ref['machine'], ref['bits'], ref['endian']) != (info['machine'], info['bits'], info['endian']):
            raise PluginError('wrong_architecture', '%s is built for %s, but this server runs %s' % (
                label, describe_platform(info), describe_platform(ref)))
    found = magic_version(data, info)
    if found:
        checked['built_for'] = found[0]
        expected = server_major
        if expected is None and ref_path and ref_data:
            ref_magic = magic_version(ref_data)
            expected = ref_magic[0] if ref_magic else None
        if expected is not None and str(expected) != found[0]:
            raise PluginError('wrong_version', '%s is built for PostgreSQL %s, but the server is PostgreSQL %s' % (
                label, found[0], expected))
    return checked


# -- reading the plugin out of its source ----------------------------------------------------------------------

def is_archive(path):
    lower = path.lower()
    return lower.endswith(ARCHIVE_SUFFIXES)


def _so_name(member):
    base = member.rsplit('/', 1)[-1]
    return base.endswith('.so') and not base.startswith('.') and len(base) > 3


def _pick_member(candidates, member, src):
    if member:
        wanted = [c for c in candidates if c == member or c.rstrip('/') == member.strip('/')]
        if not wanted:
            raise PluginError('member_missing', 'archive %s has no member %s (its .so files: %s)' % (
                src, member, ', '.join(candidates) or 'none'))
        return wanted[0]
    if not candidates:
        raise PluginError('no_shared_object', 'archive %s holds no .so file' % src)
    if len(candidates) > 1:
        raise PluginError('ambiguous', 'archive %s holds %d .so files (%s): choose one with member' % (
            src, len(candidates), ', '.join(candidates)))
    return candidates[0]


def read_plugin_source(src, member=None):
    """The bytes of the plugin's .so from a shared object file or an archive: (data, member_or_None)."""
    if not os.path.exists(src):
        raise PluginError('src_missing', 'src %s does not exist' % src)
    if not os.path.isfile(src):
        raise PluginError('src_missing', 'src %s is not a regular file' % src)
    if not is_archive(src):
        if member:
            raise PluginError('invalid', 'member is only valid with an archive (.zip, .tar.gz), src is %s' % src)
        if os.path.getsize(src) > MAX_PLUGIN_BYTES:
            raise PluginError('too_large', 'src %s is larger than %d bytes' % (src, MAX_PLUGIN_BYTES))
        return _read_head(src), None
    lower = src.lower()
    try:
        if lower.endswith('.zip'):
            with zipfile.ZipFile(src) as archive:
                infos = [i for i in archive.infolist() if not i.is_dir()]
                chosen = _pick_member([i.filename for i in infos if _so_name(i.filename)], member, src)
                info = archive.getinfo(chosen)
                if info.file_size > MAX_PLUGIN_BYTES:
                    raise PluginError('too_large', '%s in %s is larger than %d bytes' % (chosen, src, MAX_PLUGIN_BYTES))
                return archive.read(info), chosen
        with tarfile.open(src, 'r:*') as archive:
            infos = [i for i in archive.getmembers() if i.isfile()]
            chosen = _pick_member([i.name for i in infos if _so_name(i.name)], member, src)
            info = archive.getmember(chosen)
            if info.size > MAX_PLUGIN_BYTES:
                raise PluginError('too_large', '%s in %s is larger than %d bytes' % (chosen, src, MAX_PLUGIN_BYTES))
            handle = archive.extractfile(info)
            return handle.read(), chosen
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise PluginError('bad_archive', 'cannot read archive %s: %s' % (src, exc))


# -- where the server loads plugins from -----------------------------------------------------------------------

def _run_pg_config(path):
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise PluginError('no_pg_config', 'pg_config %s does not exist or is not executable' % path)
    try:
        out = subprocess.run([path, '--pkglibdir', '--bindir', '--version'], check=True, capture_output=True,
                             text=True, timeout=30).stdout.splitlines()
    except (subprocess.SubprocessError, OSError) as exc:
        raise PluginError('no_pg_config', 'pg_config %s failed: %s' % (path, exc))
    if len(out) < 3:
        raise PluginError('no_pg_config', 'pg_config %s printed an unexpected answer' % path)
    return {'pkglibdir': out[0].strip(), 'bindir': out[1].strip(), 'major': _major_of_version_text(out[2])}


def _major_of_version_text(text):
    match = re.search(r'(\d+)(?:\.(\d+))?', text or '')
    if not match:
        return None
    major = int(match.group(1))
    if major >= 10:
        return str(major)
    return '%d.%s' % (major, match.group(2) or '0')


def pg_config_candidates(major=None):
    """pg_config programs that may belong to a server of the given major version, most specific first."""
    found = []
    if major:
        found += ['/usr/lib/postgresql/%s/bin/pg_config' % major, '/usr/pgsql-%s/bin/pg_config' % major,
                  '/usr/local/pgsql-%s/bin/pg_config' % major]
    else:
        found += sorted(glob.glob('/usr/lib/postgresql/*/bin/pg_config')) + sorted(glob.glob('/usr/pgsql-*/bin/pg_config'))
    on_path = shutil.which('pg_config')
    if on_path:
        found.append(on_path)
    found.append('/usr/local/pgsql/bin/pg_config')
    unique = []
    for path in found:
        if os.path.isfile(path) and path not in unique:
            unique.append(path)
    return unique


def server_pg_config(conn):
    """The running server's own pg_config view (superusers only); None when it cannot be read."""
    try:
        rows = query_all(conn, "SELECT name, setting FROM pg_catalog.pg_config WHERE name IN ('PKGLIBDIR', 'BINDIR', 'VERSION')")
    except psycopg.Error:
        return None
    values = dict(rows)
    if 'PKGLIBDIR' not in values:
        return None
    return {'pkglibdir': values['PKGLIBDIR'], 'bindir': values.get('BINDIR'),
            'major': _major_of_version_text(values.get('VERSION'))}


def locate_pkglibdir(pkglibdir=None, pg_config=None, conn=None, major=None):
    """Where the server loads plugins from: dict(pkglibdir, bindir, major, how)."""
    server_major = major_text_of_version_num(conn.info.server_version) if conn is not None else None
    if major and server_major and str(major) != server_major:
        raise PluginError('wrong_version', 'major_version %s was given, but the server is PostgreSQL %s' % (major, server_major))
    major = server_major or (str(major) if major else None)
    result = None
    if pg_config:
        result = _run_pg_config(pg_config)
        result['how'] = 'pg_config %s' % pg_config
        if major and result['major'] and result['major'] != major:
            raise PluginError('wrong_version', 'pg_config %s belongs to PostgreSQL %s, the server is PostgreSQL %s' % (
                pg_config, result['major'], major))
    elif not pkglibdir and conn is not None:
        result = server_pg_config(conn)
        if result:
            result['how'] = 'server'
    if result is None and not pkglibdir:
        candidates = pg_config_candidates(major)
        answers = []
        for path in candidates:
            try:
                answer = _run_pg_config(path)
            except PluginError:
                continue
            answer['how'] = 'pg_config %s' % path
            answers.append(answer)
        if major:
            answers = [a for a in answers if a['major'] == major]
        else:
            by_dir = {}
            for answer in answers:
                by_dir.setdefault(answer['pkglibdir'], answer)
            answers = list(by_dir.values())
            if len(answers) > 1:
                raise PluginError('ambiguous', 'several PostgreSQL installations found (%s): give major_version, '
                                               'pg_config or pkglibdir, or a connection (source)' % ', '.join(
                                                   sorted(a['major'] or '?' for a in answers)))
        if not answers:
            raise PluginError('no_pg_config', 'no pg_config found%s (looked at %s): give pg_config or pkglibdir' % (
                ' for PostgreSQL %s' % major if major else '', ', '.join(candidates) or 'PATH and the usual places'))
        result = answers[0]
    if pkglibdir:
        result = dict(result or {}, pkglibdir=pkglibdir, how='option')
        result.setdefault('bindir', None)
    result['major'] = major or result.get('major')
    if not os.path.isdir(result['pkglibdir']):
        raise PluginError('no_pkglibdir', 'the plugin directory %s does not exist' % result['pkglibdir'])
    return result


# -- installing and removing -----------------------------------------------------------------------------------

def resolve_owner(owner=None, group=None):
    try:
        uid = pwd.getpwnam(owner).pw_uid if owner else None
    except KeyError:
        raise PluginError('invalid', 'owner %s does not exist on this host' % owner)
    try:
        gid = grp.getgrnam(group).gr_gid if group else None
    except KeyError:
        raise PluginError('invalid', 'group %s does not exist on this host' % group)
    return uid, gid


def parse_mode(mode):
    if mode in (None, ''):
        return 0o644
    if isinstance(mode, int):
        return mode
    text = str(mode).strip()
    if not re.match(r'^0?[0-7]{3,4}$', text):
        raise PluginError('invalid', 'mode must be octal like 0644, got %r' % mode)
    return int(text, 8)


def file_state(path):
    """sha256, size, owner, group and mode of an installed file, or None."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return {'path': path, 'sha256': sha256_file(path), 'size': st.st_size, 'uid': st.st_uid, 'gid': st.st_gid,
            'mode': '%04o' % stat.S_IMODE(st.st_mode)}


def describe_state(state):
    if not state:
        return ''
    lines = ['path: %s' % state['path'], 'sha256: %s' % state['sha256'], 'size: %s' % state['size'],
             'owner: %s' % _name_of_uid(state['uid']), 'group: %s' % _name_of_gid(state['gid']),
             'mode: %s' % state['mode']]
    return '\n'.join(lines) + '\n'


def _name_of_uid(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _name_of_gid(gid):
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def wanted_state(path, data, uid, gid, mode, current=None):
    """What the file should look like; owner/group left out keep what is there (or the process's own ids)."""
    return {'path': path, 'sha256': sha256_bytes(data), 'size': len(data),
            'uid': uid if uid is not None else (current['uid'] if current else os.geteuid()),
            'gid': gid if gid is not None else (current['gid'] if current else os.getegid()),
            'mode': '%04o' % mode}


def set_attributes(path, uid, gid, mode):
    os.chmod(path, mode)
    os.chown(path, uid, gid)


# -- what the server says ---------------------------------------------------------------------------------------

def server_facts(conn):
    rows = dict(query_all(conn, "SELECT name, setting FROM pg_catalog.pg_settings WHERE name IN "
                                "('wal_level', 'data_directory', 'dynamic_library_path')"))
    return {'server_version_num': conn.info.server_version,
            'server_major': major_text_of_version_num(conn.info.server_version),
            'wal_level': rows.get('wal_level'), 'data_directory': rows.get('data_directory'),
            'dynamic_library_path': rows.get('dynamic_library_path')}


def slots_using(conn, plugin):
    return [r[0] for r in query_all(conn, 'SELECT slot_name FROM pg_catalog.pg_replication_slots WHERE plugin = %s '
                                          'ORDER BY slot_name', (plugin,))]


def probe_load(conn, plugin, timeout_s=30):
    """Create and drop a temporary logical slot with the plugin: (loadable, message).

    loadable is True when the slot was created, False when the plugin failed to load, None when the probe could
    not decide (a timeout waiting for running transactions, no free slot, missing privilege).
    """
    from psycopg import sql
    slot = 'pgdts_probe_%s' % uuid.uuid4().hex[:12]
    try:
        conn.execute(sql.SQL('SET statement_timeout = {}').format(sql.Literal('%ds' % max(1, int(timeout_s)))))
        conn.execute('SELECT pg_catalog.pg_create_logical_replication_slot(%s, %s, true)', (slot, plugin))
    except psycopg.errors.QueryCanceled:
        return None, ('could not prove that %s loads: creating a probe slot waited more than %ss for running '
                      'transactions' % (plugin, timeout_s))
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ConfigurationLimitExceeded,
            psycopg.errors.ObjectNotInPrerequisiteState) as exc:
        return None, 'could not prove that %s loads: %s' % (plugin, error_text(exc))
    except psycopg.Error as exc:
        return False, 'plugin %s does not load: %s' % (plugin, error_text(exc))
    finally:
        try:
            conn.execute('RESET statement_timeout')
        except psycopg.Error:
            pass
    try:
        if query_value(conn, 'SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = %s', (slot,)):
            conn.execute('SELECT pg_catalog.pg_drop_replication_slot(%s)', (slot,))
    except psycopg.Error:
        pass  # a temporary slot goes away with the session anyway
    return True, 'plugin %s loads (a temporary logical slot was created and dropped)' % plugin


def archive_bytes_for_tests(members, fmt='zip'):
    """Build an archive in memory from {name: bytes} (used by tests and examples)."""
    buf = io.BytesIO()
    if fmt == 'zip':
        with zipfile.ZipFile(buf, 'w', zipfile.ZIP_DEFLATED) as archive:
            for name, data in members.items():
                archive.writestr(name, data)
    else:
        with tarfile.open(fileobj=buf, mode='w:gz') as archive:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buf.getvalue()
