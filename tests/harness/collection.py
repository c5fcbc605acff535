"""Make `ansible_collections.pgdts.migration` importable from the working tree, for tests and benchmarks."""

from __future__ import annotations

import os
import shutil
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTION_ROOT = os.path.join(REPO, '.tmp', 'collection_root')


def link_collection():
    """Link the working tree as .tmp/collection_root/ansible_collections/pgdts/migration and put the collection root
    and the repository on sys.path (idempotent)."""
    target = os.path.join(COLLECTION_ROOT, 'ansible_collections', 'pgdts')
    os.makedirs(target, exist_ok=True)
    link = os.path.join(target, 'migration')
    if not os.path.islink(link):
        if os.path.exists(link):
            shutil.rmtree(link)
        os.symlink(REPO, link)
    for path in (REPO, COLLECTION_ROOT):
        if path not in sys.path:
            sys.path.insert(0, path)
