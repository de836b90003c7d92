#!/usr/bin/env bash
# Build the Debian package (postgresql-15-idempotency, debian/) as the
# PostgreSQL team's tools do, install it in place of the files that
# `make install` put there, and run its autopkgtest (debian/tests/
# installcheck: pg_regress and isolation against the installed files in a
# throwaway cluster).  Then remove the package and install from source
# again, so that the machine is as it was.  Run as root after
# test/setup.sh.  The .deb (and the build log) are left in $IDEM_DEB_OUT
# if that is set.  It refuses to run where the package is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$(pwd)
pg_config=/usr/lib/postgresql/15/bin/pg_config

need=()
for p in debhelper postgresql-server-dev-all fakeroot; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# A machine that has the package installed keeps it: this script would
# replace it with a source install at the end.
if dpkg-query -W -f='${Status}' postgresql-15-idempotency 2>/dev/null | grep -q "ok installed"; then
    echo "test/deb.sh: postgresql-15-idempotency is installed here; remove it first (the test installs its own build, then a source install)" >&2
    exit 2
fi

work=$(mktemp -d /tmp/idempotency-deb.XXXXXX)
# the test cluster runs as postgres and reads the built files in here
chmod 755 "$work"
# Put the source install back whatever failed: every step runs.
restore() {
    set +e
    if [ -f "$work/build.log" ] && [ -n "${IDEM_DEB_OUT:-}" ]; then
        mkdir -p "$IDEM_DEB_OUT" && cp "$work/build.log" "$IDEM_DEB_OUT/"
    fi
    dpkg-query -W postgresql-15-idempotency >/dev/null 2>&1 && dpkg -r postgresql-15-idempotency >/dev/null
    make -s -C "$src" PG_CONFIG=$pg_config install >/dev/null ||
        echo "test/deb.sh: could not install from source again: run make install" >&2
    rm -rf "$work"
}
trap restore EXIT

rsync -a --exclude .git --exclude node_modules --exclude '*.o' --exclude '*.bc' --exclude '*.so' \
    ./ "$work/idempotency/"
cd "$work/idempotency"
make -s clean PG_CONFIG=$pg_config

# debian/control is generated from control.in; it must be current
pg_buildext checkcontrol

echo "== dpkg-buildpackage (builds, and tests the built files)"
if ! dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1; then
    tail -n 80 "$work/build.log"
    exit 1
fi
grep -E "^ *(All [0-9]+ tests passed|[0-9]+ of [0-9]+ tests failed)" "$work/build.log"
deb=$(ls "$work"/postgresql-15-idempotency_*_amd64.deb)
version=$(dpkg-deb -f "$deb" Version)
want=$(sed -n "s/^default_version *= *'\(.*\)'/\1/p" idempotency.control)
[ "$version" = "$want" ] || { echo "package version $version, control file $want"; exit 1; }
echo "built $(basename "$deb")"

echo "== install it where make install was"
make -s -C "$src" PG_CONFIG=$pg_config uninstall
[ ! -e "$($pg_config --pkglibdir)/idempotency.so" ] || { echo "make uninstall left the library"; exit 1; }
apt-get install -y -qq "$deb" >/dev/null
for f in "$($pg_config --pkglibdir)/idempotency.so" \
         "$($pg_config --sharedir)/extension/idempotency.control"; do
    [ -e "$f" ] && dpkg -S "$f" >/dev/null || { echo "$f is missing or not the package's"; exit 1; }
done
dpkg -V postgresql-15-idempotency || { echo "installed files differ from the package's"; exit 1; }

echo "== autopkgtest: debian/tests/installcheck on the installed package"
# a tree with no build products: the tests use the installed files only
make -s clean PG_CONFIG=$pg_config
[ ! -e idempotency.so ]
debian/tests/installcheck 2>&1 | grep -E "^ *(All [0-9]+ tests passed|[0-9]+ of [0-9]+ tests failed)|^### End"
[ "${PIPESTATUS[0]}" -eq 0 ]

if [ -n "${IDEM_DEB_OUT:-}" ]; then
    mkdir -p "$IDEM_DEB_OUT"
    cp "$deb" "$IDEM_DEB_OUT/"
fi
echo "package ok"
