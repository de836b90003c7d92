#!/usr/bin/env bash
# Build and test the extension on another PostgreSQL major, from Debian's own
# packages, in a debootstrap chroot.  Run as root from a checkout:
#
#   test/matrix.sh 18            make (or reuse) the chroot, build with -Werror,
#                                run pg_regress, isolation and TAP there
#   test/matrix.sh 18 REGRESS=api ISOLATION= TAP_TESTS=
#                                the same with make variables for installcheck
#   test/matrix.sh 18 shell      a shell in the chroot, the tree in /build
#   test/matrix.sh 18 valgrind   test/valgrind.sh there (SPECS as for it)
#   test/matrix.sh prepare 18    only make the chroot
#   test/matrix.sh upgrade       pg_upgrade 17 -> 18 in the sid chroot and
#                                18 -> 19 in the experimental one
#                                (test/t/050_pg_upgrade.pl)
#   test/matrix.sh green start|stop
#                                a PostgreSQL 18 server in the sid chroot on
#                                127.0.0.1:$IDEM_GREEN_PORT (54418), the
#                                target of test/t/051_blue_green.pl outside the chroots
#
# Majors: 17 (Debian trixie), 18 (sid; with trixie's 17 beside it for
# pg_upgrade), 19 (the release candidate from experimental, over sid; with
# sid's 18 beside it).
# PostgreSQL 16 has no Debian package on these suites: it is kept building
# by src/idem_compat.h alone.
#
# The mirror is the one this machine's apt sources name for Debian (or
# IDEM_MIRROR).  Chroots are cached in $IDEM_MATRIX_DIR
# (/var/cache/idempotency-matrix) and rebuilt when the package list in this
# script changes; a fresh machine builds them from nothing (about a minute
# each).  sid's and experimental's Release files on a snapshot mirror are
# past their Valid-Until date, so apt in those chroots does not check it.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$(pwd)

# canonical, so that its mounts are found in /proc/mounts
cache=$(realpath -m "${IDEM_MATRIX_DIR:-/var/cache/idempotency-matrix}")
green_port=${IDEM_GREEN_PORT:-54418}

die() { echo "test/matrix.sh: $*" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || die "run as root (it makes and enters chroots)"

# major -> chroot name, suite, and the packages the tests need there
chroot_of() {
    case $1 in
        17) echo trixie ;;
        18) echo sid ;;
        19) echo experimental ;;
        *) die "no Debian package of PostgreSQL $1 here (tested: 17 18 19; 15 is Debian 12's own, outside the chroots)" ;;
    esac
}
base_packages="build-essential rsync libipc-run-perl ca-certificates locales-all pgbouncer valgrind"
# pg_repack for TAP 035, where the suite has it for the major under test
# (experimental has no postgresql-19-repack: 035 skips its pg_repack steps)
packages_of() {
    case $1 in
        trixie) echo "postgresql-17 postgresql-server-dev-17 libpq-dev postgresql-17-repack $base_packages" ;;
        sid) echo "postgresql-18 postgresql-server-dev-18 libpq-dev postgresql-18-repack $base_packages postgresql-17/trixie postgresql-server-dev-17/trixie" ;;
        # the server's libpq is experimental's too; sid's 18 beside it, for
        # pg_upgrade from 18 to 19
        experimental) echo "postgresql-19/experimental postgresql-server-dev-19/experimental libpq-dev/experimental $base_packages postgresql-18 postgresql-server-dev-18" ;;
    esac
}

# shellcheck source=test/mirror.sh
. test/mirror.sh

# Unmount whatever is mounted under a directory (a green server's /dev,
# say), deepest first; remove a chroot after that, never crossing into
# another file system.
unmount_under() {
    local m
    for m in $(awk -v p="$1/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
}
remove_tree() {
    unmount_under "$1"
    rm -rf --one-file-system "$1"
}

mounted=()
unmount_all() {
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        umount -l "${mounted[$i]}" 2>/dev/null || true
    done
    mounted=()
}
trap unmount_all EXIT

# bind what a server and the tests need: /proc, /dev (and its shm, pts)
mount_into() {
    local root=$1 d
    for d in proc dev dev/pts dev/shm; do
        mountpoint -q "$root/$d" && continue
        mkdir -p "$root/$d"
        case $d in
            proc) mount -t proc proc "$root/proc" ;;
            dev/shm) mount -t tmpfs -o mode=1777 shm "$root/dev/shm" ;;
            # a slave: what is mounted under it stays out of /dev outside the chroot
            *) mount --bind "/$d" "$root/$d" && mount --make-rslave "$root/$d" ;;
        esac
        mounted+=("$root/$d")
    done
}

in_chroot() {
    local root=$1
    shift
    chroot "$root" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
        LANG=C.UTF-8 HOME=/root DEBIAN_FRONTEND=noninteractive bash -c "$*"
}

# the test packages of chroot NAME, installed into ROOT (mounted)
install_packages() {
    in_chroot "$1" "apt-get update -qq && apt-get install -qq $(packages_of "$2") >/dev/null"
}

prepare() {
    local name root stamp want m
    name=$(chroot_of "$1")
    root=$cache/$name
    want="$(packages_of "$name") v1"
    stamp=$root/.idempotency-matrix
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        echo "chroot $name: cached at $root"
        return
    fi
    # a cached chroot whose package list changed: install what is new
    if [ -f "$stamp" ]; then
        mount_into "$root"
        if install_packages "$root" "$name"; then
            unmount_all
            echo "$want" >"$stamp"
            echo "chroot $name: cached at $root, packages updated"
            return
        fi
        unmount_all
    fi
    command -v debootstrap >/dev/null ||
        { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
    m=$(mirror)
    echo "chroot $name: debootstrap from the mirror of /etc/apt/sources"
    remove_tree "$root.new"
    mkdir -p "$cache"
    local t0=$SECONDS suite=$name
    [ "$name" = experimental ] && suite=sid
    # sid and trixie are signed with keys that bookworm's keyring has
    debootstrap --variant=minbase "$suite" "$root.new" "$m" >"$cache/$name.debootstrap.log" 2>&1 ||
        { tail -n 30 "$cache/$name.debootstrap.log"; die "debootstrap $suite failed"; }
    {
        echo "deb $m $suite main"
        [ "$name" = sid ] && echo "deb $m trixie main"
        [ "$name" = experimental ] && echo "deb $m experimental main"
    } >"$root.new/etc/apt/sources.list"
    cat >"$root.new/etc/apt/apt.conf.d/90idempotency" <<'CONF'
Acquire::Check-Valid-Until "false";
APT::Install-Recommends "false";
APT::Get::Assume-Yes "true";
CONF
    # no default cluster, no services started by the packages
    mkdir -p "$root.new/etc/postgresql-common"
    echo 'create_main_cluster = false' >"$root.new/etc/postgresql-common/createcluster.conf"
    printf '#!/bin/sh\nexit 101\n' >"$root.new/usr/sbin/policy-rc.d"
    chmod +x "$root.new/usr/sbin/policy-rc.d"
    cp /etc/resolv.conf "$root.new/etc/" 2>/dev/null || true
    mount_into "$root.new"
    install_packages "$root.new" "$name" ||
        die "installing packages into $name failed"
    unmount_all
    echo "$want" >"$root.new/.idempotency-matrix"
    remove_tree "$root"
    mv "$root.new" "$root"
    echo "chroot $name: ready in $((SECONDS - t0)) s"
}

# copy the tree into the chroot and build it there, with warnings as errors,
# for the given majors
build_in() {
    local root=$1
    shift
    rm -rf "$root/build"
    rsync -a --exclude .git --exclude node_modules --exclude tmp_check --exclude 'tmp_check_*' \
        --exclude '*.o' --exclude '*.bc' --exclude '*.so' --exclude results --exclude output_iso \
        "$src/" "$root/build/"
    local v
    for v in "$@"; do
        in_chroot "$root" "cd /build && make -s clean PG_CONFIG=/usr/lib/postgresql/$v/bin/pg_config &&
            make -s PG_CONFIG=/usr/lib/postgresql/$v/bin/pg_config IDEM_EXTRA_CFLAGS=-Werror &&
            make -s PG_CONFIG=/usr/lib/postgresql/$v/bin/pg_config install" ||
            die "build on PostgreSQL $v failed"
    done
    in_chroot "$root" "chown -R postgres /build"
}

# pg_regress, isolation and TAP as postgres; the diffs on failure
suite_in() {
    local root=$1 v=$2 status=0 vars
    shift 2
    local envs= e
    vars=$(printf '%q ' "$@")
    # the tests' own settings, where the caller gave them: TAP 041's
    # database count, TAP 050's older major
    for e in IDEM_TEST_DATABASES IDEM_UPGRADE_FROM; do
        [ -z "${!e:-}" ] || envs="$envs $e=${!e}"
    done
    in_chroot "$root" "su postgres -c $(printf '%q' "cd /build && $envs make -s PG_CONFIG=/usr/lib/postgresql/$v/bin/pg_config installcheck $vars")" ||
        status=$?
    if [ $status -ne 0 ]; then
        local f
        for f in "$root"/build/regression.diffs "$root"/build/output_iso/regression.diffs; do
            [ -f "$f" ] && { echo "=== $f"; cat "$f"; }
        done
        for f in "$root"/build/tmp_check/log/regress_log_*; do
            [ -f "$f" ] && { echo "=== $f (tail)"; tail -n 60 "$f"; }
        done
    fi
    return $status
}

run_major() {
    local v=$1 root
    shift
    root=$cache/$(chroot_of "$v")
    prepare "$v"
    mount_into "$root"
    if [ "${1:-}" = shell ]; then
        build_in "$root" "$v"
        chroot "$root" /bin/bash -l
        return
    fi
    if [ "${1:-}" = valgrind ]; then
        build_in "$root" "$v"
        in_chroot "$root" "cd /build && PG_MAJOR=$v ${SPECS:+SPECS='$SPECS'} bash test/valgrind.sh"
        return
    fi
    echo "PostgreSQL $v: $(in_chroot "$root" "/usr/lib/postgresql/$v/bin/postgres --version")"
    build_in "$root" "$v"
    suite_in "$root" "$v" "$@"
}

# test/t/050_pg_upgrade.pl from OLD to NEW, both installed in the chroot
# of NEW
upgrade_in() {
    local from=$1 to=$2 root
    root=$cache/$(chroot_of "$to")
    prepare "$to"
    mount_into "$root"
    build_in "$root" "$from" "$to"
    echo "pg_upgrade from PostgreSQL $from to $to"
    local out=$root/build/upgrade.out
    IDEM_UPGRADE_FROM=/usr/lib/postgresql/$from suite_in "$root" "$to" REGRESS= ISOLATION= \
        PROVE_TESTS=test/t/050_pg_upgrade.pl PROVE_FLAGS=-v >"$out" 2>&1 || { cat "$out"; return 1; }
    grep -E '^(ok|not ok) ' "$out" || true
    if grep -q 'skipped:' "$out"; then
        echo "pg_upgrade from PostgreSQL $from to $to: NOT RUN: $(sed -n 's/.*skipped: //p' "$out")"
    else
        echo "pg_upgrade from PostgreSQL $from to $to: ok"
    fi
    unmount_all
}

# 17 to 18 (sid), and 18 to 19 (experimental)
run_upgrade() {
    local status=0
    upgrade_in 17 18 || status=1
    upgrade_in 18 19 || status=1
    return $status
}

green() {
    local root=$cache/sid data=/var/tmp/idempotency-green
    case $1 in
        start)
            prepare 18
            mount_into "$root"
            build_in "$root" 18
            in_chroot "$root" "rm -rf $data && mkdir -p $data && chown postgres $data &&
                su postgres -c '/usr/lib/postgresql/18/bin/initdb -D $data/data -A trust -U postgres >/dev/null &&
                /usr/lib/postgresql/18/bin/pg_ctl -D $data/data -l $data/server.log -w start \
                  -o \"-p $green_port -c listen_addresses=127.0.0.1 -k $data \
                      -c shared_preload_libraries=idempotency -c idempotency.sweep_interval=1s\" >/dev/null'"
            # the mounts stay while the server runs; "green stop" removes them
            mounted=()
            echo "PostgreSQL 18 listening on 127.0.0.1:$green_port (in $root)"
            ;;
        stop)
            in_chroot "$root" "su postgres -c '/usr/lib/postgresql/18/bin/pg_ctl -D $data/data -m fast stop' >/dev/null 2>&1; rm -rf $data" || true
            unmount_under "$root"
            ;;
        *) die "green start|stop" ;;
    esac
}

case ${1:-} in
    prepare) prepare "${2:?major}" ;;
    upgrade) run_upgrade ;;
    green) green "${2:?start|stop}" ;;
    [0-9]*) run_major "$@" ;;
    *) die "usage: test/matrix.sh MAJOR [shell | VAR=value...] | prepare MAJOR | upgrade | green start|stop" ;;
esac
