#!/usr/bin/env bash
# The test entry point: installs what the suite needs and is missing (Debian packages, the
# `postgres` user), then runs the whole suite. Idempotent: with everything present it installs
# nothing and says nothing before the tests start. `.ci/run` calls exactly this.
#
#   bash scripts/test.sh              # set up what is missing, then cargo test --workspace --locked
#   bash scripts/test.sh --missing    # only list the Debian packages that are missing (empty: none)
#   bash scripts/test.sh -- ARGS...   # extra arguments for cargo test (e.g. -- -p switchyard)
set -euo pipefail
cd "$(dirname "$0")/.."

missing() {
  local m=()
  # Build prerequisites: a C toolchain, make and perl build the bundled librdkafka; OpenSSL
  # and zlib headers link it; pkg-config finds them.
  command -v cc >/dev/null 2>&1 || m+=(build-essential)
  command -v make >/dev/null 2>&1 || m+=(make)
  command -v perl >/dev/null 2>&1 || m+=(perl)
  command -v pkg-config >/dev/null 2>&1 || m+=(pkg-config)
  dpkg -s libssl-dev >/dev/null 2>&1 || m+=(libssl-dev)
  dpkg -s zlib1g-dev >/dev/null 2>&1 || m+=(zlib1g-dev)
  # Process tests signal their children with kill(1) and end browsers with pkill (procps);
  # PostgreSQL runs through runuser (util-linux).
  { [ -x /bin/kill ] || [ -x /usr/bin/kill ]; } && command -v pkill >/dev/null 2>&1 || m+=(procps)
  command -v runuser >/dev/null 2>&1 || m+=(util-linux)
  # The ledger tests start their own PostgreSQL from the system's server binaries.
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || m+=(postgresql)
  # The report and admin-page tests use Debian's headless Chromium and ChromeDriver.
  [ -x /usr/bin/chromium ] || m+=(chromium)
  [ -x /usr/bin/chromedriver ] || m+=(chromium-driver)
  echo "${m[@]+"${m[@]}"}"
}

if [ "${1:-}" = "--missing" ]; then
  missing
  exit 0
fi
[ "${1:-}" = "--" ] && shift

need="$(missing)"
if [ -n "$need" ]; then
  echo "installing what the tests need: $need"
  as_root=(env DEBIAN_FRONTEND=noninteractive)
  [ "$(id -u)" = 0 ] || as_root=(sudo env DEBIAN_FRONTEND=noninteractive)
  "${as_root[@]}" apt-get update -qq
  # shellcheck disable=SC2086
  "${as_root[@]}" apt-get install -y -qq --no-install-recommends $need >/dev/null
fi
# initdb refuses root: as root the tests run the server as the `postgres` user, which the
# package normally creates.
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

exec cargo test --workspace --locked "$@"
