# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Files the engine writes: one way to replace a file atomically."""

from __future__ import annotations

import os
import tempfile


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path, data, mode=0o600, uid=None, gid=None, durable=False):
    """Write `data` (str or bytes) to a private temporary file next to `path`, set its mode (and owner, where the
    process may), then rename it over `path`. Readers see the old file or the new one, never a part; parallel
    writers each use their own temporary file. With `durable`, the data and the rename are fsynced."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix='.%s.' % os.path.basename(path), suffix='.pgdts-tmp', dir=directory)
    try:
        with os.fdopen(fd, 'wb') as handle:
            handle.write(data.encode('utf-8') if isinstance(data, str) else data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        if uid is not None and (os.geteuid() == 0 or uid == os.geteuid()):
            os.chown(tmp, uid, -1 if gid is None else gid)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(directory)
