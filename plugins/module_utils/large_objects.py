# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Large objects of a whole-database task: copied with their oids (under the copy's snapshot), and brought up to date
at finish under the write fence, since logical decoding does not carry them.

One pass does both: objects the destination lacks are created, objects it has that the source no longer has are
unlinked (only in a database the task created), objects whose data differs (md5 of the data, compared first) are
written again, and with migrate_roles the owner and privileges are set as on the source."""

from __future__ import annotations

from ansible_collections.pgdts.migration.plugins.module_utils.connection import WRITER_OPTIONS, connect, query_all, sql

CHUNK_BYTES = 1 << 20
# a destination transaction is committed after this much data or this many objects
COMMIT_BYTES = 64 << 20
COMMIT_OBJECTS = 1000
HASH_BATCH = 500

_META = """
SELECT m.oid::bigint, pg_catalog.pg_get_userbyid(m.lomowner), m.lomacl::text
  FROM pg_catalog.pg_largeobject_metadata m ORDER BY 1
"""

# md5 of the data of each object (lo_get reads one object whole: up to 1 GB each)
_HASHES = """
SELECT o::bigint, pg_catalog.md5(pg_catalog.lo_get(o::oid)) FROM unnest(%s::bigint[]) AS o
"""

_GRANTS = """
SELECT m.oid::bigint, CASE WHEN a.grantee = 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(a.grantee) END,
       a.privilege_type, a.is_grantable
  FROM pg_catalog.pg_largeobject_metadata m, LATERAL pg_catalog.aclexplode(m.lomacl) a
 WHERE m.oid = ANY(%s::oid[]) AND a.grantee <> m.lomowner
 ORDER BY 1, 2, 3
"""


class _StopRequested(Exception):
    """The caller's stop event was set: what is written so far is committed (a later pass completes it)."""


def count(conn):
    return query_all(conn, 'SELECT count(*) FROM pg_catalog.pg_largeobject_metadata')[0][0]


def _hashes(conn, oids):
    """{oid: md5 of the data}. Objects are hashed whole, HASH_BATCH per query; an object too large to be read whole
    (over 1 GB) is hashed in chunks instead (its md5 then differs from a whole md5, but both sides are hashed alike:
    each side falls back for the same objects, as they have the same size when they are equal)."""
    import psycopg
    found = {}
    oids = list(oids)
    for start in range(0, len(oids), HASH_BATCH):
        batch = oids[start:start + HASH_BATCH]
        try:
            with conn.transaction():
                found.update(dict(query_all(conn, _HASHES, (batch,))))
        except psycopg.Error:
            for oid in batch:
                try:
                    with conn.transaction():
                        found.update(dict(query_all(conn, _HASHES, ([oid],))))
                except psycopg.Error:
                    found[oid] = _chunked_hash(conn, oid)
    return found


def _chunked_hash(conn, oid):
    """'size:md5 of the md5s of CHUNK_BYTES chunks' of one object (read through a descriptor of the transaction)."""
    fd = query_all(conn, 'SELECT pg_catalog.lo_open(%s::oid, 262144)', (oid,))[0][0]     # INV_READ
    size = query_all(conn, 'SELECT pg_catalog.lo_lseek64(%s, 0, 2)', (fd,))[0][0]
    conn.execute('SELECT pg_catalog.lo_close(%s)', (fd,))
    digest = query_all(conn, """
        SELECT pg_catalog.md5(string_agg(pg_catalog.md5(pg_catalog.lo_get(%s::oid, g * %s, %s)), '' ORDER BY g))
          FROM generate_series(0, (%s - 1) / %s) AS g""", (oid, CHUNK_BYTES, CHUNK_BYTES, size, CHUNK_BYTES))[0][0]
    return '%d:%s' % (size, digest)


def _grants(conn, oids):
    grants = {}
    for oid, grantee, privilege, grantable in query_all(conn, _GRANTS, (list(oids),)):
        grants.setdefault(oid, []).append((grantee, privilege, grantable))
    return grants


def sync_large_objects(source, destination, dbname, snapshot=None, keep_owners=False, drop_extra=True,
                       stop_event=None):
    """Make the destination database's large objects those of the source (read under `snapshot` when given, else
    in one repeatable-read transaction). Returns {'source', 'created', 'rewritten', 'dropped', 'privileges_set',
    'kept'} (kept: objects only the destination has, left because the database was not created by the task)."""
    summary = {'source': 0, 'created': 0, 'rewritten': 0, 'dropped': 0, 'privileges_set': 0, 'kept': 0}
    with connect(source, dbname, autocommit=False, application_name='pgdts-large-objects') as src, \
            connect(destination, dbname, autocommit=False, application_name='pgdts-large-objects',
                    options=WRITER_OPTIONS) as dst:
        src.execute('SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY')
        if snapshot:
            src.execute(sql.SQL('SET TRANSACTION SNAPSHOT {}').format(sql.Literal(snapshot)))
        src.execute('SET LOCAL statement_timeout = 0')
        source_meta = {r[0]: (r[1], r[2]) for r in query_all(src, _META)}
        summary['source'] = len(source_meta)
        dest_meta = {r[0]: (r[1], r[2]) for r in query_all(dst, _META)}
        common = sorted(set(source_meta) & set(dest_meta))
        changed = set()
        if common:
            theirs, ours = _hashes(src, common), _hashes(dst, common)
            changed = {oid for oid in common if theirs.get(oid) != ours.get(oid)}
        writer = _Writer(src, dst, stop_event)
        try:
            _write(writer, summary, source_meta, dest_meta, changed, drop_extra)
        except _StopRequested:
            summary['stopped'] = True
            return summary
        if keep_owners and source_meta:
            fresh = changed | (set(source_meta) - set(dest_meta))
            dest_meta = {r[0]: (r[1], r[2]) for r in query_all(dst, _META)}
            differ = sorted(oid for oid, meta in source_meta.items() if dest_meta.get(oid) != meta)
            if differ:
                set_privileges(src, dst, differ, source_meta, dest_meta)
                summary['privileges_set'] = len([oid for oid in differ if oid not in fresh])
            dst.commit()
        src.rollback()
    return summary


def _write(writer, summary, source_meta, dest_meta, changed, drop_extra):
    """Unlink what the source no longer has, write again what differs, create what is missing; commit."""
    extra = sorted(set(dest_meta) - set(source_meta))
    if drop_extra:
        for oid in extra:
            writer.unlink(oid)
        summary['dropped'] = len(extra)
    else:
        summary['kept'] = len(extra)
    for oid in sorted(changed):
        writer.unlink(oid)
        writer.copy(oid)
    summary['rewritten'] = len(changed)
    missing = sorted(set(source_meta) - set(dest_meta))
    for oid in missing:
        writer.copy(oid)
    summary['created'] = len(missing)
    writer.commit()


class _Writer:
    """Writes objects to the destination in chunks, committing every COMMIT_BYTES / COMMIT_OBJECTS."""

    def __init__(self, src, dst, stop_event):
        self.src = src
        self.dst = dst
        self.stop_event = stop_event
        self.bytes = 0
        self.objects = 0

    def _maybe_commit(self):
        if self.bytes >= COMMIT_BYTES or self.objects >= COMMIT_OBJECTS:
            self.commit()
        if self.stop_event is not None and self.stop_event.is_set():
            self.commit()
            raise _StopRequested()

    def commit(self):
        self.dst.commit()
        self.bytes = self.objects = 0

    def unlink(self, oid):
        self.dst.execute('SELECT pg_catalog.lo_unlink(%s::oid)', (oid,))
        self.objects += 1
        self._maybe_commit()

    def copy(self, oid):
        self.dst.execute('SELECT pg_catalog.lo_create(%s::oid)', (oid,))
        offset = 0
        while True:
            data = self.src.execute('SELECT pg_catalog.lo_get(%s::oid, %s, %s)', (oid, offset, CHUNK_BYTES)).fetchone()[0]
            if data:
                self.dst.execute('SELECT pg_catalog.lo_put(%s::oid, %s, %s::bytea)', (oid, offset, bytes(data)))
                offset += len(data)
                self.bytes += len(data)
            if len(data or b'') < CHUNK_BYTES:
                break
            self._maybe_commit()
        self.objects += 1
        self._maybe_commit()


def set_privileges(src, dst, oids, source_meta, dest_meta):
    """Owner and privileges of these objects as on the source, for the roles the destination has (with
    migrate_roles they all exist there)."""
    roles = {r[0] for r in query_all(dst, 'SELECT rolname FROM pg_catalog.pg_roles')}
    wanted = _grants(src, oids)
    present = _grants(dst, oids)
    for oid in oids:
        owner = source_meta[oid][0]
        if owner in roles and (dest_meta.get(oid) or (None,))[0] != owner:
            dst.execute(sql.SQL('ALTER LARGE OBJECT {} OWNER TO {}').format(sql.Literal(oid), sql.Identifier(owner)))
        grantees = {g for g, _p, _o in present.get(oid, []) if g is not None and g != owner}
        revoke = [sql.SQL('PUBLIC')] + [sql.Identifier(g) for g in sorted(grantees)]
        dst.execute(sql.SQL('REVOKE ALL ON LARGE OBJECT {} FROM {}').format(sql.Literal(oid), sql.SQL(', ').join(revoke)))
        for grantee, privilege, grantable in wanted.get(oid, []):
            if grantee is not None and grantee not in roles:
                continue
            dst.execute(sql.SQL('GRANT {} ON LARGE OBJECT {} TO {}{}').format(
                sql.SQL({'SELECT': 'SELECT', 'UPDATE': 'UPDATE'}[privilege]), sql.Literal(oid),
                sql.SQL('PUBLIC') if grantee is None else sql.Identifier(grantee),
                sql.SQL(' WITH GRANT OPTION' if grantable else '')))


def describe(summary):
    text = 'large objects: %d on the source, %d created, %d written again, %d dropped' % (
        summary['source'], summary['created'], summary['rewritten'], summary['dropped'])
    if summary.get('privileges_set'):
        text += ', owner or privileges set on %d' % summary['privileges_set']
    if summary.get('kept'):
        text += ', %d only on the destination kept (the database was not created by the task)' % summary['kept']
    return text
