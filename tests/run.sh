#!/usr/bin/env bash
# The test command of the README: on a fresh Debian machine (as root) it installs
# the MariaDB and PostgreSQL servers and the Python test dependencies, then runs
# the whole suite. Extra arguments go to pytest, e.g. `bash tests/run.sh -x -k storage`.
# The servers themselves are throwaway instances started by tests/dbservers.py.
set -euo pipefail
cd "$(dirname "$0")/.."

have_mariadb() {
    command -v mariadbd >/dev/null || command -v mysqld >/dev/null \
        || [ -x /usr/sbin/mariadbd ] || [ -x /usr/sbin/mysqld ]
}
have_postgresql() {
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null \
        || { command -v initdb >/dev/null && command -v postgres >/dev/null; }
}

python=${PYTHON:-python3}
# A Debian system Python refuses `pip install` (PEP 668): we use a venv then.
externally_managed() {
    "$python" -c 'import os, sys, sysconfig; sys.exit(not (sys.prefix == sys.base_prefix and
        os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))))'
}

missing=()
have_mariadb || missing+=(mariadb-server)
have_postgresql || missing+=(postgresql)
if ! command -v "$python" >/dev/null; then
    missing+=(python3 python3-venv)
elif externally_managed && ! "$python" -c 'import ensurepip' 2>/dev/null; then
    missing+=(python3-venv)
fi
if ((${#missing[@]})); then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        echo "tests/run.sh: please install ${missing[*]} (apt-get install ${missing[*]}), or run as root on Debian/Ubuntu." >&2
        exit 1
    fi
    # Keep the packages' own services from starting: the tests run private instances.
    policy_created=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        policy_created=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 -q update
    apt-get -o DPkg::Lock::Timeout=300 -q install -y --no-install-recommends "${missing[@]}"
    if [ -n "$policy_created" ]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
fi

if externally_managed; then
    [ -x .venv/bin/python ] || "$python" -m venv .venv
    python=.venv/bin/python
fi

"$python" -m pip install -q --disable-pip-version-check -e '.[test]'
exec "$python" -m pytest -p no:cacheprovider "$@"
