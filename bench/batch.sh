#!/usr/bin/env bash
# Batch consumers: message ids per second through idem_once_batch against a
# plain INSERT ... ON CONFLICT DO NOTHING RETURNING of the same ids into a
# table like idem_keys, at batch sizes 1, 100 and 1000.
#
# One throwaway cluster; each round runs every (size, variant) pair, the two
# variants of a size back to back in an order that alternates per round,
# the sizes in an order rotated per round.  Prints median ids/s, the median
# of the per-round ext/base ratios per size (goal >= 1.0), ids/s at 1000
# (goal >= 100,000), and WAL bytes per id.  Each run's ids are checked: all
# new, all recorded.
#
# Run as root or postgres after make install.  Settings (environment):
#   DURATION  seconds per pgbench run   (default 10)
#   ROUNDS    rounds                    (default 5)
#   CLIENTS   pgbench -c and -j         (default 2)
#   SIZES     batch sizes               (default "1 100 1000")
#   PG_CONFIG, KEEP=1, RESULTS_DIR      as for bench/run.sh
# Smoke test:  DURATION=2 ROUNDS=1 bench/batch.sh
set -euo pipefail

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-5}
CLIENTS=${CLIENTS:-2}
SIZES=${SIZES:-1 100 1000}
KEEP=${KEEP:-0}
PG_CONFIG=${PG_CONFIG:-pg_config}
for v in DURATION ROUNDS CLIENTS; do
	[[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "batch.sh: $v must be a positive integer" >&2; exit 2; }
done
read -r -a SIZE_LIST <<<"$SIZES"

PROG=batch.sh
# shellcheck source=bench/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
bench_init
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results}
RESULTS=$RESULTS_DIR/batch-$(date +%Y%m%d-%H%M%S).csv
FAILURES=0

bench_workdir idem-batch scenarios
printf '%s\n' "idempotency.sweeper = off" "shared_buffers = 256MB" "fsync = on" \
	"synchronous_commit = on" "checkpoint_timeout = 1h" "max_wal_size = 4GB" | bench_start_cluster

psql_q "CREATE EXTENSION idempotency" >/dev/null
# idem_keys column for column, indexes and storage parameters included
psql_q "CREATE TABLE base_once (LIKE idem_keys INCLUDING ALL)" >/dev/null
psql_q "SELECT format('ALTER TABLE base_once SET (%s)', array_to_string(reloptions, ', '))
          FROM pg_class WHERE oid = 'idem_keys'::regclass AND reloptions IS NOT NULL" |
	while read -r stmt; do psql_q "$stmt" >/dev/null; done
log "base_once: $(psql_q "SELECT string_agg(indexdef, '; ') FROM pg_indexes WHERE tablename = 'base_once'")"
log "pgbench -M prepared -n -T $DURATION -c $CLIENTS -j $CLIENTS; $ROUNDS rounds x sizes ($SIZES) x 2 variants"

mkdir -p "$RESULTS_DIR"
echo "round,size,variant,tps,txns,ids_per_s,wal_bytes,rows,ok" >"$RESULTS"

run_one() {	# round size variant
	local round=$1 n=$2 variant=$3 tag="r${1}n${2}" table prefix out tps txns lsn0 lsn1 wal rows ids ok=true
	case $variant in
		ext) table=idem_keys prefix=x ;;
		base) table=base_once prefix=y ;;
	esac
	psql_q "VACUUM (ANALYZE) idem_keys, base_once" >/dev/null
	psql_q "CHECKPOINT" >/dev/null
	lsn0=$(psql_q "SELECT pg_current_wal_lsn()")
	out=$("${AS_PG[@]}" "$BINDIR/pgbench" -h "$WORK" -p "$PORT" -U postgres -n -M prepared \
		-T "$DURATION" -c "$CLIENTS" -j "$CLIENTS" -D tag="$tag" -D n="$n" \
		-f "$WORK/scenarios/batch_$variant.sql" bench 2>&1) || { echo "$out" >&2; ok=false; }
	lsn1=$(psql_q "SELECT pg_current_wal_lsn()")
	wal=$(psql_q "SELECT pg_wal_lsn_diff('$lsn1', '$lsn0')::bigint")
	tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out" | tail -1)
	txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
	tps=${tps:-0} txns=${txns:-0}
	ids=$(awk -v t="$tps" -v n="$n" 'BEGIN { printf "%.0f", t * n }')
	# every id of every transaction was new and is recorded
	rows=$(psql_q "SELECT count(*) FROM $table WHERE scope = '' AND key >= '${prefix}${tag}-' AND key < '${prefix}${tag}.'")
	if [[ $rows -ne $((txns * n)) || $txns -eq 0 ]]; then
		ok=false
		log "CHECK FAILED: $variant n=$n: $rows rows for $txns transactions of $n ids"
	fi
	[[ $ok == true ]] || FAILURES=$((FAILURES + 1))
	printf '  n=%-5s %-4s tps=%9.1f ids/s=%9s wal/id=%7.1f\n' "$n" "$variant" "$tps" "$ids" \
		"$(awk -v w="$wal" -v r="$rows" 'BEGIN { printf "%.1f", (r > 0 ? w / r : 0) }')"
	echo "$round,$n,$variant,$tps,$txns,$ids,$wal,$rows,$ok" >>"$RESULTS"
}

nsizes=${#SIZE_LIST[@]}
for ((round = 1; round <= ROUNDS; round++)); do
	log "round $round/$ROUNDS"
	for ((i = 0; i < nsizes; i++)); do
		n=${SIZE_LIST[(i + round - 1) % nsizes]}
		if ((round % 2)); then order=(ext base); else order=(base ext); fi
		for variant in "${order[@]}"; do run_one "$round" "$n" "$variant"; done
	done
done

echo
echo "medians over $ROUNDS rounds; ratio = median of the per-round ext/base ratios"
awk -F, '
NR > 1 && $9 == "true" { v[$2, $3, $1] = $6; wal[$2, $3] += $7; rows[$2, $3] += $8; sizes[$2] = 1; rounds[$1] = 1 }
function median(a, n,   i, j, t) {
	for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
	return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
END {
	for (s in sizes) {
		ne = nb = nr = 0
		for (k in rounds) {
			if ((s, "ext", k) in v) e[++ne] = v[s, "ext", k]
			if ((s, "base", k) in v) b[++nb] = v[s, "base", k]
			if ((s, "ext", k) in v && (s, "base", k) in v) q[++nr] = v[s, "ext", k] / v[s, "base", k]
		}
		printf "%6d %12.0f %12.0f %8.3f %11.1f %11.1f\n", s, median(e, ne), median(b, nb), median(q, nr),
			wal[s, "ext"] / (rows[s, "ext"] > 0 ? rows[s, "ext"] : 1),
			wal[s, "base"] / (rows[s, "base"] > 0 ? rows[s, "base"] : 1)
		delete e; delete b; delete q
	}
}' "$RESULTS" | sort -n | { printf '%6s %12s %12s %8s %11s %11s\n' size "ext ids/s" "base ids/s" ratio "ext WAL/id" "base WAL/id"; cat; }
echo "goals: ratio >= 1.0 at every size; ext >= 100000 ids/s at size 1000"
echo "results: $RESULTS"
if ((FAILURES)); then
	echo "$FAILURES check(s) FAILED" >&2
	exit 1
fi
