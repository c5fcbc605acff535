# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for pg_dts_plugin_install: sends a controller-side src to the host, then runs the module there."""

from __future__ import annotations

import os

from ansible.errors import AnsibleActionFail
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):

    TRANSFERS_FILES = True

    def run(self, tmp=None, task_vars=None):
        if task_vars is None:
            task_vars = {}
        super().run(tmp, task_vars)
        del tmp  # tmp no longer has any effect

        source = self._task.args.get('src')
        remote_src = boolean(self._task.args.get('remote_src', False), strict=False)
        new_args = self._task.args.copy()
        try:
            if source and not remote_src:
                try:
                    local = self._loader.get_real_file(self._find_needle('files', os.path.expanduser(source)),
                                                       decrypt=True)
                except Exception as exc:  # pylint: disable=broad-except
                    raise AnsibleActionFail('src %s not found on the controller: %s' % (source, exc))
                self._make_tmp_path()
                # Keep the file name: the module tells archives from shared objects by their suffix.
                remote = self._connection._shell.join_path(self._connection._shell.tmpdir, os.path.basename(local))
                self._transfer_file(local, remote)
                self._fixup_perms2((self._connection._shell.tmpdir, remote))
                new_args['src'] = remote
                new_args['remote_src'] = True
            return self._execute_module(module_name='pgdts.migration.pg_dts_plugin_install', module_args=new_args,
                                        task_vars=task_vars)
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)
