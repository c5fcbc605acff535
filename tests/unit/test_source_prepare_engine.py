"""Engine pieces of source preparation that need no server: pg_hba.conf parsing and placement, value
normalisation, password verifiers, ELF and module-magic inspection, archives."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct

import pytest

from ansible_collections.pgdts.migration.plugins.module_utils import hba
from ansible_collections.pgdts.migration.plugins.module_utils import plugin_files as pf
from ansible_collections.pgdts.migration.plugins.module_utils import server_settings as ss

BASE = """# comment kept as is
local   all             all                                     peer
host    all             all             127.0.0.1/32            scram-sha-256   # trailing comment
host    replication     all             127.0.0.1/32            scram-sha-256
host    sales           all             10.0.0.0 255.0.0.0      md5
host    all             all             0.0.0.0/0               reject
"""


def entries(addresses, databases=('shop',), method='scram-sha-256', replication=True):
    return hba.wanted_entries('migrator', list(databases), addresses, method=method, replication=replication)


def test_parse_keeps_every_line_and_reads_fields():
    parsed = hba.HbaFile(BASE)
    assert parsed.render() == BASE
    rules = parsed.rules()
    assert [r.type for r in rules] == ['local', 'host', 'host', 'host', 'host']
    assert str(rules[3].address) == '10.0.0.0/8'              # address + netmask
    assert rules[1].method == 'scram-sha-256' and rules[1].options == []


def test_quoted_keywords_are_names():
    parsed = hba.HbaFile('host "all","my db" +admins,"bob" 10.1.2.3/32 scram-sha-256 clientcert=verify-ca\n')
    rule = parsed.rules()[0]
    assert [(t.value, t.quoted) for t in rule.databases] == [('all', True), ('my db', True)]
    assert [t.value for t in rule.users] == ['+admins', 'bob']
    assert rule.options == ['clientcert=verify-ca']


def test_covered_entries_change_nothing():
    text, changes = hba.ensure_entries(BASE, entries(['127.0.0.1/32']))
    assert changes == [] and text == BASE


def test_entries_go_before_the_rule_that_would_shadow_them():
    text, changes = hba.ensure_entries(BASE, entries(['10.1.2.0/24']))
    lines = text.splitlines()
    shop = [i for i, line in enumerate(lines) if line.startswith('host    shop ')][0]
    assert shop < lines.index('host    all             all             0.0.0.0/0               reject')
    repl = [i for i, line in enumerate(lines) if line.startswith('host    replication     migrator')][0]
    assert repl == len(lines) - 1          # nothing matches physical replication from there: appended
    assert [c['action'] for c in changes] == ['appended', 'inserted']
    # the original lines are all there, in their order
    assert [line for line in lines if 'migrator' not in line] == BASE.splitlines()
    again, more = hba.ensure_entries(text, entries(['10.1.2.0/24']))
    assert more == [] and again == text


def test_other_method_on_same_key_is_replaced_in_place():
    text, changes = hba.ensure_entries(BASE, entries(['10.0.0.0/8'], databases=['sales'], replication=False))
    assert [c['action'] for c in changes] == ['inserted']      # "sales all" is not the same key as "sales migrator"
    own = 'host sales migrator 192.168.1.0/24 md5\n' + BASE
    text, changes = hba.ensure_entries(own, entries(['192.168.1.0/24'], databases=['sales'], replication=False))
    assert [c['action'] for c in changes] == ['replaced']
    assert text.splitlines()[0].split()[:5] == ['host', 'sales', 'migrator', '192.168.1.0/24', 'scram-sha-256']
    assert text.splitlines()[1:] == BASE.splitlines()
    # the same line after a rule that shadows it: a new entry goes before that rule, the old line stays
    shadowed = BASE + 'host sales migrator 192.168.1.0/24 md5\n'
    text, changes = hba.ensure_entries(shadowed, entries(['192.168.1.0/24'], databases=['sales'], replication=False))
    assert [c['action'] for c in changes] == ['inserted']
    assert changes[0]['before_rule'].endswith('reject')


def test_partial_overlap_is_not_enough():
    # a /16 rule with the same method covers only part of a /8 entry: the entry goes before it
    text = 'host shop migrator 10.1.0.0/16 scram-sha-256\n'
    new, changes = hba.ensure_entries(text, entries(['10.0.0.0/8'], replication=False))
    assert changes[0]['action'] == 'inserted' and new.splitlines()[1] == text.strip()


def test_database_named_replication_is_not_the_keyword():
    new, changes = hba.ensure_entries(BASE, entries(['10.9.9.9'], databases=['replication']))
    assert any('"replication"' in c['after'] for c in changes)
    assert any(c['after'].split()[1] == 'replication' for c in changes)


@pytest.mark.parametrize('address', ['', 'bad address', '10.0.0.0/33'])
def test_bad_addresses(address):
    with pytest.raises(hba.HbaError):
        entries([address])


def test_normalise_units_and_booleans():
    assert ss.normalise('4MB', 'integer', 'kB') == ss.normalise('4096', 'integer', 'kB')
    assert ss.normalise('1min', 'integer', 's') == ss.normalise('60', 'integer', 's')
    assert ss.normalise('on', 'bool') is True and ss.normalise('off', 'bool') is False
    assert ss.normalise('Logical', 'enum') == 'logical'


def _scram(password, salt, iterations=4096):
    salted = hashlib.pbkdf2_hmac('sha256', password.encode(), salt, iterations)
    client = hmac.new(salted, b'Client Key', hashlib.sha256).digest()
    server = hmac.new(salted, b'Server Key', hashlib.sha256).digest()
    return 'SCRAM-SHA-256$%d:%s$%s:%s' % (iterations, base64.b64encode(salt).decode(),
                                          base64.b64encode(hashlib.sha256(client).digest()).decode(),
                                          base64.b64encode(server).decode())


def test_password_verifiers():
    stored = _scram('s3cret', os.urandom(16))
    assert ss.password_matches(stored, 's3cret', 'u')
    assert not ss.password_matches(stored, 'other', 'u')
    md5 = 'md5' + hashlib.md5(b's3cretu').hexdigest()
    assert ss.password_matches(md5, 's3cret', 'u') and not ss.password_matches(md5, 's3cret', 'v')
    assert not ss.password_matches(None, 's3cret', 'u')


def _fake_so(machine=62, version=1500):
    header = b'\x7fELF' + bytes([2, 1, 1]) + bytes(9) + struct.pack('<HH', 3, machine) + bytes(44)
    magic = struct.pack('<6i', 56, version, 100, 32, 64, 1) + b'PostgreSQL'.ljust(32, b'\0')
    return header + bytes(100) + magic


def test_elf_and_magic_block():
    info = pf.elf_info(_fake_so())
    assert info['machine_name'] == 'x86_64' and info['bits'] == 64 and info['endian'] == 'little'
    assert pf.magic_version(_fake_so(version=1600)) == ('16', 1600)
    assert pf.magic_version(_fake_so(version=906)) == ('9.6', 906)
    with pytest.raises(pf.PluginError) as err:
        pf.elf_info(b'PK\x03\x04 not elf')
    assert err.value.kind == 'not_shared_object'


def test_archives(tmp_path):
    good = tmp_path / 'p.tar.gz'
    good.write_bytes(pf.archive_bytes_for_tests({'x/README': b'r', 'x/lib/p.so': b'so'}, fmt='tar.gz'))
    assert pf.read_plugin_source(str(good)) == (b'so', 'x/lib/p.so')
    two = tmp_path / 'two.zip'
    two.write_bytes(pf.archive_bytes_for_tests({'a.so': b'1', 'b/b.so': b'2'}))
    with pytest.raises(pf.PluginError, match='holds 2 .so files'):
        pf.read_plugin_source(str(two))
    assert pf.read_plugin_source(str(two), member='b/b.so') == (b'2', 'b/b.so')
    broken = tmp_path / 'broken.zip'
    broken.write_bytes(b'not a zip')
    with pytest.raises(pf.PluginError, match='cannot read archive'):
        pf.read_plugin_source(str(broken))


def test_checksums():
    assert pf.normalise_checksum('SHA256:' + 'A' * 64) == 'a' * 64
    with pytest.raises(pf.PluginError):
        pf.normalise_checksum('md5:' + 'a' * 32)
    with pytest.raises(pf.PluginError):
        pf.normalise_checksum('abc')
