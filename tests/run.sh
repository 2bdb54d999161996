#!/usr/bin/env bash
# The test command of the README, and what CI runs (.ci/run). On a fresh Debian machine (as root)
# it installs the MariaDB, PostgreSQL and Redis servers, Debian's chromium and chromium-driver (the
# dashboard's browser tests drive them) and python3-venv when the Python needs it, then
# creates a FRESH virtual environment in a temporary folder, installs the project with its test
# extras there at the newest versions the package index offers (as a newcomer gets them), runs the
# whole suite with it, and removes the environment. Extra arguments go to pytest, e.g.
# `bash tests/run.sh -x -k storage`. The servers themselves are throwaway instances started by
# tests/dbservers.py (Redis: tests/brokers.py). PYTHON=python3.12 picks the interpreter the venv is made from.
# The oldest supported versions are tested by `tox -e oldest` (see tox.ini), not here.
set -euo pipefail
cd "$(dirname "$0")/.."

have_mariadb() {
    command -v mariadbd >/dev/null || command -v mysqld >/dev/null \
        || [ -x /usr/sbin/mariadbd ] || [ -x /usr/sbin/mysqld ]
}
# The dashboard's browser tests drive Debian's chromium through Debian's chromium-driver.
have_chromium() {
    command -v chromium >/dev/null && command -v chromedriver >/dev/null
}
have_redis() {
    command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ]
}
have_postgresql() {
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null \
        || { command -v initdb >/dev/null && command -v postgres >/dev/null; }
}

python=${PYTHON:-python3}
venv=$(mktemp -d "${TMPDIR:-/tmp}/flask_ampalibe-tests.XXXXXX")
trap 'rm -rf "$venv"' EXIT

# Debian's own Python has no ensurepip (so no `python3 -m venv`) until python3-venv is installed;
# a pyenv or python.org Python has it.
make_venv() { "$python" -m venv --clear "$venv" >/dev/null 2>&1; }

missing=()
have_mariadb || missing+=(mariadb-server)
have_postgresql || missing+=(postgresql)
have_chromium || missing+=(chromium chromium-driver)
have_redis || missing+=(redis-server)
if ! command -v "$python" >/dev/null; then
    missing+=(python3 python3-venv)
elif ! make_venv; then
    missing+=(python3-venv)
elif [ -x /usr/bin/python3 ] && ! /usr/bin/python3 -c 'import ensurepip' 2>/dev/null; then
    missing+=(python3-venv)  # tests/test_quickstart.py runs the README's quick start with it
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
        trap 'rm -f /usr/sbin/policy-rc.d; rm -rf "$venv"' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 -q update
    apt-get -o DPkg::Lock::Timeout=300 -q install -y --no-install-recommends "${missing[@]}"
    if [ -n "$policy_created" ]; then rm -f /usr/sbin/policy-rc.d; trap 'rm -rf "$venv"' EXIT; fi
    "$python" -m venv --clear "$venv"  # again: a failed attempt leaves a half-made venv
fi

pip=("$venv/bin/python" -m pip --disable-pip-version-check)
# --upgrade (eager): the newest release of every dependency, never an older one already around.
"${pip[@]}" install -q --upgrade pip
"${pip[@]}" install -q --upgrade --upgrade-strategy eager -e '.[test]'
echo "tests/run.sh: $("$venv/bin/python" --version) in a fresh venv; $("${pip[@]}" list --format=freeze \
    | grep -iE '^(flask|werkzeug|click|sqlalchemy|alembic|gunicorn|pytest|pymysql|psycopg|prometheus.client|selenium)==' | tr '\n' ' ')"

export PATH="$venv/bin:$PATH" VIRTUAL_ENV="$venv"
status=0
"$venv/bin/python" -m pytest -p no:cacheprovider "$@" || status=$?
exit "$status"
