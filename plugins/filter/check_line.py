# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One line of text for one pre-migration check item (as pg_dts_verify returns them)."""

from __future__ import annotations

DOCUMENTATION = r'''
name: check_line
author: pgdts developers (@pgdts)
version_added: 0.1.0
short_description: Format a pre-migration check item as one line
description:
  - "Turns one item of the RV(pgdts.migration.pg_dts_verify#module:checks) list into one line,
    C(<id> (<status>): <message> Hint: <hint>), the hint only when there is one."
positional: _input
options:
  _input:
    description: A check item with the keys C(id), C(status), C(message) and C(hint).
    type: dict
    required: true
  hint:
    description: Append the hint.
    type: bool
    default: true
'''

EXAMPLES = r'''
- name: Show the checks that did not pass
  ansible.builtin.debug:
    msg: "{{ result.checks | rejectattr('status', 'equalto', 'pass') | map('pgdts.migration.check_line') | list }}"
'''

RETURN = r'''
_value:
  description: The line.
  type: str
  sample: 'source.wal_level (failed): wal_level is replica, logical decoding needs logical Hint: ...'
'''

from ansible.errors import AnsibleFilterError


def check_line(item, hint=True):
    if not isinstance(item, dict):
        raise AnsibleFilterError('check_line: expected a check item (a dict), got %s' % type(item).__name__)
    line = '%s (%s): %s' % (item.get('id', '?'), item.get('status', '?'), ' '.join(str(item.get('message', '')).split()))
    if hint and item.get('hint'):
        line += ' Hint: %s' % ' '.join(str(item['hint']).split())
    return line


class FilterModule:
    def filters(self):
        return {'check_line': check_line}
