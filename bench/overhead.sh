#!/usr/bin/env bash
# The cost of measuring the extension's own cost: the
# replay path and the write path with idempotency.track_timing on and off,
# in pairs, in one run.
#
# Four scenarios: the replay and write paths as a client runs them (one
# pgbench transaction a request: ext_replay, ext_write), and the same calls
# 1,000 or 2,000 to a statement inside the server (loop_replay, loop_once),
# where no round trip dilutes the clock reads: their ratio is the upper
# bound of what timing costs.  synchronous_commit = off and autovacuum off,
# so that the CPU, not the WAL flush or a vacuum that starts mid-run, is what
# is compared.  Each round runs both settings of every scenario back to
# back, in an order that alternates per round; the
# result per scenario is the median of the per-round on/off ratios with a
# distribution-free 95% confidence interval for it (order statistics of
# the ratios, as for a sign test), and whether that interval is narrower
# than +/-2%, i.e. whether the run resolves a 2% difference.  The counters
# themselves (track_stats) stay on throughout; their cost is bench/run.sh's
# ext_write_nocount.
#
# Run as root or postgres after make install.  Settings (environment):
#   DURATION  seconds per pgbench run   (default 5)
#   ROUNDS    rounds                    (default 20)
#   SCENARIOS which scenarios           (default "ext_replay ext_write loop_replay loop_once")
#   CLIENTS   pgbench -c and -j         (default 2)
#   NKEYS     completed keys to replay  (default 10000)
#   PG_CONFIG, KEEP=1, RESULTS_DIR      as for bench/run.sh
# Smoke test:  DURATION=1 ROUNDS=2 bench/overhead.sh
set -euo pipefail

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-20}
CLIENTS=${CLIENTS:-2}
NKEYS=${NKEYS:-10000}
read -r -a SCENARIO_LIST <<<"${SCENARIOS:-ext_replay ext_write loop_replay loop_once}"
KEEP=${KEEP:-0}
PG_CONFIG=${PG_CONFIG:-pg_config}
for v in DURATION ROUNDS CLIENTS NKEYS; do
	[[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "overhead.sh: $v must be a positive integer" >&2; exit 2; }
done

PROG=overhead.sh
# shellcheck source=bench/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
bench_init
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results}
RESULTS=$RESULTS_DIR/overhead-$(date +%Y%m%d-%H%M%S).csv
FAILURES=0

bench_workdir idem-overhead scenarios setup.sql
printf '%s\n' "idempotency.sweeper = off" "shared_buffers = 256MB" "fsync = on" \
	"synchronous_commit = off" "autovacuum = off" "checkpoint_timeout = 1h" "max_wal_size = 4GB" | bench_start_cluster
log "loading: extension, $NKEYS completed keys"
"${AS_PG[@]}" "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -v nkeys="$NKEYS" \
	-h "$WORK" -p "$PORT" -U postgres -d bench -f "$WORK/setup.sql" >/dev/null
log "pgbench -M prepared -n -T $DURATION -c $CLIENTS -j $CLIENTS; $ROUNDS rounds x ${#SCENARIO_LIST[@]} scenarios x track_timing on/off; synchronous_commit=off, autovacuum=off"

mkdir -p "$RESULTS_DIR"
echo "round,scenario,timing,tps,txns,timed_calls" >"$RESULTS"

run_one() {	# round scenario on|off
	local round=$1 scen=$2 timing=$3 tag="r${1}${3}" out tps txns before after
	psql_q "VACUUM (ANALYZE) idem_keys, payments" >/dev/null
	psql_q "CHECKPOINT" >/dev/null
	before=$(psql_q "SELECT timed_calls FROM idem_stats WHERE datname = current_database()")
	out=$(PGOPTIONS="-c idempotency.track_timing=$timing" "${AS_PG[@]}" "$BINDIR/pgbench" -h "$WORK" -p "$PORT" \
		-U postgres -n -M prepared -T "$DURATION" -c "$CLIENTS" -j "$CLIENTS" -D tag="$tag" -D nkeys="$NKEYS" \
		-f "$WORK/scenarios/$scen.sql" bench 2>&1) || { echo "$out" >&2; FAILURES=$((FAILURES + 1)); }
	after=$(psql_q "SELECT timed_calls FROM idem_stats WHERE datname = current_database()")
	tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out" | tail -1)
	txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
	tps=${tps:-0} txns=${txns:-0}
	# on: every call was timed (per transaction: a replay one call, a write
	# two, the loops 2,000 and 1,000); off: none
	local want=0 per=1
	case $scen in
		ext_write) per=2 ;;
		loop_replay) per=2000 ;;
		loop_once) per=1000 ;;
	esac
	[[ $timing == on ]] && want=$((txns * per))
	if [[ $((after - before)) -ne $want ]]; then
		log "CHECK FAILED: $scen timing=$timing: $((after - before)) calls timed, expected $want"
		FAILURES=$((FAILURES + 1))
	fi
	printf '  %-10s timing=%-3s tps=%9.1f timed_calls=%s\n' "$scen" "$timing" "$tps" "$((after - before))"
	echo "$round,$scen,$timing,$tps,$txns,$((after - before))" >>"$RESULTS"
}

for ((round = 1; round <= ROUNDS; round++)); do
	log "round $round/$ROUNDS"
	if ((round % 2)); then order=(off on); else order=(on off); fi
	for scen in "${SCENARIO_LIST[@]}"; do
		for timing in "${order[@]}"; do run_one "$round" "$scen" "$timing"; done
	done
done

echo
echo "track_timing on/off: median of the per-round tps ratios, 95% interval (order statistics)"
bench_paired "$RESULTS" on off
echo "results: $RESULTS"
if ((FAILURES)); then
	echo "$FAILURES check(s) FAILED" >&2
	exit 1
fi
