# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The table the pgdts playbooks print: one line per migration task, read at a glance."""

from __future__ import annotations

DOCUMENTATION = r'''
name: task_table
author: pgdts developers (@pgdts)
version_added: 0.1.0
short_description: Format migration tasks as a plain-text table
description:
  - Turns a list of task records into the lines of a table with aligned columns, as the playbooks
    C(pgdts.migration.status) and every other pgdts playbook print at their end.
  - With O(kind=status) the columns are task, stage, percent copied, rows, lag, slot WAL, worker and last error.
    Slot WAL is what each database's slot holds back on the source (C(retained_wal_bytes)), its C(wal_status) and,
    when the source limits it (C(max_slot_wal_keep_size)), C(safe_wal_size); the database is named when the task
    has more than one.
  - With O(kind=summary) the columns are task, result, stage, percent copied, rows, lag and detail; the failure of a
    task that failed is its detail.
  - Values too long for O(max_width) are cut with an ellipsis; the full texts stay in the records.
positional: _input
options:
  _input:
    description:
      - A list of records, one per task. Keys used, all optional except C(task)
      - C(task) the task name; C(report) the task record returned by M(pgdts.migration.pg_dts_info) or
        M(pgdts.migration.pg_dts_migrate) (stage, totals, lag, error, worker_alive);
        C(result) (for example V(ok) or V(failed)); C(detail) a text; C(error) a text that overrides the error of
        C(report).
    type: list
    elements: dict
    required: true
  kind:
    description: Which columns to show.
    type: str
    choices: [status, summary]
    default: status
  max_width:
    description: Longest text shown in one cell of the last column.
    type: int
    default: 100
'''

EXAMPLES = r'''
- name: Print the status table
  ansible.builtin.debug:
    msg: "{{ records | pgdts.migration.task_table }}"
  vars:
    records:
      - task: shop_move
        report: "{{ info.task }}"
'''

RETURN = r'''
_value:
  description: The lines of the table, a header line first.
  type: list
  elements: str
'''

from ansible.errors import AnsibleFilterError

STATUS_COLUMNS = ('TASK', 'STAGE', 'COPIED', 'ROWS', 'LAG', 'SLOT WAL', 'WORKER', 'LAST ERROR')
SUMMARY_COLUMNS = ('TASK', 'RESULT', 'STAGE', 'COPIED', 'ROWS', 'LAG', 'DETAIL')
RIGHT_ALIGNED = ('COPIED', 'ROWS')
# Lag means something only while the destination follows the source.
SYNC_STAGES = ('sync', 'finishing')


def human_bytes(value):
    """1536 -> '1.5 kB' (powers of 1024, as PostgreSQL's pg_size_pretty)."""
    if value is None:
        return '-'
    value = float(value)
    for unit in ('B', 'kB', 'MB', 'GB', 'TB'):
        if abs(value) < 1024 or unit == 'TB':
            return '%d %s' % (value, unit) if unit == 'B' else '%.1f %s' % (value, unit)
        value /= 1024.0
    return '-'  # pragma: no cover


def lag_text(report):
    if report.get('stage') not in SYNC_STAGES:
        return '-'
    lag_bytes = report.get('lag_bytes')
    lag_seconds = report.get('lag_seconds')
    if lag_bytes is None and lag_seconds is None:
        return '-'
    parts = [human_bytes(lag_bytes)]
    if lag_seconds is not None:
        parts.append('%.1f s' % float(lag_seconds))
    return ' / '.join(parts)


def slot_wal_text(report):
    """'12.0 MB reserved' per database slot (with 'safe 1.0 GB' when the source limits it), '-' when not read."""
    databases = [d for d in report.get('databases') or [] if isinstance(d, dict)]
    parts = []
    for database in databases:
        if database.get('retained_wal_bytes') is None and not database.get('wal_status'):
            continue
        words = [human_bytes(database.get('retained_wal_bytes'))]
        if database.get('wal_status'):
            words.append(str(database['wal_status']))
        if database.get('safe_wal_size') is not None:
            words.append('safe ' + human_bytes(database['safe_wal_size']))
        text = ' '.join(words)
        parts.append('%s: %s' % (database.get('database'), text) if len(databases) > 1 else text)
    return '; '.join(parts) or '-'


def error_text(report):
    error = report.get('error')
    if not error:
        return ''
    if isinstance(error, dict):
        message = error.get('message') or ''
        stage = error.get('stage')
        return '%s: %s' % (stage, message) if stage else message
    return str(error)


def one_line(text, width):
    text = ' '.join(str(text).split())
    if width and len(text) > width:
        return text[:max(1, width - 3)] + '...'
    return text


def cells(record, kind, max_width):
    if not isinstance(record, dict) or not record.get('task'):
        raise AnsibleFilterError('task_table: every record needs a "task" key, got %r' % (record,))
    report = record.get('report') or {}
    totals = report.get('totals') or {}
    stage = report.get('stage') or record.get('stage') or 'not started'
    percent = totals.get('percent')
    copied = '%.1f%%' % float(percent) if percent is not None and report else '-'
    rows = '{:,}'.format(int(totals['rows'])) if totals.get('rows') is not None else '-'
    error = record.get('error') or error_text(report)
    if kind == 'status':
        alive = report.get('worker_alive')
        worker = '-' if alive is None else ('alive' if alive else 'stopped')
        return [record['task'], stage, copied, rows, lag_text(report), slot_wal_text(report), worker,
                one_line(error or '-', max_width)]
    detail = record.get('detail') or error or '-'
    return [record['task'], record.get('result') or '-', stage, copied, rows, lag_text(report),
            one_line(detail, max_width)]


def task_table(records, kind='status', max_width=100):
    """Lines of an aligned table, header first."""
    if kind not in ('status', 'summary'):
        raise AnsibleFilterError('task_table: kind must be status or summary, got %r' % (kind,))
    if records is None:
        records = []
    if not isinstance(records, (list, tuple)):
        raise AnsibleFilterError('task_table: expected a list of records, got %s' % type(records).__name__)
    columns = STATUS_COLUMNS if kind == 'status' else SUMMARY_COLUMNS
    body = [cells(record, kind, int(max_width)) for record in records]
    widths = [max([len(columns[i])] + [len(row[i]) for row in body]) for i in range(len(columns))]

    def line(values):
        out = []
        for i, value in enumerate(values):
            if i == len(values) - 1:
                out.append(value)
            elif columns[i] in RIGHT_ALIGNED:
                out.append(value.rjust(widths[i]))
            else:
                out.append(value.ljust(widths[i]))
        return '  '.join(out).rstrip()

    return [line(columns)] + [line(row) for row in body]


class FilterModule:
    def filters(self):
        return {'task_table': task_table}
