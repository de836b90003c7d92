#!/usr/bin/env bash
# Install what building and testing the extension needs (Debian 12,
# PostgreSQL 15 from Debian's packages; the other majors come in
# test/matrix.sh's chroots), then build with warnings as errors
# and install.  Run as root from anywhere in the checkout; idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "test/setup.sh: run as root (it installs packages)" >&2
    exit 1
fi

# server and build; TAP (pg_repack for the maintenance test); examples
# (libpq for C, psycopg for Python, PgBouncer for the pooling test,
# postgres_exporter, promtool and PyYAML for the monitoring example);
# valgrind for test/valgrind.sh; the Debian package's tools (test/deb.sh),
# zip tools (test/dist.sh) and debootstrap (test/matrix.sh)
packages=(postgresql-15 postgresql-server-dev-15 libipc-run-perl postgresql-15-repack build-essential rsync
          libpq-dev python3-psycopg pgbouncer valgrind
          prometheus prometheus-postgres-exporter python3-yaml curl
          debhelper postgresql-server-dev-all fakeroot zip unzip git debootstrap)
command -v node >/dev/null || packages+=(nodejs npm)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    # no default cluster on port 5432: tests and demo make their own
    mkdir -p /etc/postgresql-common
    if ! grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf; then
        echo 'create_main_cluster = false' >> /etc/postgresql-common/createcluster.conf
    fi
    # and no service started by the packages (Prometheus, its exporter,
    # PgBouncer): the tests start what they need on ports of their own
    policy=/usr/sbin/policy-rc.d
    if [ ! -e $policy ]; then
        printf '#!/bin/sh\nexit 101\n' >$policy
        chmod +x $policy
        trap 'rm -f $policy' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

export PATH="/usr/lib/postgresql/15/bin:$PATH"
make -s clean
make -s PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config IDEM_EXTRA_CFLAGS=-Werror
make -s PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config install
