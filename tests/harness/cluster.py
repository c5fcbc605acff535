"""Throw-away PostgreSQL clusters for tests and manual experiments.

Each cluster is created with initdb as the `postgres` operating-system user, listens on 127.0.0.1 on a free port
with a private socket directory, and is removed by `destroy()` (the pytest fixtures call it even when a test fails).

Manual use:
    python -m tests.harness.cluster start --name src [--set wal_level=replica]   # prints a JSON description
    python -m tests.harness.cluster stop --dir /tmp/pgdts-clusters/src
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import psycopg

from tests.harness import pg_majors

DEFAULT_PASSWORD = 'harness-Secret-4711'
DEFAULT_SETTINGS = {
    'listen_addresses': "'127.0.0.1'",
    'wal_level': 'logical',
    'max_replication_slots': '10',
    'max_wal_senders': '10',
    'max_connections': '100',
    'shared_buffers': '128MB',
    'fsync': 'off',
    'full_page_writes': 'off',
    'synchronous_commit': 'off',
    'log_min_messages': 'warning',
    'logging_collector': 'off',
    'max_worker_processes': '16',
}


def pg_bindir(major=None):
    """Server bin directory: of `major` (Debian's package or the cache of tests/harness/pg_majors.py), else
    $PGDTS_PG_BINDIR, else the newest Debian package."""
    if major is not None:
        found = pg_majors.bindir(int(major))
        if not found:
            raise RuntimeError('no PostgreSQL %s server build: run `python -m tests.harness.pg_majors %s` '
                               '(make matrix does)' % (major, major))
        return found
    env = os.environ.get('PGDTS_PG_BINDIR')
    if env:
        return env
    candidates = sorted(glob.glob('/usr/lib/postgresql/*/bin/initdb'), key=lambda p: int(p.split('/')[4]))
    if not candidates:
        raise RuntimeError('no PostgreSQL server binaries under /usr/lib/postgresql: run scripts/setup.sh')
    return os.path.dirname(candidates[-1])


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _as_postgres(argv):
    """Run a server binary as the postgres OS user (we may be root; the server refuses to run as root)."""
    if os.geteuid() == 0:
        return ['runuser', '-u', 'postgres', '--'] + argv
    return argv


def _chown_postgres(path):
    if os.geteuid() == 0:
        pw = pwd.getpwnam('postgres')
        os.chown(path, pw.pw_uid, pw.pw_gid)


class PgCluster:
    """One throw-away server. `spec()` gives a ServerSpec-compatible dict for the superuser over TCP."""

    def __init__(self, base_dir, name='pg', port=None, settings=None, password=DEFAULT_PASSWORD, major=None):
        self.name = name
        self.root = os.path.join(base_dir, name)
        self.datadir = os.path.join(self.root, 'data')
        self.sockdir = os.path.join(self.root, 'sock')
        self.logfile = os.path.join(self.root, 'server.log')
        self.port = port or free_port()
        self.password = password
        self.settings = dict(DEFAULT_SETTINGS)
        self.settings.update({k: str(v) for k, v in (settings or {}).items()})
        self.bindir = pg_bindir(major)
        self.env = pg_majors.server_env(self.bindir)
        self.host = '127.0.0.1'

    # -- lifecycle -------------------------------------------------------------------------------------------
    def init(self):
        for path in (self.root, self.sockdir):
            os.makedirs(path, exist_ok=True)
            _chown_postgres(path)
        pwfile = os.path.join(self.root, 'pwfile')
        with open(pwfile, 'w') as handle:
            handle.write(self.password + '\n')
        os.chmod(pwfile, 0o600)
        _chown_postgres(pwfile)
        try:
            subprocess.run(_as_postgres([os.path.join(self.bindir, 'initdb'), '-D', self.datadir, '-U', 'postgres',
                                         '--pwfile', pwfile, '--auth-local=trust', '--auth-host=scram-sha-256',
                                         '-E', 'UTF8', '--locale=C.UTF-8', '--no-sync']),
                           check=True, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        finally:
            os.unlink(pwfile)
        lines = ['', '# pgdts test harness']
        lines += ['%s = %s' % (k, v) for k, v in self.settings.items()]
        lines += ["port = %d" % self.port, "unix_socket_directories = '%s'" % self.sockdir]
        with open(os.path.join(self.datadir, 'postgresql.conf'), 'a') as handle:
            handle.write('\n'.join(lines) + '\n')
        return self

    def start(self, wait=True):
        subprocess.run(_as_postgres([os.path.join(self.bindir, 'pg_ctl'), '-D', self.datadir, '-l', self.logfile,
                                     '-o', '-c port=%d' % self.port, '-w' if wait else '-W', '-t', '60', 'start']),
                       check=True, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self

    def stop(self, mode='fast'):
        if self.running():
            subprocess.run(_as_postgres([os.path.join(self.bindir, 'pg_ctl'), '-D', self.datadir, '-m', mode, '-w',
                                         '-t', '60', 'stop']), check=False, env=self.env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)

    def restart(self):
        self.stop()
        self.start()

    def reload(self):
        subprocess.run(_as_postgres([os.path.join(self.bindir, 'pg_ctl'), '-D', self.datadir, 'reload']), check=True,
                       env=self.env, stdout=subprocess.DEVNULL)

    def postmaster_pid(self):
        try:
            with open(os.path.join(self.datadir, 'postmaster.pid')) as handle:
                return int(handle.readline().strip())
        except (OSError, ValueError):
            return None

    def running(self):
        pid = self.postmaster_pid()
        if not pid:
            return False
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True

    def kill9(self):
        pid = self.postmaster_pid()
        if pid:
            os.kill(pid, signal.SIGKILL)
            deadline = time.time() + 10
            while self.running() and time.time() < deadline:
                time.sleep(0.05)

    def destroy(self):
        self.stop('immediate')
        shutil.rmtree(self.root, ignore_errors=True)

    # -- access ----------------------------------------------------------------------------------------------
    def spec(self, user='postgres', password=None, dbname='postgres'):
        return {'host': self.host, 'port': self.port, 'user': user,
                'password': self.password if password is None and user == 'postgres' else password,
                'dbname': dbname}

    def connect(self, dbname='postgres', autocommit=True, user='postgres', password=None):
        return psycopg.connect(host=self.host, port=self.port, user=user, dbname=dbname, autocommit=autocommit,
                               password=self.password if password is None else password, connect_timeout=10)

    def execute(self, query, params=None, dbname='postgres'):
        with self.connect(dbname) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else None

    def value(self, query, params=None, dbname='postgres'):
        rows = self.execute(query, params, dbname)
        return rows[0][0] if rows else None

    def setting(self, name):
        return self.value('SELECT setting FROM pg_settings WHERE name = %s', (name,))

    def postmaster_start_time(self):
        return self.value('SELECT pg_postmaster_start_time()')

    def create_database(self, name):
        from psycopg import sql
        with self.connect() as conn:
            conn.execute(sql.SQL('CREATE DATABASE {}').format(sql.Identifier(name)))

    def libpq_env(self, dbname='postgres'):
        env = dict(self.env)
        env.update(PGHOST=self.host, PGPORT=str(self.port), PGUSER='postgres', PGPASSWORD=self.password,
                   PGDATABASE=dbname)
        return env

    def run_client(self, program, args, dbname='postgres', check=True, **kwargs):
        """Run a client program (psql, pgbench, pg_dump) against this cluster; the password goes by environment."""
        return subprocess.run([os.path.join(self.bindir, program)] + list(args), env=self.libpq_env(dbname),
                              check=check, **kwargs)

    def describe(self):
        return {'name': self.name, 'host': self.host, 'port': self.port, 'datadir': self.datadir,
                'socket_dir': self.sockdir, 'log': self.logfile, 'user': 'postgres'}


def make_base_dir(prefix='pgdts-clusters-'):
    base = tempfile.mkdtemp(prefix=prefix)
    os.chmod(base, 0o755)
    _chown_postgres(base)
    return base


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    start = sub.add_parser('start', help='create and start a cluster')
    start.add_argument('--name', default='pg')
    start.add_argument('--base-dir', default=None)
    start.add_argument('--port', type=int, default=None)
    start.add_argument('--set', action='append', default=[], metavar='NAME=VALUE')
    stop = sub.add_parser('stop', help='stop and remove a cluster')
    stop.add_argument('--dir', required=True, help='the cluster root printed by start')
    args = parser.parse_args(argv)
    if args.command == 'start':
        base = args.base_dir or make_base_dir()
        settings = dict(item.split('=', 1) for item in args.set)
        cluster = PgCluster(base, args.name, port=args.port, settings=settings).init().start()
        info = cluster.describe()
        info['root'] = cluster.root
        info['password_env'] = 'PGPASSWORD=%s' % cluster.password
        print(json.dumps(info, indent=2))
    else:
        datadir = os.path.join(args.dir, 'data')
        subprocess.run(_as_postgres([os.path.join(pg_bindir(), 'pg_ctl'), '-D', datadir, '-m', 'immediate', 'stop']),
                       check=False)
        shutil.rmtree(args.dir, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
