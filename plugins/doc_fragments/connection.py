# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connection options shared by every pgdts module, documented once (mirrored by ansible_common.SERVER_OPTIONS)."""

from __future__ import annotations


class ModuleDocFragment:
    """Fragments: C(source), C(destination), and C(attributes)."""

    SOURCE = r'''
options:
  source:
    description:
      - How to reach the source PostgreSQL server.
      - Each key falls back to the matching libpq environment variable when it is not given.
    type: dict
    default: {}

    suboptions:
      host:
        description:
          - Host name, IP address or Unix socket directory of the server.
          - Falls back to the C(PGHOST) environment variable, then to the libpq default.
        type: str
      port:
        description:
          - Port of the server.
          - Falls back to C(PGPORT), then to C(5432).
        type: int
      user:
        description:
          - Role to log in as.
          - Falls back to C(PGUSER), then to the libpq default (the operating system user).
        type: str
      password:
        description:
          - Password of O(source.user).
          - Falls back to C(PGPASSWORD); a C(~/.pgpass) file is honoured by libpq as usual.
          - Never logged, never returned, never passed on a command line.
        type: str
      dbname:
        description:
          - Maintenance database to connect to for server-wide work.
          - Falls back to C(PGDATABASE), then to C(postgres).
        type: str
      sslmode:
        description:
          - libpq SSL mode.
          - Falls back to C(PGSSLMODE), then to C(prefer).
        type: str
        choices: [disable, allow, prefer, require, verify-ca, verify-full]
      sslrootcert:
        description:
          - File with the certificate authorities that sign the server certificate.
          - Falls back to C(PGSSLROOTCERT).
        type: path
      connect_timeout:
        description:
          - Seconds to wait for a connection before giving up.
          - Falls back to C(PGCONNECT_TIMEOUT), then to C(10).
        type: int
'''

    DESTINATION = r'''
options:
  destination:
    description:
      - How to reach the destination PostgreSQL server.
      - Each key falls back to the matching libpq environment variable when it is not given.
    type: dict
    default: {}

    suboptions:
      host:
        description:
          - Host name, IP address or Unix socket directory of the server.
          - Falls back to the C(PGHOST) environment variable, then to the libpq default.
        type: str
      port:
        description:
          - Port of the server.
          - Falls back to C(PGPORT), then to C(5432).
        type: int
      user:
        description:
          - Role to log in as.
          - Falls back to C(PGUSER), then to the libpq default (the operating system user).
        type: str
      password:
        description:
          - Password of O(destination.user).
          - Falls back to C(PGPASSWORD); a C(~/.pgpass) file is honoured by libpq as usual.
          - Never logged, never returned, never passed on a command line.
        type: str
      dbname:
        description:
          - Maintenance database to connect to for server-wide work.
          - Falls back to C(PGDATABASE), then to C(postgres).
        type: str
      sslmode:
        description:
          - libpq SSL mode.
          - Falls back to C(PGSSLMODE), then to C(prefer).
        type: str
        choices: [disable, allow, prefer, require, verify-ca, verify-full]
      sslrootcert:
        description:
          - File with the certificate authorities that sign the server certificate.
          - Falls back to C(PGSSLROOTCERT).
        type: path
      connect_timeout:
        description:
          - Seconds to wait for a connection before giving up.
          - Falls back to C(PGCONNECT_TIMEOUT), then to C(10).
        type: int
'''

    ATTRIBUTES = r'''
options: {}
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
requirements:
  - psycopg >= 3.1 (psycopg 3) on the host that runs the module.
notes:
  - Passwords are read from the options or the environment and never appear in results, logs or command lines.
'''
