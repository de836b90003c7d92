#!/usr/bin/env bash
# The extension's whole suite (make installcheck: pg_regress, isolation and
# TAP, each on its own throwaway cluster) against a PostgreSQL 15 built with
# assertions (--enable-cassert) from Debian's source package.  Debian's
# server has no assertions, so a broken invariant that the server checks
# (a lock released twice, a buffer pin or memory context misused, a
# catalog tuple changed outside the rules, an unbalanced resource owner)
# passes there unnoticed; here it is a TRAP: in a server log, which fails
# the run even where no test notices, and is shown with its backtrace
# resolved to functions and lines.  Run as root on Debian 12 after
# test/setup.sh:
#
#   test/cassert.sh               build (or reuse) the server, build the
#                                 extension with -Werror against it, run
#                                 make installcheck as postgres in a
#                                 private copy of the tree
#   test/cassert.sh REGRESS=api ISOLATION= TAP_TESTS=
#                                 the same with make variables for
#                                 installcheck
#   test/cassert.sh build         only build (or reuse) the server
#
# The copy, with its results and every server log, is kept when the suite
# fails (KEEP=1: always), and its path printed.
#
# The source is the newest postgresql-15 in Debian's main suite (the
# security suite has no sources; IDEM_CASSERT_VERSION names another), from
# the mirror this machine's apt sources name (or IDEM_MIRROR), with
# Debian's patches.  It is configured with only what the tests use (no
# readline, ICU, SSL, LLVM), -O2 -g, and only the server, the client
# programs, the test drivers and the contrib modules the tests create
# (pageinspect, amcheck) are built.  The install is cached in
# $IDEM_CASSERT_DIR/<version> (/var/cache/idempotency-cassert) and made
# again when the version, the configure flags or the contrib list change.
# A fresh build is 9 CPU-minutes, 5 to 7 on 2 cores: test/check.sh starts
# it in the background at its beginning.  The suite takes 6 to 8 minutes.
#
# The TAP tests that need another server skip themselves here as on the
# host: 050 (pg_upgrade from an older major: 15 is the oldest Debian
# ships, test/matrix.sh upgrade runs it), 051 (blue/green: needs a newer
# server) and 060 (Citus is not packaged).  041 sweeps
# $IDEM_TEST_DATABASES databases, 250 by default as in the chroots (the
# host's run does 1,000).
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "test/cassert.sh: $*" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and runs the tests as postgres)"

cache=$(realpath -m "${IDEM_CASSERT_DIR:-/var/cache/idempotency-cassert}")
major=15
contrib="pageinspect amcheck"
configure_flags=(--enable-cassert --enable-debug --enable-tap-tests --without-readline
                 --without-icu --without-llvm --with-zlib)

# shellcheck source=test/mirror.sh
. test/mirror.sh

# apt on a sources list of our own: the main suite's deb-src only, its
# index in the cache, the machine's own lists and caches untouched
apt_src() {
    local cmd=$1
    shift
    "$cmd" -q -o Dir::Etc::SourceList="$cache/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null \
        -o Dir::State::Lists="$cache/apt/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= \
        -o APT::Sandbox::User=root "$@"
}

# the main suite's sources index, fetched again
apt_src_update() {
    local m codename
    m=$(mirror)
    # shellcheck source=/dev/null
    codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
    mkdir -p "$cache/apt/lists/partial"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $m $codename main" \
        >"$cache/apt/sources.list"
    apt_src apt-get update >/dev/null
}

# the newest postgresql-15 source in it
source_version() {
    local best='' v
    for v in $(apt_src apt-cache showsrc --only-source postgresql-$major | sed -n 's/^Version: //p'); do
        if [ -z "$best" ] || dpkg --compare-versions "$v" gt "$best"; then best=$v; fi
    done
    echo "$best"
}

build() {
    local version prefix stamp want t0=$SECONDS
    version=${IDEM_CASSERT_VERSION:-}
    if [ -z "$version" ]; then
        apt_src_update && version=$(source_version)
        # no mirror (a rerun offline): the last build, if there is one
        if [ -z "$version" ] && [ -f "$cache/current" ]; then
            version=$(basename "$(cat "$cache/current")")
            echo "test/cassert.sh: no postgresql-$major source found in the main suite; the cached $version"
        fi
        [ -n "$version" ] || die "no postgresql-$major source in the main suite of $(mirror)"
    fi
    prefix=$cache/$version
    stamp=$prefix/.idempotency-cassert
    want="postgresql-$major $version; ${configure_flags[*]}; contrib: $contrib; no ECPG"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        echo "PostgreSQL $version with assertions: cached at $prefix"
        echo "$prefix" >"$cache/current"
        return
    fi

    # what a build needs beyond test/setup.sh's packages (bison and flex
    # only if a Debian patch touches a grammar; the tarball has their
    # output); the lock timeout for test/check.sh, whose steps may be
    # installing packages at the same time
    local p missing=()
    for p in build-essential dpkg-dev bison flex zlib1g-dev libipc-run-perl; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >/dev/null ||
            { apt-get -o DPkg::Lock::Timeout=600 update -qq &&
              DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >/dev/null; }
    fi

    echo "PostgreSQL $version with assertions: building into $prefix"
    [ -z "${IDEM_CASSERT_VERSION:-}" ] || apt_src_update
    local b=$cache/build
    rm -rf "$b" "$prefix"
    mkdir -p "$b"
    (cd "$b" && apt_src apt-get source postgresql-$major="$version" >source.log 2>&1) ||
        { cat "$b/source.log"; die "apt-get source postgresql-$major=$version failed"; }
    local srcdir
    srcdir=$(find "$b" -mindepth 1 -maxdepth 1 -type d -name "postgresql-$major-*")
    [ -n "$srcdir" ] || die "no source tree after apt-get source"
    cd "$srcdir"
    # libdir has "postgres" in it: Debian's 50-per-version-dirs.patch would
    # otherwise install the server's modules in /usr/lib/postgresql/15/lib,
    # over the packages of Debian's own server (checked below)
    ./configure --prefix="$prefix" --libdir="$prefix/lib/postgresql" "${configure_flags[@]}" \
        >"$b/configure.log" 2>&1 || { tail -n 40 "$b/configure.log"; die "configure failed"; }
    local pkglibdir
    # shellcheck disable=SC2016
    pkglibdir=$(printf 'show:\n\t@echo $(pkglibdir)\n' | make -s -C src/port -f Makefile -f - show)
    case $pkglibdir in "$prefix"/*) ;; *) die "pkglibdir would be $pkglibdir, outside $prefix" ;; esac
    echo "source fetched and configured in $((SECONDS - t0)) s"
    # src/ (server, libpq, client programs, pg_regress, isolationtester,
    # the TAP modules) but not ECPG, which no test uses, and the contrib
    # modules; no documentation
    sed -i 's/^SUBDIRS = libpq ecpg$/SUBDIRS = libpq/' src/interfaces/Makefile
    make -s -j2 >"$b/make.log" 2>&1 || { tail -n 60 "$b/make.log"; die "make failed"; }
    local m
    for m in $contrib; do
        make -s -j2 -C "contrib/$m" >>"$b/make.log" 2>&1 || { tail -n 60 "$b/make.log"; die "make -C contrib/$m failed"; }
    done
    echo "built in $((SECONDS - t0)) s"
    make -s install >"$b/install.log" 2>&1 || { tail -n 40 "$b/install.log"; die "make install failed"; }
    for m in $contrib; do
        make -s -C "contrib/$m" install >>"$b/install.log" 2>&1 || { tail -n 40 "$b/install.log"; die "make -C contrib/$m install failed"; }
    done
    cd "$cache"
    rm -rf "$b"
    # other versions' installs go
    local d
    for d in "$cache"/*/; do
        d=${d%/}
        [ "$d" != "$prefix" ] && [ -f "$d/.idempotency-cassert" ] && rm -rf "$d"
    done
    echo "$want" >"$stamp"
    echo "$prefix" >"$cache/current"
    echo "PostgreSQL $version with assertions: installed in $((SECONDS - t0)) s"
}

mkdir -p "$cache"
# one build (and one run: the install of the extension) at a time
exec 9>"$cache/.lock"
if ! flock -n 9; then
    echo "waiting for another test/cassert.sh (a build under way)"
    flock 9
fi
(build)

[ "${1:-}" = build ] && exit 0

prefix=$(cat "$cache/current")
pg_config=$prefix/bin/pg_config
work=$(mktemp -d /tmp/idempotency-cassert.XXXXXX)
# kept if the suite fails (or KEEP=1), for its server logs
keep=${KEEP:-}
trap '[ -n "$keep" ] || rm -rf "$work"' EXIT
rsync -a --exclude .git --exclude node_modules ./ "$work/"
chown -R postgres "$work"
as_pg() { su postgres -c "cd '$work' && $*"; }

# the copy may hold objects built against Debian's packaged server
as_pg "make -s PG_CONFIG='$pg_config' clean"
as_pg "make -s PG_CONFIG='$pg_config' IDEM_EXTRA_CFLAGS=-Werror"
# no files of an earlier run's version of the extension left behind
rm -f "$("$pg_config" --sharedir)"/extension/idempotency[-.]* "$("$pg_config" --pkglibdir)"/idempotency.so
make -s -C "$work" PG_CONFIG="$pg_config" install
# pg_repack for TAP 035, which looks for it in the server's bindir and
# extensions: Debian's build for 15 (test/setup.sh installs
# postgresql-15-repack), linked into the install, as PgBouncer is
# Debian's for 034.  The server's assertions check what pg_repack makes
# it do; pg_repack's own code has none.  Without it 035 skips its
# pg_repack steps and says so.
for f in "$("$pg_config" --bindir)"/pg_repack "$("$pg_config" --pkglibdir)"/pg_repack.so \
         "$("$pg_config" --sharedir)"/extension/pg_repack[-.]*; do
    [ -L "$f" ] && rm -f "$f"
done
if [ -x /usr/lib/postgresql/$major/bin/pg_repack ]; then
    ln -s /usr/lib/postgresql/$major/bin/pg_repack "$("$pg_config" --bindir)/"
    ln -s /usr/lib/postgresql/$major/lib/pg_repack.so "$("$pg_config" --pkglibdir)/"
    ln -s /usr/share/postgresql/$major/extension/pg_repack[-.]* "$("$pg_config" --sharedir)/extension/"
fi

# The TRAP: lines of a server log, each with its backtrace, every frame
# given its function, file and line (addr2line, from the -g builds):
# glibc's backtrace names only exported functions, and the server's frames
# by the process title.
traps_of() {
    local line obj sym off base addr where bindir
    bindir=$("$pg_config" --bindir)
    grep -A 40 '^TRAP:' "$1" | while IFS= read -r line; do
        if [[ $line =~ ^(.*)\(([A-Za-z_][A-Za-z0-9_]*)?\+(0x[0-9a-f]+)\)\ ?\[0x[0-9a-f]+\]$ ]]; then
            obj=${BASH_REMATCH[1]} sym=${BASH_REMATCH[2]} off=${BASH_REMATCH[3]}
            [[ $obj == /* ]] || obj=$bindir/postgres
            base=0
            [ -z "$sym" ] || base=0x$(nm "$obj" 2>/dev/null | awk -v s="$sym" '$3 == s && !n++ { print $1 }' || true)
            # a return address: the call is the instruction before it
            addr=$(printf '0x%x' $((base + off - 1)))
            where=$(addr2line -f -i -p -e "$obj" "$addr" 2>/dev/null | sed 's| at /.*/src/| at src/|' | tr '\n' ' ' || true)
            echo "    $line"
            [ -z "$where" ] || echo "        $where"
        elif [[ $line == TRAP:* ]]; then
            echo "$line"
        fi
    done
}

# pg_regress removes its instance, server log and all, when its tests
# pass: its servers (regression and isolation) log to a directory of their
# own instead, kept like the TAP tests' logs.  An assertion that fails
# where the tests do not see it (in a backend's exit, in a backend a crash
# test kills anyway) fails the run as well.
cat >"$work/cassert.conf" <<CONF
logging_collector = on
log_directory = '$work/server_log'
CONF
# (the servers do not inherit the lock: one left running would hold it)
status=0
as_pg "IDEM_TEST_DATABASES=${IDEM_TEST_DATABASES:-250} EXTRA_REGRESS_OPTS=--temp-config='$work/cassert.conf' \
    make -s PG_CONFIG='$pg_config' installcheck $*" 9>&- || status=$?

traps=$(grep -rl '^TRAP:' "$work"/server_log "$work"/tmp_check*/log 2>/dev/null || true)
if [ $status -ne 0 ] || [ -n "$traps" ]; then
    keep=1
    for f in "$work"/regression.diffs "$work"/output_iso/regression.diffs; do
        [ -f "$f" ] && { echo "=== $f"; cat "$f"; }
    done
    for f in "$work"/tmp_check/log/regress_log_*; do
        [ -f "$f" ] && { echo "=== $f (tail)"; tail -n 60 "$f"; }
    done
    for f in $traps; do
        echo "=== $f: assertion failures"
        traps_of "$f" | head -n 400 || true
    done
    [ $status -ne 0 ] || status=1
    echo "test/cassert.sh: the tree, results and server logs are kept in $work"
fi
exit $status
