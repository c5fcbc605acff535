"""Build and install the collection from the working tree, and run real ansible-playbook against localhost."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tempfile

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.dirname(sys.executable)


def _tool(name):
    path = os.path.join(VENV_BIN, name)
    return path if os.path.exists(path) else name


def build_and_install(workdir):
    """`ansible-galaxy collection build` of the working tree, installed into `workdir/collections`."""
    build_dir = os.path.join(workdir, 'build')
    coll_dir = os.path.join(workdir, 'collections')
    os.makedirs(build_dir, exist_ok=True)
    subprocess.run([_tool('ansible-galaxy'), 'collection', 'build', REPO, '--output-path', build_dir, '--force'],
                   check=True, stdout=subprocess.DEVNULL)
    tarball = sorted(glob.glob(os.path.join(build_dir, 'pgdts-migration-*.tar.gz')))[-1]
    subprocess.run([_tool('ansible-galaxy'), 'collection', 'install', tarball, '-p', coll_dir, '--force'],
                   check=True, stdout=subprocess.DEVNULL)
    return coll_dir, tarball


class PlaybookRun:
    def __init__(self, rc, stdout, stderr, results):
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr
        self.results = results

    def task(self, name, host=None):
        """The last result of the task called `name` (optionally for one host)."""
        found = [r for r in self.results if r['task'] == name and (host is None or r['host'] == host)]
        if not found:
            raise AssertionError('no result for task %r; tasks: %s\n%s' % (
                name, [r['task'] for r in self.results], self.stdout[-3000:]))
        return found[-1]

    def changed_count(self):
        return sum(1 for r in self.results if r['status'] == 'changed')

    def failed(self):
        return [r for r in self.results if r['status'] == 'failed']

    def __repr__(self):
        return 'PlaybookRun(rc=%s, results=%d)' % (self.rc, len(self.results))


class AnsibleRunner:
    """Runs playbooks (given as Python data or as a path) against localhost with the installed collection."""

    def __init__(self, collections_path, workdir):
        self.collections_path = collections_path
        self.workdir = workdir
        self.inventory = os.path.join(workdir, 'inventory.yml')
        with open(self.inventory, 'w') as handle:
            yaml.safe_dump({'all': {'hosts': {'localhost': {
                'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable}}}}, handle)

    def env(self, extra=None):
        env = dict(os.environ)
        env.update({
            'ANSIBLE_COLLECTIONS_PATH': self.collections_path,
            'ANSIBLE_CALLBACK_PLUGINS': os.path.join(os.path.dirname(__file__), 'callback_plugins'),
            'ANSIBLE_CALLBACKS_ENABLED': 'pgdts_results',
            'ANSIBLE_HOST_KEY_CHECKING': 'False',
            'ANSIBLE_RETRY_FILES_ENABLED': 'False',
            'ANSIBLE_NOCOLOR': '1',
            'ANSIBLE_LOCALHOST_WARNING': 'False',
            'ANSIBLE_INVENTORY_UNPARSED_WARNING': 'False',
            'ANSIBLE_DEPRECATION_WARNINGS': 'False',
        })
        env['PATH'] = VENV_BIN + os.pathsep + env.get('PATH', '')
        env.update(extra or {})
        return env

    def run(self, playbook, extra_vars=None, check=False, diff=False, verbosity=0, inventory=None, env=None,
            timeout=900, args=()):
        if isinstance(playbook, (list, dict)):
            fd, path = tempfile.mkstemp(suffix='.yml', dir=self.workdir)
            with os.fdopen(fd, 'w') as handle:
                yaml.safe_dump(playbook if isinstance(playbook, list) else [playbook], handle, sort_keys=False)
        else:
            path = playbook
        fd, results_file = tempfile.mkstemp(suffix='.jsonl', dir=self.workdir)
        os.close(fd)
        cmd = [_tool('ansible-playbook'), '-i', inventory or self.inventory, path]
        if extra_vars:
            fd, vars_file = tempfile.mkstemp(suffix='.json', dir=self.workdir)
            with os.fdopen(fd, 'w') as handle:
                json.dump(extra_vars, handle)
            cmd += ['-e', '@' + vars_file]
        if check:
            cmd.append('--check')
        if diff:
            cmd.append('--diff')
        if verbosity:
            cmd.append('-' + 'v' * verbosity)
        cmd += list(args)
        run_env = self.env(env)
        run_env['PGDTS_RESULTS_FILE'] = results_file
        proc = subprocess.run(cmd, env=run_env, capture_output=True, text=True, timeout=timeout, check=False)
        with open(results_file) as handle:
            results = [json.loads(line) for line in handle if line.strip()]
        return PlaybookRun(proc.returncode, proc.stdout, proc.stderr, results)

    def module(self, module, args, check=False, diff=False, **kwargs):
        """Run one module as a one-task play; returns (status, result)."""
        play = {'name': 'pgdts test', 'hosts': 'localhost', 'gather_facts': False,
                'tasks': [{'name': 'module under test', module: args}]}
        run = self.run(play, check=check, diff=diff, **kwargs)
        record = run.task('module under test')
        return record['status'], record['result']
