#!/usr/bin/env bash
# The PGXN distribution: `make dist` (a zip of HEAD), then in the unpacked
# zip: META.json valid against the PGXN Meta Spec 1.0.0 with versions that
# agree with the control file, debian/changelog and CHANGELOG.md
# (test/helpers/pgxn_meta.pl), and the extension builds there with
# warnings as errors.  Needs a git checkout; any user.
set -euo pipefail
cd "$(dirname "$0")/.."
pg_config=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}

git rev-parse --git-dir >/dev/null 2>&1 || { echo "test/dist.sh: needs a git checkout" >&2; exit 2; }
[ -z "$(git status --porcelain --untracked-files=no)" ] ||
    echo "note: uncommitted changes are not in the zip (it is made from HEAD)"

version=$(sed -n "s/^default_version *= *'\(.*\)'/\1/p" idempotency.control)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
make -s dist PG_CONFIG="$pg_config"
zip=idempotency-$version.zip
mv "$zip" "$work/"
unzip -q "$work/$zip" -d "$work"
dir=$work/idempotency-$version
[ -d "$dir" ] || { echo "the zip has no top directory idempotency-$version/"; exit 1; }
for f in META.json idempotency.control Makefile README.md CHANGELOG.md LICENSE "sql/idempotency--$version.sql"; do
    [ -f "$dir/$f" ] || { echo "the zip lacks $f"; exit 1; }
done
perl test/helpers/pgxn_meta.pl "$dir"
make -s -C "$dir" PG_CONFIG="$pg_config" IDEM_EXTRA_CFLAGS=-Werror >/dev/null
[ -f "$dir/idempotency.so" ] || { echo "the unpacked zip did not build"; exit 1; }
echo "$zip: $(unzip -l "$work/$zip" | tail -1 | awk '{print $2}') files, builds, META.json valid"
