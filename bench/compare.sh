#!/usr/bin/env bash
# Before and after, in one run: the write path (idem_begin, INSERT,
# idem_finish with a jsonb body), the replay path (idem_begin of a
# completed key, jsonb body returned) and a consumer's batch
# (idem_once_batch of BATCH new ids) of the extension as built from REV
# against the working tree, each on a cluster of its own, run alternately.
#
#   bench/compare.sh REV      e.g. bench/compare.sh HEAD~3
#
# A cluster can load one idempotency library only, so each side gets a
# private copy of the server's installation (bin, lib, share, as
# PostgreSQL finds them relative to its binary) with its own build of the
# extension installed into it (make install DESTDIR=...).  The two servers
# are the same binaries with the same settings; only the extension differs.
# Each round runs both scenarios on both sides, the sides in an order that
# alternates per round; the result per scenario is the median of the
# per-round after/before ratios with a distribution-free 95% interval
# (order statistics, as bench/overhead.sh).  synchronous_commit = off and
# autovacuum off, so that the CPU a call costs is what is compared, not the
# WAL flush or a vacuum starting mid-run.
#
# Run as root or postgres.  Settings (environment):
#   DURATION  seconds per pgbench run   (default 5)
#   ROUNDS    rounds                    (default 15)
#   CLIENTS   pgbench -c and -j         (default 2)
#   NKEYS     completed keys to replay  (default 10000)
#   BATCH     ids per idem_once_batch   (default 100)
#   SCENARIOS which of them             (default "ext_write ext_replay batch_ext")
#   MEASURE   tps, or instructions      (default tps)
#   CALLS     calls per scenario with MEASURE=instructions (default 1000;
#             BATCH times fewer batches)
#   ROLE      the role the scenarios run as, on both sides: SET ROLE in
#             the single-user script, -c role through PGOPTIONS for pgbench
#             (default: the superuser postgres)
#   SETUP_SQL SQL run on both sides after bench/setup.sql (default none)
#   AFTER_SQL SQL run on the working tree's side only, after SETUP_SQL:
#             REV may be the working tree's own commit, to measure what a
#             setting or a table's rows cost (default none)
#   PG_CONFIG, KEEP=1, RESULTS_DIR      as for bench/run.sh
#
# MEASURE=instructions counts, instead of timing, the CPU instructions one
# call costs on each side: the same scenarios, as statements of one backend
# in single-user mode under valgrind's callgrind, run once with CALLS calls
# and once with 2 x CALLS, each from a copy of the same set-up cluster; the
# difference, divided by CALLS, is a call's cost without the backend's start
# and end.  The count does not depend on what else the machine is doing, so
# it resolves a difference of well under 1% where tps needs many rounds.
set -euo pipefail

REV=${1:?usage: bench/compare.sh REV}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-15}
CLIENTS=${CLIENTS:-2}
NKEYS=${NKEYS:-10000}
BATCH=${BATCH:-100}
SCENARIOS=${SCENARIOS:-ext_write ext_replay batch_ext}
KEEP=${KEEP:-0}
PG_CONFIG=${PG_CONFIG:-pg_config}
MEASURE=${MEASURE:-tps}
CALLS=${CALLS:-1000}
[[ $MEASURE == tps || $MEASURE == instructions ]] || { echo "compare.sh: MEASURE is tps or instructions" >&2; exit 2; }
if [[ $MEASURE == instructions ]] && ! command -v valgrind >/dev/null; then
	echo "compare.sh: MEASURE=instructions needs valgrind" >&2; exit 2
fi
for v in DURATION ROUNDS CLIENTS NKEYS BATCH CALLS; do
	[[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: $v must be a positive integer" >&2; exit 2; }
done

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
REV_SHA=$(git -C "$REPO" rev-parse --verify "$REV^{commit}") || { echo "compare.sh: unknown revision $REV" >&2; exit 2; }
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"		# log, bench_paired
if [[ $EUID -eq 0 ]]; then AS_PG=(runuser -u postgres --); elif [[ $(id -un) == postgres ]]; then AS_PG=(); else
	echo "compare.sh: run as root or as postgres" >&2; exit 2
fi
BINDIR=$("$PG_CONFIG" --bindir)
PGLIB=$(cd "$BINDIR/.." && pwd)          # .../lib/postgresql/NN
SHAREDIR=$("$PG_CONFIG" --sharedir)
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results}
RESULTS=$RESULTS_DIR/compare-$(date +%Y%m%d-%H%M%S).csv

WORK=$(mktemp -d "${TMPDIR:-/tmp}/idem-compare.XXXXXX")
chmod 755 "$WORK"
STARTED=()
cleanup() {
	local rc=$? side
	set +e
	for side in "${STARTED[@]}"; do
		"${AS_PG[@]}" "$WORK/$side$PGLIB/bin/pg_ctl" -D "$WORK/data-$side" -m fast -w stop >/dev/null 2>&1
	done
	if [[ $KEEP == 1 ]]; then echo "KEEP=1: left in $WORK"; else rm -rf "$WORK"; fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# One side: a copy of the server's installation with the extension built
# from a source tree installed into it.
make_side() {	# side srcdir
	local side=$1 src=$2 root=$WORK/$1
	mkdir -p "$root$PGLIB" "$root$SHAREDIR"
	cp -a "$PGLIB/." "$root$PGLIB/"
	cp -a "$SHAREDIR/." "$root$SHAREDIR/"
	rm -f "$root$PGLIB/lib/idempotency.so" "$root$SHAREDIR"/extension/idempotency*
	make -s -C "$src" PG_CONFIG="$PG_CONFIG" clean >/dev/null
	make -s -C "$src" PG_CONFIG="$PG_CONFIG" >/dev/null
	make -s -C "$src" PG_CONFIG="$PG_CONFIG" install DESTDIR="$root" >/dev/null
	log "$side: $(sed -n "s/^default_version *= *'\(.*\)'/\1/p" "$root$SHAREDIR/extension/idempotency.control") from $3"
}

mkdir -p "$WORK/src-before" "$WORK/src-after"
git -C "$REPO" archive "$REV_SHA" | tar -x -C "$WORK/src-before"
# the working tree as it is, committed or not
(cd "$REPO" && git ls-files -co --exclude-standard -z | tar --null -T - -c) | tar -x -C "$WORK/src-after"
make_side before "$WORK/src-before" "$REV ($(git -C "$REPO" rev-parse --short "$REV_SHA"))"
make_side after "$WORK/src-after" "the working tree"
cp -r "$BENCH_DIR/scenarios" "$BENCH_DIR/setup.sql" "$WORK/"
chown -R postgres: "$WORK" 2>/dev/null || true

declare -A PORT
port=$((20000 + RANDOM % 30000))
for side in before after; do
	PORT[$side]=$port
	port=$((port + 1))
	"${AS_PG[@]}" "$WORK/$side$PGLIB/bin/initdb" -D "$WORK/data-$side" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
	cat >>"$WORK/data-$side/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$WORK'
port = ${PORT[$side]}
shared_preload_libraries = 'idempotency'
idempotency.sweeper = off
shared_buffers = 256MB
synchronous_commit = off
autovacuum = off
checkpoint_timeout = 1h
max_wal_size = 4GB
EOF
	"${AS_PG[@]}" "$WORK/$side$PGLIB/bin/pg_ctl" -D "$WORK/data-$side" -l "$WORK/server-$side.log" -w start >/dev/null
	STARTED+=("$side")
	"${AS_PG[@]}" "$WORK/$side$PGLIB/bin/createdb" -h "$WORK" -p "${PORT[$side]}" -U postgres bench
	"${AS_PG[@]}" "$WORK/$side$PGLIB/bin/psql" -X -q -v ON_ERROR_STOP=1 -v nkeys="$NKEYS" \
		-h "$WORK" -p "${PORT[$side]}" -U postgres -d bench -f "$WORK/setup.sql" >/dev/null
	for extra in "${SETUP_SQL:-}" "$([[ $side == after ]] && echo "${AFTER_SQL:-}")"; do
		[[ -n $extra ]] || continue
		"${AS_PG[@]}" "$WORK/$side$PGLIB/bin/psql" -X -q -v ON_ERROR_STOP=1 \
			-h "$WORK" -p "${PORT[$side]}" -U postgres -d bench -c "$extra" >/dev/null
	done
	log "$side: $("${AS_PG[@]}" "$WORK/$side$PGLIB/bin/psql" -X -At -h "$WORK" -p "${PORT[$side]}" -U postgres -d bench \
		-c "SELECT 'extension ' || extversion || ', library ' || (SELECT setting FROM pg_settings WHERE name = 'shared_preload_libraries') FROM pg_extension WHERE extname = 'idempotency'")"
done
# The statements of one scenario, CALLS x factor calls, for a single-user
# backend (-j: a statement ends with a semicolon and an empty line),
# prepared first as pgbench -M prepared has them; keys are new to the
# cluster, and the same on both sides.
single_user_script() {	# scenario factor
	local n=$((CALLS * $2)) i body='{"amount": 500, "to": "acct_42"}'
	case $1 in
	ext_write)
		printf "PREPARE b(text) AS SELECT * FROM idem_begin(\$1, '%s'::jsonb);\n\n" "$body"
		printf "PREPARE i(text) AS INSERT INTO payments (key, amount) VALUES (\$1, 500);\n\n"
		printf "PREPARE f(text) AS SELECT idem_finish(\$1, 201, '{\"id\": 991, \"state\": \"paid\"}'::jsonb);\n\n"
		for ((i = 1; i <= n; i++)); do
			printf "BEGIN;\n\nEXECUTE b('w-%d');\n\nEXECUTE i('w-%d');\n\nEXECUTE f('w-%d');\n\nCOMMIT;\n\n" "$i" "$i" "$i"
		done ;;
	ext_replay)
		printf "PREPARE r(text) AS SELECT * FROM idem_begin(\$1, '%s'::jsonb);\n\n" "$body"
		for ((i = 1; i <= n; i++)); do
			printf "EXECUTE r('p-%d');\n\n" $((1 + (i * 7919) % NKEYS))
		done ;;
	batch_ext)
		printf "PREPARE o(text, int) AS SELECT cardinality(idem_once_batch(ARRAY(SELECT \$1 || g FROM generate_series(1, \$2) g)));\n\n"
		for ((i = 1; i <= n / BATCH; i++)); do
			printf "EXECUTE o('x-%d-', %d);\n\n" "$i" "$BATCH"
		done ;;
	*) echo "compare.sh: no single-user form of scenario $1" >&2; exit 2 ;;
	esac
}

# Instructions of one single-user run of a scenario on a copy of a side's cluster.
count_instructions() {	# side scenario factor
	local data=$WORK/count-data out
	rm -rf "$data"
	cp -a "$WORK/data-$1" "$data"
	{
		[[ -z ${ROLE:-} ]] || printf 'SET ROLE %s;\n\n' "$ROLE"
		single_user_script "$2" "$3"
	} >"$WORK/count.sql"
	chown -R postgres: "$data" "$WORK/count.sql" 2>/dev/null || true
	out=$("${AS_PG[@]}" valgrind --tool=callgrind --callgrind-out-file=/dev/null \
		"$WORK/$1$PGLIB/bin/postgres" --single -j -D "$data" bench <"$WORK/count.sql" 2>&1 >/dev/null) ||
		{ echo "$out" | tail -20 >&2; exit 1; }
	grep -q 'ERROR' <<<"$out" && { echo "$out" | grep -m5 ERROR >&2; exit 1; }
	sed -n 's/.*Collected : \([0-9]*\).*/\1/p' <<<"$out"
}

if [[ $MEASURE == instructions ]]; then
	for side in before after; do
		"${AS_PG[@]}" "$WORK/$side$PGLIB/bin/pg_ctl" -D "$WORK/data-$side" -m fast -w stop >/dev/null
	done
	STARTED=()
	log "instructions per call: callgrind, single-user backend, $CALLS and $((2 * CALLS)) calls per scenario (batches of $BATCH ids)"
	RESULTS=${RESULTS%.csv}-instructions.csv
	mkdir -p "$RESULTS_DIR"
	echo "scenario,side,calls,instructions" >"$RESULTS"
	echo
	echo "instructions per call, after/before ($REV)"
	for scen in $SCENARIOS; do
		declare -A per=()
		for side in before after; do
			one=$(count_instructions "$side" "$scen" 1)
			two=$(count_instructions "$side" "$scen" 2)
			echo "$scen,$side,$CALLS,$one" >>"$RESULTS"
			echo "$scen,$side,$((2 * CALLS)),$two" >>"$RESULTS"
			per[$side]=$(( (two - one) / CALLS ))
		done
		awk -v s="$scen" -v b="${per[before]}" -v a="${per[after]}" -v unit="$([[ $scen == batch_ext ]] && echo "per id" || echo "per call")" \
			'BEGIN { printf "  %-11s before %9d  after %9d  instructions %s  ratio %.4f\n", s, b, a, unit, a / b }'
	done
	echo "results: $RESULTS"
	exit 0
fi

log "pgbench -M prepared -n -T $DURATION -c $CLIENTS -j $CLIENTS; $ROUNDS rounds x ($SCENARIOS) x before/after; synchronous_commit=off"

mkdir -p "$RESULTS_DIR"
echo "round,scenario,side,tps,txns" >"$RESULTS"
run_one() {	# round scenario side
	local out tps txns p=${PORT[$3]} bin=$WORK/$3$PGLIB/bin
	"${AS_PG[@]}" "$bin/psql" -X -q -h "$WORK" -p "$p" -U postgres -d bench -c "VACUUM (ANALYZE) idem_keys, payments" -c CHECKPOINT >/dev/null
	out=$(PGOPTIONS=${ROLE:+"-c role=$ROLE"} "${AS_PG[@]}" "$bin/pgbench" -h "$WORK" -p "$p" -U postgres -n -M prepared -T "$DURATION" \
		-c "$CLIENTS" -j "$CLIENTS" -D tag="r$1$3" -D nkeys="$NKEYS" -D n="$BATCH" -f "$WORK/scenarios/$2.sql" bench 2>&1) ||
		{ echo "$out" >&2; exit 1; }
	tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out" | tail -1)
	txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
	printf '  %-10s %-6s tps=%9.1f\n' "$2" "$3" "$tps"
	echo "$1,$2,$3,$tps,$txns" >>"$RESULTS"
}
for ((round = 1; round <= ROUNDS; round++)); do
	log "round $round/$ROUNDS"
	if ((round % 2)); then order=(before after); else order=(after before); fi
	for scen in $SCENARIOS; do
		for side in "${order[@]}"; do run_one "$round" "$scen" "$side"; done
	done
done

echo
echo "after/before ($REV): median of the per-round tps ratios, 95% interval (order statistics)"
bench_paired "$RESULTS" after before
echo "results: $RESULTS"
