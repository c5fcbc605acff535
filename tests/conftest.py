"""Shared pytest fixtures: throw-away PostgreSQL clusters and a real ansible-playbook runner."""

from __future__ import annotations

import shutil
import tempfile

import pytest

from tests.harness.collection import link_collection

link_collection()

from tests.harness.cluster import PgCluster, make_base_dir  # noqa: E402  (after the path set-up)
from tests.harness.ansible_run import AnsibleRunner, build_and_install  # noqa: E402


@pytest.fixture(scope='session')
def cluster_base_dir():
    base = make_base_dir()
    yield base
    shutil.rmtree(base, ignore_errors=True)


class ClusterFactory:
    def __init__(self, base_dir):
        self.base_dir = base_dir
        self.clusters = []
        self.counter = 0

    def __call__(self, name=None, settings=None, start=True, major=None):
        self.counter += 1
        cluster = PgCluster(self.base_dir, '%s-%d' % (name or 'pg', self.counter), settings=settings, major=major)
        self.clusters.append(cluster)
        cluster.init()
        if start:
            cluster.start()
        return cluster

    def destroy_all(self):
        for cluster in self.clusters:
            cluster.destroy()
        self.clusters = []


@pytest.fixture
def pg_factory(cluster_base_dir):
    """Create clusters on demand inside a test; all of them are destroyed when the test ends."""
    factory = ClusterFactory(cluster_base_dir)
    yield factory
    factory.destroy_all()


@pytest.fixture(scope='module')
def module_pg_factory(cluster_base_dir):
    factory = ClusterFactory(cluster_base_dir)
    yield factory
    factory.destroy_all()


@pytest.fixture(scope='module')
def source_pg(module_pg_factory):
    """A logical-ready source shared by the tests of one module."""
    return module_pg_factory('src')


@pytest.fixture(scope='module')
def dest_pg(module_pg_factory):
    return module_pg_factory('dst')


@pytest.fixture(scope='session')
def installed_collection():
    workdir = tempfile.mkdtemp(prefix='pgdts-ansible-')
    coll_dir, tarball = build_and_install(workdir)
    yield {'path': coll_dir, 'tarball': tarball, 'workdir': workdir}
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def ansible(installed_collection, tmp_path):
    """Run real ansible-playbook against localhost with the collection built from the working tree."""
    return AnsibleRunner(installed_collection['path'], str(tmp_path))
