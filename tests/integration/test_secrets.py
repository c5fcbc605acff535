"""Secrets: the whole pipeline runs with -vvv under passwords nobody else uses, and everything the run leaves is
searched for them - play output, returned values, the worker's log and state, the task state on the destination, the
servers' logs, the process list while the worker runs, and every file on disk written during the test. They may only
be where the user put them (the playbook) and in the 0600 credential file while the task lives.

Also: generated pg_hba.conf entries are exactly as narrow as asked, and never `trust`."""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import threading
import time

from psycopg import sql

from tests.harness.data import assert_same_contents
from tests.reliability.support import (
    FINISH, INFO, MIGRATE, VERIFY, BackgroundPlay, create_load_database, create_login_role, play, task_dir,
)

SOURCE_CONFIG = 'pgdts.migration.pg_dts_source_config'
# libpq client programs get the password in their environment (documented libpq practice, never argv)
LIBPQ_CLIENTS = ('pg_dump', 'pg_restore', 'psql', 'pg_dumpall')
SCAN_ROOTS = ('/tmp', '/var/tmp', os.path.expanduser('~/.ansible'), os.path.expanduser('~/.pgdts'))
SCAN_MAX_BYTES = 64 * 1024 * 1024


class ProcessWatcher(threading.Thread):
    """Reads every process's command line (and the environment of everything but libpq client programs) until
    stopped, and records where a secret shows up."""

    def __init__(self, canaries):
        super().__init__(daemon=True)
        self.canaries = [c.encode() for c in canaries]
        self.stop_event = threading.Event()
        self.hits = set()
        self.samples = 0
        self.saw_worker = False

    def run(self):
        while not self.stop_event.is_set():
            for entry in os.listdir('/proc'):
                if not entry.isdigit():
                    continue
                try:
                    with open('/proc/%s/cmdline' % entry, 'rb') as handle:
                        cmdline = handle.read()
                    with open('/proc/%s/comm' % entry, 'rb') as handle:
                        comm = handle.read().strip().decode('utf-8', 'replace')
                    environ = b''
                    if comm not in LIBPQ_CLIENTS:
                        with open('/proc/%s/environ' % entry, 'rb') as handle:
                            environ = handle.read()
                except OSError:
                    continue
                if b'plugins.module_utils.worker' in cmdline:
                    self.saw_worker = True
                for canary in self.canaries:
                    if canary in cmdline:
                        self.hits.add('cmdline of %s (%s): %s' % (entry, comm, cmdline.replace(b'\0', b' ')[:200]))
                    if canary in environ:
                        self.hits.add('environment of %s (%s)' % (entry, comm))
            self.samples += 1
            self.stop_event.wait(0.05)


def files_holding(canaries, since, skip):
    """Every regular file under SCAN_ROOTS changed since `since` that holds one of the canaries."""
    needles = [c.encode() for c in canaries]
    found = []
    for root in SCAN_ROOTS:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
            for name in filenames:
                path = os.path.join(dirpath, name)
                if path in skip:
                    continue
                try:
                    st = os.lstat(path)
                    if not stat.S_ISREG(st.st_mode) or st.st_mtime < since or st.st_size > SCAN_MAX_BYTES:
                        continue
                    with open(path, 'rb') as handle:
                        data = handle.read()
                except OSError:
                    continue
                if any(n in data for n in needles):
                    found.append(path)
    return found


def state_text(dst):
    """Every row of the task state database as text."""
    out = []
    with dst.connect('pgdts') as conn:
        for (table,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'pgdts'").fetchall():
            out.extend(r[0] for r in conn.execute(sql.SQL('SELECT t::text FROM {} t').format(
                sql.Identifier('pgdts', table))).fetchall())
    return '\n'.join(out)


def hba_tokens(line):
    """The fields of one pg_hba.conf line as the server splits them (double quotes group, "" is a quote)."""
    fields, current, quoted, i, started = [], '', False, 0, False
    while i < len(line):
        char = line[i]
        if quoted:
            if char == '"' and line[i + 1:i + 2] == '"':
                current += '""'
                i += 1
            elif char == '"':
                quoted = False
                current += char
            else:
                current += char
        elif char == '#':
            break
        elif char.isspace():
            if started:
                fields.append(current)
            current, started = '', False
        else:
            started = True
            current += char
            quoted = char == '"'
        i += 1
    if started:
        fields.append(current)
    return fields


def hba_rules(path):
    with open(path) as handle:
        return [f for f in (hba_tokens(line) for line in handle) if f]


def test_no_password_leaks_from_a_whole_run_at_vvv(pg_factory, ansible, tmp_path):
    started = time.time() - 1
    src, dst = pg_factory('xsrc'), pg_factory('xdst')
    src_pw, dst_pw, mig_pw = ('pgdtsCanary%s%s' % (kind, secrets.token_hex(8)) for kind in ('Src', 'Dst', 'Mig'))
    canaries = (src_pw, dst_pw, mig_pw)
    create_login_role(src, 'srcadmin', src_pw, 'SUPERUSER')
    create_login_role(dst, 'dstadmin', dst_pw, 'SUPERUSER')
    create_load_database(src, 'shop', scale=1)
    src.execute("CREATE TABLE notes (id int PRIMARY KEY, note text)", dbname='shop')
    # a value that looks like a secret must travel as data, not be scrubbed: the canaries are never data
    src.execute("INSERT INTO notes VALUES (1, 'password=hunter2')", dbname='shop')
    worker_dir = str(tmp_path / 'workers')
    admin = {'host': src.host, 'port': src.port, 'user': 'srcadmin', 'password': src_pw, 'dbname': 'postgres'}
    source = {'host': src.host, 'port': src.port, 'user': 'migrator', 'password': mig_pw, 'dbname': 'postgres'}
    destination = {'host': dst.host, 'port': dst.port, 'user': 'dstadmin', 'password': dst_pw, 'dbname': 'postgres'}
    common = {'name': 'secret_move', 'source': source, 'destination': destination, 'worker_dir': worker_dir}
    first = play([
        {'name': 'prepare the source', SOURCE_CONFIG: {
            'source': admin, 'databases': ['shop'], 'migration_user': 'migrator', 'migration_password': mig_pw,
            'create_migration_user': True, 'hba_addresses': ['127.0.0.1/32']}},
        # the migration user gets what pgoutput needs (publication of tables it does not own needs superuser)
        {'name': 'make the migration user a superuser for the test', 'ansible.builtin.command': {
            'argv': [os.path.join(src.bindir, 'psql'), '-X', '-c', 'ALTER ROLE migrator SUPERUSER'],
        }, 'environment': {'PGHOST': src.host, 'PGPORT': str(src.port), 'PGUSER': 'postgres',
                           'PGPASSWORD': src.password}},
        # ledger and pgbench_history have no key: REPLICA IDENTITY FULL (insert-only tables: it costs nothing)
        {'name': 'verify', VERIFY: dict({k: common[k] for k in ('name', 'source', 'destination')},
                                        replica_identity='full')},
        {'name': 'migrate', MIGRATE: dict(common, databases=['shop'], jobs=2, wait='synced', wait_timeout=300,
                                          replica_identity='full')},
        {'name': 'info', INFO: {k: common[k] for k in ('name', 'source', 'destination', 'worker_dir')}},
    ])
    second = play([{'name': 'finish', FINISH: {k: common[k] for k in ('name', 'source', 'destination', 'worker_dir')}}])
    # the searches can find something: a probe secret in a file and on a command line is found
    probe = 'pgdtsProbe%s' % secrets.token_hex(8)
    (tmp_path / 'probe.txt').write_text('x %s y' % probe)
    watcher = ProcessWatcher(canaries + (probe,))
    watcher.start()
    sleeper = subprocess.Popen(['sh', '-c', 'sleep 3', probe])
    try:
        run1 = BackgroundPlay(ansible, first, verbosity=3)
        assert run1.wait(600) == 0, run1.output()[-4000:]
        # while the task lives: the worker's directory and its 0600 credential file
        directory = task_dir(worker_dir, 'secret_move')
        credentials = os.path.join(directory, 'credentials.json')
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(credentials).st_mode) == 0o600
        with open(credentials) as handle:
            held = handle.read()
        assert mig_pw in held and dst_pw in held
        with open(os.path.join(directory, 'worker.log')) as handle:
            log_during = handle.read()
        assert 'incremental sync running' in log_during
        state_during = state_text(dst)
        leaking_files = files_holding(canaries, started, {run1.path, credentials})
        src.execute("INSERT INTO notes VALUES (2, 'after the copy')", dbname='shop')
        run2 = BackgroundPlay(ansible, second, verbosity=3)
        assert run2.wait(600) == 0, run2.output()[-4000:]
    finally:
        watcher.stop_event.set()
        watcher.join(10)
    sleeper.wait()
    assert watcher.saw_worker and watcher.samples > 10
    assert [h for h in watcher.hits if probe in h] != [], 'the watcher is blind'
    watcher.hits = {h for h in watcher.hits if probe not in h}
    assert files_holding([probe], started, set()) == [str(tmp_path / 'probe.txt')], 'the file search is blind'
    assert not os.path.exists(directory), 'the task directory (and its credential file) must be gone after finish'
    assert_same_contents(src, dst, 'shop')
    results = run1.results() + run2.results()
    assert [r['status'] for r in results] == ['changed', 'changed', 'ok', 'changed', 'ok', 'changed'], \
        [(r['task'], r['status'], r['result'].get('msg')) for r in results]
    # what -vvv shows of the arguments is masked
    assert 'VALUE_SPECIFIED_IN_NO_LOG_PARAMETER' in run1.output()
    places = {
        'play output (first play)': run1.output(),
        'play output (finish)': run2.output(),
        'returned values': repr(results),
        'worker log': log_during,
        'task state during the sync': state_during,
        'task state after finish': state_text(dst),
        'source server log': open(src.logfile, errors='replace').read(),
        'destination server log': open(dst.logfile, errors='replace').read(),
    }
    for place, text in places.items():
        for canary in canaries:
            assert canary not in text, 'a password leaked into the %s' % place
    leaking_files += files_holding(canaries, started, {run1.path, run2.path})
    assert leaking_files == [], 'passwords found in files: %s' % leaking_files
    assert sorted(watcher.hits) == [], 'passwords seen in the process list: %s' % sorted(watcher.hits)
    print('searched %d process-list samples, %d places and every file under %s changed during the test'
          % (watcher.samples, len(places), ', '.join(SCAN_ROOTS)))


def test_generated_pg_hba_entries_are_exactly_as_narrow_as_asked(pg_factory, ansible):
    src = pg_factory('hsrc')
    weird_db = 'Shop "Ünï" O\'Brien'
    src.create_database('plain')
    src.create_database(weird_db)
    hba_path = os.path.join(src.datadir, 'pg_hba.conf')
    before = hba_rules(hba_path)
    args = {'source': src.spec(), 'databases': ['plain', weird_db], 'migration_user': 'Mig Rôle',
            'hba_addresses': ['10.1.2.3/32', '192.0.2.0/24'], 'hba_method': 'scram-sha-256'}
    status, result = ansible.module(SOURCE_CONFIG, args)
    assert status == 'changed', result
    after = hba_rules(hba_path)
    added = [rule for rule in after if rule not in before]
    expected_dbs = {'plain', '"Shop ""Ünï"" O\'Brien"', 'replication'}
    # one entry per (database, address), and one replication entry per address: nothing else
    assert len(added) == 6, added
    for rule in added:
        assert rule[0] == 'host', rule
        assert rule[2] == '"Mig Rôle"', rule                  # exactly the user, quoted
        assert rule[3] in ('10.1.2.3/32', '192.0.2.0/24'), rule
        assert rule[4:] == ['scram-sha-256'], rule
    assert {r[1] for r in added} == expected_dbs
    assert not [r for r in after if 'trust' in r[3:] and r not in before]
    assert not [r for r in added if 'all' in r[1:3] or r[3] in ('all', '0.0.0.0/0', '::/0')]
    # the entries are what the server itself reads
    rows = src.execute("SELECT database, user_name, address, netmask, auth_method FROM pg_hba_file_rules "
                       "WHERE user_name = ARRAY['Mig Rôle'] ORDER BY 1, 3")
    assert {tuple(r[0]) for r in rows} == {('plain',), (weird_db,), ('replication',)}
    assert {r[4] for r in rows} == {'scram-sha-256'} and {(r[2], r[3]) for r in rows} == {
        ('10.1.2.3', '255.255.255.255'), ('192.0.2.0', '255.255.255.0')}
    # a second run changes nothing; md5 asked means md5, and trust is never chosen on its own
    status, again = ansible.module(SOURCE_CONFIG, args)
    assert status == 'ok', again
    status, md5 = ansible.module(SOURCE_CONFIG, dict(args, databases=['plain'], hba_addresses=['10.9.9.9'],
                                                     hba_method='md5'))
    assert status == 'changed', md5
    newest = [r for r in hba_rules(hba_path) if r not in after]
    assert sorted(newest) == sorted([['host', 'plain', '"Mig Rôle"', '10.9.9.9/32', 'md5'],
                                     ['host', 'replication', '"Mig Rôle"', '10.9.9.9/32', 'md5']]), newest
    assert not any(r[-1] == 'trust' for r in hba_rules(hba_path) if r not in before)
