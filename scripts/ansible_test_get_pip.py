"""Stand-in for the pip bootstrap script that ansible-test downloads from its CI file host.

That host is not reachable from our machines, so scripts/setup.sh places this file where ansible-test caches
the download. It does what the original does for ansible-test: put pip (and the packages asked for) into the
fresh, pip-less virtual environment of a sanity test, here from Python's bundled ensurepip and the package index.
"""
import subprocess
import sys

args = [arg for arg in sys.argv[1:] if arg not in ('--no-setuptools', '--no-wheel')]
subprocess.check_call([sys.executable, '-m', 'ensurepip', '--default-pip'], stdout=subprocess.DEVNULL)
subprocess.check_call([sys.executable, '-m', 'pip', 'install', '--quiet', '--disable-pip-version-check'] + args)
