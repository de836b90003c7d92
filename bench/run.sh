#!/usr/bin/env bash
# Speed benchmark of the idempotency extension against plain-SQL baselines.
#
# Creates a throwaway cluster, loads it (bench/setup.sql), then for each round
# and each commit setting runs the six pgbench scenarios of bench/scenarios/
# in rotated order, and prints median TPS, ratios ext/base with their targets,
# and WAL bytes per transaction.  Results also go to bench/results/<ts>.csv.
#
# Run as root (pgbench and the server run as the postgres user) or as postgres,
# after `make install`.  Settings (environment):
#   DURATION  seconds per pgbench run          (default 20)
#   ROUNDS    rounds of all scenarios x configs (default 5)
#   CLIENTS   pgbench -c and -j                 (default 2)
#   NKEYS     completed keys for the replay path (default 100000)
#   PG_CONFIG pg_config of the server to use    (default: pg_config in PATH)
#   SCENARIOS which scenarios, space-separated  (default: all six), e.g. the
#             counters' cost alone: SCENARIOS="ext_write ext_write_nocount"
#   KEEP=1    keep the temporary cluster directory at the end
#   RESULTS_DIR where the CSV goes             (default bench/results)
# Smoke test:  DURATION=2 ROUNDS=1 bench/run.sh
set -euo pipefail

DURATION=${DURATION:-20}
ROUNDS=${ROUNDS:-5}
CLIENTS=${CLIENTS:-2}
NKEYS=${NKEYS:-100000}
KEEP=${KEEP:-0}
PG_CONFIG=${PG_CONFIG:-pg_config}

for v in DURATION ROUNDS CLIENTS NKEYS; do
	[[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: $v must be a positive integer" >&2; exit 2; }
done

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROG=run.sh
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"
bench_init

CONFIGS=(sync_commit_on sync_commit_off)
ALL_SCENARIOS=(ext_write ext_write_nocount base_write base_write_noexp ext_replay base_replay)
read -r -a SCENARIOS <<<"${SCENARIOS:-${ALL_SCENARIOS[*]}}"
for s in "${SCENARIOS[@]}"; do
	[[ " ${ALL_SCENARIOS[*]} " == *" $s "* ]] || { echo "run.sh: unknown scenario $s" >&2; exit 2; }
done

TS=$(date +%Y%m%d-%H%M%S)
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results}
RESULTS=$RESULTS_DIR/$TS.csv
FAILURES=0

bench_workdir idem-bench scenarios setup.sql summary.sql

bench_start_cluster <<EOF
idempotency.sweeper = off
shared_buffers = 256MB
fsync = on
synchronous_commit = on
full_page_writes = on
# checkpoints only where run.sh asks for one (before every pgbench run)
checkpoint_timeout = 1h
max_wal_size = 4GB
log_checkpoints = off
EOF

log "loading: extension, baseline tables, $NKEYS completed keys"
"${AS_PG[@]}" "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -v nkeys="$NKEYS" \
	-h "$WORK" -p "$PORT" -U postgres -d bench -f "$WORK/setup.sql" >/dev/null

REQ=\''{"amount": 500, "to": "acct_42"}'\''::jsonb'
psql_q "SELECT idem_stats_reset()" >/dev/null
replay_statuses() {
	psql_q "SELECT string_agg(status || '=' || n, ', ' ORDER BY status)
	          FROM (SELECT b.status, count(*) AS n
	                  FROM generate_series(1, $NKEYS) g,
	                       LATERAL idem_begin('p-' || g, $REQ) b
	                 GROUP BY b.status) s"
}

# --- pre-flight checks ---------------------------------------------------
st=$(replay_statuses)
log "pre-flight: idem_begin on the $NKEYS loaded keys -> $st"
[[ $st == "replay=$NKEYS" ]] || { log "FAIL: expected replay=$NKEYS"; FAILURES=$((FAILURES + 1)); }
st=$(psql_q "BEGIN; SELECT status FROM idem_begin('preflight-new', $REQ);
             SELECT idem_finish('preflight-new', 201); ROLLBACK;" | head -1)
log "pre-flight: idem_begin on a new key -> $st"
[[ $st == started ]] || { log "FAIL: expected started"; FAILURES=$((FAILURES + 1)); }
# A replay inside an open transaction: is an xid assigned (any row lock or
# tuple write needs one), and which locks does it hold?  Locks other than
# relation-level ones (tuple, transactionid, advisory ...) fail the check;
# relation locks stronger than AccessShareLock are only reported.
st=$(psql_q "BEGIN;
  SELECT status FROM idem_begin('p-1', $REQ);
  SELECT 'xid=' || coalesce(pg_current_xact_id_if_assigned()::text, 'none');
  SELECT 'other_locks=' || coalesce(string_agg(locktype || ':' || mode, ','), 'none')
    FROM pg_locks WHERE pid = pg_backend_pid() AND locktype NOT IN ('relation', 'virtualxid');
  SELECT 'relation_locks=' || coalesce(string_agg(relation::regclass || ':' || mode, ',' ORDER BY relation::regclass::text), 'none')
    FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'relation' AND mode <> 'AccessShareLock';
  COMMIT;" | paste -sd' ')
log "pre-flight: replay in an open transaction -> status=$st"
case $st in
	"replay xid=none other_locks=none "*) ;;
	*) log "FAIL: replay did not report replay, assigned an xid or holds a non-relation lock"; FAILURES=$((FAILURES + 1)) ;;
esac
[[ $st == *relation_locks=none ]] || log "note: relation locks above are table-level (no row lock: no xid was assigned)"

log "reloptions: idem_keys $(psql_q "SELECT coalesce(reloptions::text, '{}') FROM pg_class WHERE oid = 'idem_keys'::regclass"), base_keys $(psql_q "SELECT coalesce(reloptions::text, '{}') FROM pg_class WHERE oid = 'base_keys'::regclass"), base_keys_noexp $(psql_q "SELECT coalesce(reloptions::text, '{}') FROM pg_class WHERE oid = 'base_keys_noexp'::regclass")"
log "settings: fsync=$(psql_q 'SHOW fsync') shared_buffers=$(psql_q 'SHOW shared_buffers') full_page_writes=$(psql_q 'SHOW full_page_writes') autovacuum=$(psql_q 'SHOW autovacuum')"
log "note: base_write uses base_keys, which like idem_keys has an index on expires_at (the extension keeps it"
log "      for the sweeper); base_write_noexp is the same without that index, to show both ratios."
log "pgbench: -M prepared -n -T $DURATION -c $CLIENTS -j $CLIENTS; $ROUNDS round(s) x ${#CONFIGS[@]} configs x ${#SCENARIOS[@]} scenarios"
log "before every run: VACUUM (ANALYZE) of the four tables, VACUUM pg_statistic, CHECKPOINT; WAL measured from there"

set_config() {
	local want
	case $1 in
		sync_commit_on) want=on ;;
		sync_commit_off) want=off ;;
	esac
	bench_set synchronous_commit "$want"
}

mkdir -p "$RESULTS_DIR"
echo "round,config,pos,scenario,duration,clients,tps,txns,failed,wal_bytes,ok,lsn_start,lsn_end,note" >"$RESULTS"

run_one() {	# round config pos scenario
	local round=$1 config=$2 pos=$3 scen=$4
	local tag="r${round}${config#sync_commit_}"
	local table letter check="" maxid=0 out rc tps txns failed lsn0 lsn1 wal ok=true note=""

	case $scen in
		ext_write) table=idem_keys letter=e ;;
		ext_write_nocount) table=idem_keys letter=e ;;
		base_write) table=base_keys letter=b ;;
		base_write_noexp) table=base_keys_noexp letter=n ;;
		*) table="" letter="" ;;
	esac

	# pg_statistic too: otherwise the first plans after ANALYZE prune its
	# dead rows and that WAL would be counted against the run.
	psql_q "VACUUM (ANALYZE) idem_keys, base_keys, base_keys_noexp, payments" >/dev/null
	psql_q "VACUUM pg_statistic" >/dev/null
	[[ -n $table ]] && maxid=$(psql_q "SELECT coalesce(max(id), 0) FROM payments")
	psql_q "CHECKPOINT" >/dev/null
	lsn0=$(psql_q "SELECT pg_current_wal_lsn()")
	set +e
	# ext_write_nocount is ext_write with the idem_stats counters off, for
	# their cost; its keys get a tag of their own, so both can be counted
	local options="" script=$scen
	if [[ $scen == ext_write_nocount ]]; then
		options="-c idempotency.track_stats=off" script=ext_write tag="${tag}x"
	fi
	out=$(PGOPTIONS="$options" "${AS_PG[@]}" "$BINDIR/pgbench" -h "$WORK" -p "$PORT" -U postgres -n -M prepared \
		-T "$DURATION" -c "$CLIENTS" -j "$CLIENTS" -D tag="$tag" -D nkeys="$NKEYS" \
		-f "$WORK/scenarios/$script.sql" bench 2>&1)
	rc=$?
	set -e
	lsn1=$(psql_q "SELECT pg_current_wal_lsn()")
	wal=$(psql_q "SELECT pg_wal_lsn_diff('$lsn1', '$lsn0')::bigint")

	tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out" | tail -1)
	txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
	failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out")
	tps=${tps:-0} txns=${txns:-0} failed=${failed:-0}
	if [[ $rc -ne 0 || $failed -ne 0 || $txns -eq 0 ]]; then
		ok=false note="pgbench exit $rc"
		echo "$out" | grep -Ei 'error|abort' | head -5 >&2
	fi

	if [[ -n $table ]]; then
		# Every transaction must have got "started": one key row and one
		# payment per transaction.  A replay would have made idem_finish fail.
		local p="${letter}${tag}-" nkeys npay
		read -r nkeys npay < <(psql_q "SELECT (SELECT count(*) FROM $table
		                                 WHERE scope = '' AND key >= '$p' AND key < '${p%-}.'),
		                                (SELECT count(*) FROM payments
		                                 WHERE id > $maxid AND key LIKE '$p%')" | tr '|' ' ')
		check=" rows=$nkeys payments=$npay"
		if [[ $nkeys -ne $txns || $npay -ne $txns ]]; then
			ok=false note="${note:+$note; }rows $nkeys payments $npay for $txns txns"
		fi
	fi
	[[ $ok == true ]] || FAILURES=$((FAILURES + 1))

	printf '  %-16s tps=%10.1f txns=%-8s failed=%s wal/txn=%s%s%s\n' "$scen" "$tps" "$txns" "$failed" \
		"$(awk -v w="$wal" -v t="$txns" 'BEGIN { printf "%.1f", (t > 0 ? w / t : 0) }')" "$check" \
		"$([[ $ok == true ]] || echo "  CHECK FAILED: $note")"
	echo "$round,$config,$pos,$scen,$DURATION,$CLIENTS,$tps,$txns,$failed,$wal,$ok,$lsn0,$lsn1,\"$note\"" >>"$RESULTS"
}

nscen=${#SCENARIOS[@]}
for ((round = 1; round <= ROUNDS; round++)); do
	# alternate the order of the configs and rotate the order of the scenarios
	if ((round % 2)); then cfgs=("${CONFIGS[@]}"); else cfgs=("${CONFIGS[1]}" "${CONFIGS[0]}"); fi
	for config in "${cfgs[@]}"; do
		set_config "$config"
		log "round $round/$ROUNDS, $config (fsync=on, synchronous_commit=$(psql_q 'SHOW synchronous_commit'))"
		for ((i = 0; i < nscen; i++)); do
			run_one "$round" "$config" "$((i + 1))" "${SCENARIOS[(i + round - 1) % nscen]}"
		done
	done
done

# --- post-flight checks --------------------------------------------------
st=$(replay_statuses)
log "post-flight: idem_begin on the $NKEYS loaded keys -> $st"
[[ $st == "replay=$NKEYS" ]] || { log "FAIL: expected replay=$NKEYS"; FAILURES=$((FAILURES + 1)); }

# The counters were on for ext_write and off for ext_write_nocount: every
# ext_write transaction, and the pre-flight one, counted one finish.
want=$(awk -F, '$4 == "ext_write" { n += $8 } END { print n + 1 }' "$RESULTS")
st=$(psql_q "SELECT finishes FROM idem_stats WHERE datname = current_database()")
log "post-flight: idem_stats.finishes = $st (expected $want: ext_write transactions + 1, none from ext_write_nocount)"
[[ $st == "$want" ]] || { log "FAIL: counters did not count exactly the ext_write finishes"; FAILURES=$((FAILURES + 1)); }

"${AS_PG[@]}" "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$WORK" -p "$PORT" -U postgres -d bench \
	-P pager=off -f "$WORK/summary.sql" <"$RESULTS"

echo "results: $RESULTS"
if ((FAILURES)); then
	echo "$FAILURES check(s) FAILED (see CHECK FAILED / FAIL lines above)" >&2
	exit 1
fi
