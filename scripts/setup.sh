#!/usr/bin/env bash
# One set-up path for a fresh Debian 12 machine (run as root): the Debian packages the project needs and a
# virtualenv with the pinned Python dependencies. Quick when nothing changed since the last run.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(postgresql-15 postgresql-client-15 postgresql-15-wal2json postgresql-contrib pgcopydb rsync shellcheck)

missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The Debian package creates and starts a default cluster; the project never uses it.
  if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q '^15 main'; then
    pg_ctlcluster 15 main stop >/dev/null 2>&1 || true
  fi
fi

PYTHON=${PYTHON:-python3}
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: creating .venv with requirements.txt"
  "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements.txt
  echo "$want" > "$stamp"
fi


# ansible-test bootstraps pip in its sanity virtualenvs with a script it downloads from a host we cannot reach;
# give it our stand-in under the cache name it looks for.
pip_version=$(.venv/bin/python - <<'PY'
from ansible_test._internal.python_requirements import get_venv_packages
from ansible_test._internal.host_configs import NativePythonConfig
print(get_venv_packages(NativePythonConfig(version='3.11', path='/usr/bin/python3'))['pip'])
PY
)
cache="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
if ! cmp -s scripts/ansible_test_get_pip.py "$cache" 2>/dev/null; then
  mkdir -p "$(dirname "$cache")" && cp scripts/ansible_test_get_pip.py "$cache"
fi
echo "setup: ready"
