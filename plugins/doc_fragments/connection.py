# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connection options shared by every pgdts module, documented once: the C(source) and C(destination) fragments are
built from ansible_common.SERVER_OPTION_TABLE, the table the modules' argument spec is built from."""

from __future__ import annotations

import yaml

from ansible_collections.pgdts.migration.plugins.module_utils.ansible_common import server_option_doc


def _fragment(role):
    return yaml.safe_dump(server_option_doc(role), default_flow_style=False, sort_keys=False, width=1000)


class ModuleDocFragment:
    """Fragments: C(source), C(destination) (both set below, from the table), and C(attributes)."""

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


# Built from the table rather than written out: yaml.safe_dump writes them, ansible-doc renders them and
# validate-modules compares them with every module's argument spec.
ModuleDocFragment.SOURCE = _fragment('source')
ModuleDocFragment.DESTINATION = _fragment('destination')
