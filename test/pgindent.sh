#!/usr/bin/env bash
# Indent src/ as PostgreSQL indents its own tree: pgindent and pg_bsd_indent
# with PostgreSQL's typedefs list and the extension's own typedefs.
#
#   test/pgindent.sh           rewrite src/*.c and src/*.h in place
#   test/pgindent.sh --check   print what would change; exit 1 if anything
#
# pgindent ships with PostgreSQL 17 and later (Debian's postgresql-17
# package and newer, with typedefs.list in /usr/share/postgresql/NN).  It
# is taken from PGINDENT_BINDIR, else from pg_config's bindir if it has it,
# else from the PostgreSQL 18 chroot test/matrix.sh makes (run as root;
# test/matrix.sh prepare 18 makes it).
set -euo pipefail
cd "$(dirname "$0")/.."
check=0
[[ ${1:-} == --check ]] && check=1

chroot_dir=$(realpath -m "${IDEM_MATRIX_DIR:-/var/cache/idempotency-matrix}")/sid
run=()
bindir=${PGINDENT_BINDIR:-$(pg_config --bindir 2>/dev/null || true)}
if [[ -x $bindir/pgindent && -x $bindir/pg_bsd_indent ]]; then
	major=$("$bindir/pg_config" --version 2>/dev/null | sed -E 's/^PostgreSQL ([0-9]+).*/\1/' || true)
	typedefs=/usr/share/postgresql/$major/typedefs.list
	root=
elif [[ -x $chroot_dir/usr/lib/postgresql/18/bin/pgindent ]]; then
	bindir=/usr/lib/postgresql/18/bin
	typedefs=/usr/share/postgresql/18/typedefs.list
	root=$chroot_dir
	run=(chroot "$root")
else
	echo "test/pgindent.sh: no pgindent (PostgreSQL 17 or later); see the header" >&2
	exit 2
fi
[[ -f $root$typedefs ]] || { echo "test/pgindent.sh: $root$typedefs is missing" >&2; exit 2; }

work=$(mktemp -d "${root:-/tmp}/tmp/idem-pgindent.XXXXXX" 2>/dev/null || mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r src "$work/"
# the extension's typedefs: every name a typedef declares in src/
{
	cat "$root$typedefs"
	perl -0777 -ne '
		while (/\btypedef\s+(?:struct|enum|union)\b[^;{]*(\{(?:[^{}]++|(?1))*\})\s*(\w+)\s*;/g) { print "$2\n" }
		while (/\btypedef\s+[^;{()]*?[\s*](\w+)\s*;/g) { print "$1\n" }
		while (/\btypedef\s+[^;]*\(\s*\*\s*(\w+)\s*\)/g) { print "$1\n" }
	' src/*.c src/*.h
} | sort -u >"$work/typedefs.list"
inner=${work#"$root"}
files=()
for f in "$work"/src/*.c "$work"/src/*.h; do files+=("${f#"$root"}"); done
"${run[@]}" "$bindir/pgindent" --typedefs="$inner/typedefs.list" \
	--indent="$bindir/pg_bsd_indent" "${files[@]}"

if [[ $check == 1 ]]; then
	if ! diff -ru src "$work/src"; then
		echo "test/pgindent.sh: src/ is not as pgindent leaves it (run test/pgindent.sh)" >&2
		exit 1
	fi
	echo "test/pgindent.sh: src/ is as pgindent leaves it"
else
	cp "$work"/src/*.c "$work"/src/*.h src/
fi
