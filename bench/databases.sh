#!/usr/bin/env bash
# Sweeper benchmark for database-per-tenant clusters: the time of one full
# pass over DATABASES databases that all have the extension, on a throwaway
# cluster (as bench/run.sh).
#
# The databases are file copies of one template with the extension.  Each
# round, for each value of idempotency.sweep_workers in WORKERS (the order
# reversed every other round, so that neither comes first every time), with
# the sweeper off: KEYS expired keys are put into every database, the
# sweeper is switched on (which starts a pass at once), the pass's time is
# read from the launcher's DEBUG1 line ("pass over N databases took M ms"),
# then the next pass, with nothing to sweep, is timed too, and the sweeper
# is switched off.  Prints per value the median pass times, the time per
# database, and the ratio to the first value of WORKERS measured in the
# same rounds.
#
# Run as root or as postgres, after `make install`.  Settings (environment):
#   DATABASES   databases with the extension            (default 1000)
#   KEYS        expired keys put into each, each round  (default 10)
#   WORKERS     sweep_workers values, space-separated   (default "1 2 4")
#   ROUNDS      rounds                                   (default 3)
#   FSYNC       fsync on|off                             (default on)
#   PG_CONFIG, KEEP=1 as for run.sh
# Smoke test:  DATABASES=50 ROUNDS=1 bench/databases.sh
set -euo pipefail

DATABASES=${DATABASES:-1000}
KEYS=${KEYS:-10}
WORKERS=${WORKERS:-1 2 4}
ROUNDS=${ROUNDS:-3}
FSYNC=${FSYNC:-on}
KEEP=${KEEP:-0}
PG_CONFIG=${PG_CONFIG:-pg_config}

for v in DATABASES KEYS ROUNDS; do
	[[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "databases.sh: $v must be a positive integer" >&2; exit 1; }
done
for w in $WORKERS; do
	[[ $w =~ ^[1-9][0-9]*$ ]] || { echo "databases.sh: WORKERS must be positive integers" >&2; exit 1; }
done
[[ $FSYNC == on || $FSYNC == off ]] || { echo "databases.sh: FSYNC must be on or off" >&2; exit 1; }

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROG=databases.sh
BENCH_FAIL_RC=1
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"
bench_init
bench_workdir idem-databases

max_workers=0
for w in $WORKERS; do ((w > max_workers)) && max_workers=$w; done
bench_start_cluster <<EOF
idempotency.sweeper = off
idempotency.sweep_interval = '1h'
max_worker_processes = $((max_workers + 4))
fsync = off
log_min_messages = debug1
log_line_prefix = '%m [%p] %b '
EOF

psql_db() {	# db sql
	"${AS_PG[@]}" "$BINDIR/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$WORK" -p "$PORT" -U postgres -d "$1" -c "$2"
}
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

psql_q "CREATE DATABASE tpl" >/dev/null
psql_db tpl "SET client_min_messages = warning; CREATE EXTENSION idempotency" >/dev/null
t0=$(date +%s)
for i in $(seq 1 "$DATABASES"); do
	echo "CREATE DATABASE tenant_$i TEMPLATE tpl STRATEGY file_copy;"
done | "${AS_PG[@]}" "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$WORK" -p "$PORT" -U postgres -d postgres
log "$DATABASES databases created in $(($(date +%s) - t0)) s ($(du -sh "$DATA" | cut -f1) on disk)"
# created with fsync off (1,000 file copies flushed one by one take minutes);
# measured with the fsync setting asked for, after a checkpoint
psql_q "ALTER SYSTEM SET fsync = $FSYNC" >/dev/null
psql_q "SELECT pg_reload_conf()" >/dev/null
psql_q "CHECKPOINT" >/dev/null

# put KEYS expired keys into every database (and tpl), 4 sessions at a time
populate() {
	seq 1 "$DATABASES" | sed 's/^/tenant_/' | { cat; echo tpl; } |
		xargs -P 4 -I{} "${AS_PG[@]}" "$BINDIR/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$WORK" -p "$PORT" -U postgres -d {} -c \
			"INSERT INTO idem_keys (created_at, expires_at, response_code, state, scope, key)
			 SELECT now() - interval '2 days', now() - interval '1 day', 200, 'c', '', 'k-' || gen_random_uuid()
			 FROM generate_series(1, $KEYS)"
}

# the ms of the Nth pass line that follows line $1 of the server log
pass_ms() {	# after_line nth
	local deadline=$((SECONDS + 600)) ms
	while ((SECONDS < deadline)); do
		ms=$(tail -n +"$(($1 + 1))" "$WORK/server.log" | grep -o 'pass over [0-9]* databases took [0-9]* ms' |
			sed -n "${2}p" | awk '{ print $(NF - 1) }')
		[[ -n $ms ]] && { echo "$ms"; return 0; }
		sleep 0.1
	done
	echo "databases.sh: no pass line after 600 s" >&2
	exit 1
}

declare -A full idle
order=($WORKERS)
for round in $(seq 1 "$ROUNDS"); do
	if ((round % 2 == 0)); then
		rev=()
		for ((j = ${#order[@]} - 1; j >= 0; j--)); do rev+=("${order[j]}"); done
		run=("${rev[@]}")
	else
		run=("${order[@]}")
	fi
	for w in "${run[@]}"; do
		bench_set idempotency.sweep_workers "$w"
		populate
		mark=$(wc -l <"$WORK/server.log")
		bench_set idempotency.sweep_interval 200ms
		bench_set idempotency.sweeper on
		f=$(pass_ms "$mark" 1)
		i=$(pass_ms "$mark" 2)
		bench_set idempotency.sweeper off
		bench_set idempotency.sweep_interval 1h
		left=$(psql_db tpl "SELECT count(*) FROM idem_keys")
		[[ $left == 0 ]] || { echo "databases.sh: tpl still has $left keys after the pass" >&2; exit 1; }
		full[$w]+="$f "
		idle[$w]+="$i "
		log "round $round, sweep_workers=$w: pass with $KEYS expired keys/database ${f} ms, next pass (nothing to sweep) ${i} ms"
	done
done

n=$((DATABASES + 1))
base=${order[0]}
base_full=$(echo "${full[$base]}" | tr ' ' '\n' | grep . | median)
echo
echo "One pass over $n databases with the extension (+ postgres), PostgreSQL $("$BINDIR/postgres" --version | awk '{print $3}'), $(nproc) CPUs, fsync=$FSYNC, $ROUNDS rounds, medians:"
printf '%-14s %-26s %-22s %-16s %s\n' sweep_workers "pass, $KEYS keys/db (ms)" "pass, nothing (ms)" "ms per database" "vs sweep_workers=$base"
for w in "${order[@]}"; do
	fm=$(echo "${full[$w]}" | tr ' ' '\n' | grep . | median)
	im=$(echo "${idle[$w]}" | tr ' ' '\n' | grep . | median)
	printf '%-14s %-26s %-22s %-16s %s\n' "$w" "$fm" "$im" \
		"$(awk -v a="$fm" -v b="$n" 'BEGIN { printf "%.2f", a / b }')" \
		"$(awk -v a="$base_full" -v b="$fm" 'BEGIN { printf "%.2fx", a / b }')"
done
