# Shared by scripts/setup and scripts/test. Source it; do not run it.
# shellcheck shell=bash

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CJ_VENV:-$REPO_ROOT/.venv}"
PY_REQUIREMENTS="$REPO_ROOT/tests/requirements-dev.txt"
# The venv scripts/test recreates on every run and installs the package into (`pip install .`):
# the tests import that installed copy, never the source tree. Always under target/.
TEST_VENV="$REPO_ROOT/target/test-venv"

say() { printf '==> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Run a command as root: directly when we are root, through sudo otherwise.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root for: $* (run as root or install sudo)"
    fi
}

# Make cargo visible when rustup installed it but this shell has not sourced its env.
ensure_cargo_on_path() {
    if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
}

# The PostgreSQL cluster version, e.g. 15 (empty when PostgreSQL is not installed).
pg_version() {
    if [ -d /etc/postgresql ]; then
        # shellcheck disable=SC2012
        ls /etc/postgresql | sort -V | tail -n 1
    fi
}

pg_is_running() {
    command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432
}

# Start the local PostgreSQL cluster if it is installed and not running.
ensure_postgres_running() {
    if pg_is_running; then
        return 0
    fi
    local ver
    ver="$(pg_version)"
    if [ -z "$ver" ]; then
        die "PostgreSQL is not installed: run scripts/setup first"
    fi
    say "starting PostgreSQL $ver"
    if command -v pg_ctlcluster >/dev/null 2>&1; then
        as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start ||
            as_root service postgresql start
    else
        as_root service postgresql start
    fi
    local _
    for _ in $(seq 1 30); do
        pg_is_running && return 0
        sleep 1
    done
    die "PostgreSQL did not come up on 127.0.0.1:5432 (see /var/log/postgresql/)"
}

# Make sure the current OS user has a PostgreSQL superuser role (the tests create and drop a
# database per test, connecting as that user over TCP).
ensure_pg_role() {
    local user
    user="$(id -un)"
    if psql -h 127.0.0.1 -U "$user" -d postgres -tAc 'SELECT 1' >/dev/null 2>&1 ||
        psql -h /var/run/postgresql -U "$user" -d postgres -tAc 'SELECT 1' >/dev/null 2>&1; then
        return 0
    fi
    say "creating PostgreSQL superuser role '$user'"
    local sql="DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$user') THEN CREATE ROLE \"$user\" LOGIN SUPERUSER; END IF; END \$\$;"
    if [ "$(id -u)" -eq 0 ]; then
        su postgres -s /bin/sh -c "psql -q -d postgres -c \"$sql\"" ||
            die "could not create role $user"
    else
        sudo -u postgres psql -q -d postgres -c "$sql" || die "could not create role $user"
    fi
    if ! psql -h 127.0.0.1 -U "$user" -d postgres -tAc 'SELECT 1' >/dev/null 2>&1 &&
        ! psql -h /var/run/postgresql -U "$user" -d postgres -tAc 'SELECT 1' >/dev/null 2>&1; then
        warn "role '$user' exists but neither a TCP nor a socket login as '$user' works."
        warn "The tests need one: allow it in pg_hba.conf, or set CJ_TEST_PG_ADMIN_URL to a"
        warn "URL with a password, e.g. postgresql://$user:secret@127.0.0.1:5432/postgres"
    fi
}

# Point the tests at PostgreSQL as the current user: over TCP when that login works, else over
# the local socket (a fresh Debian install allows socket "peer" logins but asks for a password
# on TCP). Keeps a CJ_TEST_PG_ADMIN_URL that is already set.
export_pg_admin_url() {
    [ -n "${CJ_TEST_PG_ADMIN_URL:-}" ] && return 0
    local user socket_dir=/var/run/postgresql
    user="$(id -un)"
    if psql -h 127.0.0.1 -U "$user" -d postgres -tAc 'SELECT 1' >/dev/null 2>&1; then
        export CJ_TEST_PG_ADMIN_URL="postgresql://$user@127.0.0.1:5432/postgres"
    elif psql -h "$socket_dir" -U "$user" -d postgres -tAc 'SELECT 1' >/dev/null 2>&1; then
        export CJ_TEST_PG_ADMIN_URL="postgresql://$user@localhost/postgres?host=$socket_dir"
        say "PostgreSQL: using the local socket ($socket_dir) as '$user'"
    fi
}

# Create the venv and install the pinned Python packages; reinstall only when the requirement
# files changed.
ensure_venv() {
    local python="${PYTHON:-python3}"
    command -v "$python" >/dev/null 2>&1 || die "$python not found: run scripts/setup first"
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating the Python venv in $VENV"
        "$python" -m venv "$VENV" ||
            die "could not create a venv (on Debian/Ubuntu: apt-get install python3-venv)"
    fi
    local stamp="$VENV/.requirements.sha256" want have=""
    want="$(cat "$PY_REQUIREMENTS" "$REPO_ROOT/tests/interop/requirements.txt" | sha256sum | cut -d' ' -f1)"
    [ -f "$stamp" ] && have="$(cat "$stamp")"
    if [ "$want" != "$have" ]; then
        say "installing pinned Python packages (celery==5.7.0, …) into $VENV"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$PY_REQUIREMENTS"
        echo "$want" >"$stamp"
    fi
}

# Where install_test_venv leaves the package's wheel, for every venv that needs it.
TEST_WHEEL_DIR="$REPO_ROOT/target/test-wheel"
# The Celery 5.3 worker venv of the guard's tests (tests/celery53/requirements.txt).
CELERY53_VENV="$REPO_ROOT/target/test-venv-celery53"

# Make `venv` a new, empty venv; only ever a directory under target/.
recreate_venv() {
    local python="${PYTHON:-python3}" venv="${1:?recreate_venv needs a directory}"
    case "$venv" in
    "${REPO_ROOT:?}"/target/?*) ;;
    *) die "refusing to recreate $venv: test venvs live under $REPO_ROOT/target" ;;
    esac
    command -v "$python" >/dev/null 2>&1 || die "$python not found: run scripts/setup first"
    rm -rf -- "${venv:?}"
    "$python" -m venv "${venv:?}" ||
        die "could not create a venv (on Debian/Ubuntu: apt-get install python3-venv)"
}

# Recreate $TEST_VENV from nothing, install the pinned test packages into it (maturin among them),
# then build the repository's Python package once as a wheel (maturin, dev profile, into the
# workspace's target directory, so it reuses what `cargo build` already compiled) and install it:
# the tests import that installed copy, never the source tree.
install_test_venv() {
    local venv="${TEST_VENV:?}" wheels="${TEST_WHEEL_DIR:?}"
    recreate_venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "${PY_REQUIREMENTS:?}"
    rm -rf -- "${wheels:?}"
    # No build isolation: maturin comes pinned from the requirements, not fetched per run (its
    # build hook runs the `maturin` of PATH, so the venv's bin goes first).
    PATH="$venv/bin:$PATH" MATURIN_PEP517_ARGS="--profile dev" "$venv/bin/python" -m pip wheel \
        --quiet --disable-pip-version-check --no-build-isolation --no-deps -w "$wheels" "${REPO_ROOT:?}"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$wheels"/celery_janitor-*.whl
}

# Recreate the Celery 5.3 venv with the wheel install_test_venv built (run that first).
install_celery53_venv() {
    local venv="${CELERY53_VENV:?}" wheels="${TEST_WHEEL_DIR:?}"
    recreate_venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "${REPO_ROOT:?}/tests/celery53/requirements.txt" "$wheels"/celery_janitor-*.whl
}
