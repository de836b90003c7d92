#!/usr/bin/env bash
# How the extension's cost grows with the number of keys it stores, against
# plain SQL doing the same work on a table of the same size.
#
# One throwaway cluster (shared_buffers 512MB unless SHARED_BUFFERS, fsync on, synchronous_commit
# off: CPU-bound, so that growth in the index shows and is not hidden by the
# flush).  For each size in SIZES, the key tables the scenarios use are grown to that many
# completed keys with random UUID keys (straight INSERT ... SELECT as
# superuser, as bench/storage.sh loads; the keys arrive in random order, as
# an application's do), vacuumed and checkpointed; then ROUNDS rounds of six
# pgbench scenarios in rotated order, each on UUID keys spread over the whole
# index:
#   ext_write / base_write    BEGIN; idem_begin | PK probe; INSERT payment;
#                             idem_finish | INSERT key row; COMMIT
#   ext_replay / base_replay  idem_begin of a stored key | PK SELECT of it
#   ext_once / base_once      idem_once(new id) | INSERT ... ON CONFLICT DO
#                             NOTHING RETURNING into the baseline's table
# The baseline table has idem_keys' columns, collations and indexes (as
# bench/setup.sql's base_keys).  A third table, digest_keys, asks whether a
# smaller index key would grow more slowly: the same columns plus kd, a
# 16-byte digest of the key (md5(key)::uuid; the scope is always ''), which
# is its primary key instead of the text pair; digest_write, digest_replay and digest_once are base_*'s
# statements on it, the digest computed in the statement (a replay also
# compares scope and key, as a digest layout must).  The rows a run wrote are deleted (and
# vacuumed) after it, so every run of a size sees that size.  Per size and
# scenario: median tps, its ratio to the baseline, the ratio to the same
# scenario's figure at the first size, p99 latency (pgbench --log; a replay
# transaction is one idem_begin, so its p99 is idem_begin's), and bytes per
# key of each table with its indexes.  CSV in bench/results/scale-<ts>.csv.
#
# Run as root or as postgres, after `make install`.  Settings (environment):
#   SIZES     key counts, ascending               (default "100000 1000000 10000000")
#   DURATION  seconds per pgbench run             (default 10)
#   ROUNDS    rounds per size                     (default 3)
#   CLIENTS   pgbench -c and -j                   (default 2)
#   WARMUP    seconds of each scenario, untimed, before a size's rounds
#             (default 10; 0 for none): at 10^7 both tables are bigger than
#             shared_buffers and the first runs measure the cache
#   SCENARIOS a subset of the nine above, e.g. "ext_write ext_replay ext_once"
#             (default: all); only the tables they use are loaded
#   SHARED_BUFFERS  the server's shared_buffers   (default 512MB, as the issue
#             measured; at 10^7, 4GB holds one of the three tables, so with
#             SCENARIOS limited to one table's, no page is read from the OS)
#   PG_CONFIG, KEEP=1, RESULTS_DIR as for run.sh
# Smoke test:  SIZES="10000 20000" DURATION=2 ROUNDS=1 bench/scale.sh
set -euo pipefail

SIZES=${SIZES:-100000 1000000 10000000}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-2}
WARMUP=${WARMUP:-10}
SHARED_BUFFERS=${SHARED_BUFFERS:-512MB}
KEEP=${KEEP:-0}
PG_CONFIG=${PG_CONFIG:-pg_config}

for v in DURATION ROUNDS CLIENTS; do
	[[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "scale.sh: $v must be a positive integer" >&2; exit 2; }
done
[[ $WARMUP =~ ^[0-9]+$ ]] || { echo "scale.sh: WARMUP must be a non-negative integer" >&2; exit 2; }
[[ $SHARED_BUFFERS =~ ^[1-9][0-9]*(kB|MB|GB)$ ]] || { echo "scale.sh: SHARED_BUFFERS must be a size such as 512MB or 4GB" >&2; exit 2; }
read -r -a SIZE_LIST <<<"$SIZES"
prev=0
for s in "${SIZE_LIST[@]}"; do
	[[ $s =~ ^[1-9][0-9]*$ ]] && ((s > prev)) || { echo "scale.sh: SIZES must be ascending positive integers" >&2; exit 2; }
	prev=$s
done

ALL_SCENARIOS=(ext_write base_write digest_write ext_replay base_replay digest_replay ext_once base_once digest_once)
read -r -a SCENARIOS <<<"${SCENARIOS:-${ALL_SCENARIOS[*]}}"
((${#SCENARIOS[@]})) || { echo "scale.sh: SCENARIOS is empty" >&2; exit 2; }
declare -A LOAD=()	# the tables the scenarios use: idem_keys, base_keys, digest_keys
for scen in "${SCENARIOS[@]}"; do
	[[ " ${ALL_SCENARIOS[*]} " == *" $scen "* ]] || { echo "scale.sh: unknown scenario $scen (one of: ${ALL_SCENARIOS[*]})" >&2; exit 2; }
	case $scen in ext_*) LOAD[idem_keys]=1 ;; base_*) LOAD[base_keys]=1 ;; digest_*) LOAD[digest_keys]=1 ;; esac
done

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROG=scale.sh
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"
bench_init
TS=$(date +%Y%m%d-%H%M%S)
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results}
mkdir -p "$RESULTS_DIR"
RESULTS=$RESULTS_DIR/scale-$TS.csv
bench_workdir idem-scale

bench_start_cluster <<EOF
idempotency.sweeper = off
shared_buffers = $SHARED_BUFFERS
fsync = on
synchronous_commit = off
full_page_writes = on
autovacuum = off
checkpoint_timeout = 1h
max_wal_size = 8GB
maintenance_work_mem = 512MB
log_checkpoints = off
EOF

REQ='{"amount": 500, "to": "acct_42"}'
psql_q "
SET client_min_messages = warning;
CREATE EXTENSION idempotency;
CREATE TABLE payments (id bigserial PRIMARY KEY, key text, amount int);
CREATE TABLE base_keys (
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    response_code int4,
    state         \"char\" NOT NULL,
    scope         text COLLATE \"C\" NOT NULL,
    key           text COLLATE \"C\" NOT NULL,
    fingerprint   bytea,
    response_body jsonb,
    PRIMARY KEY (scope, key)
);
CREATE INDEX base_keys_expires_at ON base_keys (expires_at);
CREATE TABLE digest_keys (LIKE base_keys INCLUDING INDEXES, kd uuid NOT NULL);
ALTER TABLE digest_keys DROP CONSTRAINT digest_keys_pkey, ADD PRIMARY KEY (kd);" >/dev/null
FP=$(psql_q "SELECT encode(idem_fingerprint('$REQ'::jsonb), 'hex')")

# The scenarios.  Stored keys are md5(g)::uuid for g in 1..size; new keys
# are md5 of a random value, so both land all over the index.
mkdir -p "$WORK/scale"
cat >"$WORK/scale/ext_write.sql" <<EOF
\set r random(1, 9000000000000000000)
BEGIN;
SELECT * FROM idem_begin(md5('w' || :r)::uuid::text, '$REQ'::jsonb);
INSERT INTO payments (key, amount) VALUES (md5('w' || :r)::uuid::text, 500);
SELECT idem_finish(md5('w' || :r)::uuid::text, 201, '{"id": 991, "state": "paid"}'::jsonb);
COMMIT;
EOF
cat >"$WORK/scale/base_write.sql" <<EOF
\set r random(1, 9000000000000000000)
BEGIN;
SELECT * FROM base_keys WHERE scope = '' AND key = md5('w' || :r)::uuid::text;
INSERT INTO payments (key, amount) VALUES (md5('w' || :r)::uuid::text, 500);
INSERT INTO base_keys (created_at, expires_at, response_code, state, scope, key, fingerprint, response_body)
VALUES (now(), now() + interval '24 hours', 201, 'c', '', md5('w' || :r)::uuid::text,
        '\\x$FP'::bytea, '{"id": 991, "state": "paid"}'::jsonb);
COMMIT;
EOF
cat >"$WORK/scale/ext_replay.sql" <<EOF
\set g random(1, :size)
SELECT * FROM idem_begin(md5(:g::text)::uuid::text, '$REQ'::jsonb);
EOF
cat >"$WORK/scale/base_replay.sql" <<EOF
\set g random(1, :size)
SELECT * FROM base_keys WHERE scope = '' AND key = md5(:g::text)::uuid::text;
EOF
cat >"$WORK/scale/ext_once.sql" <<EOF
\set r random(1, 9000000000000000000)
SELECT idem_once(md5('o' || :r)::uuid::text);
EOF
cat >"$WORK/scale/base_once.sql" <<EOF
\set r random(1, 9000000000000000000)
INSERT INTO base_keys (created_at, expires_at, state, scope, key)
VALUES (now(), now() + interval '7 days', 'c', '', md5('o' || :r)::uuid::text)
ON CONFLICT DO NOTHING RETURNING key;
EOF
# the digest layout: base_*'s statements, keyed by md5(key)::uuid (the scope is '')
cat >"$WORK/scale/digest_write.sql" <<EOF
\set r random(1, 9000000000000000000)
BEGIN;
SELECT * FROM digest_keys WHERE kd = md5(md5('w' || :r)::uuid::text)::uuid AND scope = '' AND key = md5('w' || :r)::uuid::text;
INSERT INTO payments (key, amount) VALUES (md5('w' || :r)::uuid::text, 500);
INSERT INTO digest_keys (created_at, expires_at, response_code, state, scope, key, fingerprint, response_body, kd)
VALUES (now(), now() + interval '24 hours', 201, 'c', '', md5('w' || :r)::uuid::text,
        '\\x$FP'::bytea, '{"id": 991, "state": "paid"}'::jsonb, md5(md5('w' || :r)::uuid::text)::uuid);
COMMIT;
EOF
cat >"$WORK/scale/digest_replay.sql" <<EOF
\set g random(1, :size)
SELECT * FROM digest_keys WHERE kd = md5(md5(:g::text)::uuid::text)::uuid AND scope = '' AND key = md5(:g::text)::uuid::text;
EOF
cat >"$WORK/scale/digest_once.sql" <<EOF
\set r random(1, 9000000000000000000)
INSERT INTO digest_keys (created_at, expires_at, state, scope, key, kd)
VALUES (now(), now() + interval '7 days', 'c', '', md5('o' || :r)::uuid::text, md5(md5('o' || :r)::uuid::text)::uuid)
ON CONFLICT DO NOTHING RETURNING key;
EOF
[[ ${#AS_PG[@]} -eq 0 ]] || chown -R postgres: "$WORK/scale"

grow_to() {	# from to: completed keys from+1..to into the tables the scenarios use
	local t digest_col digest_val
	for t in idem_keys base_keys digest_keys; do
		[[ -n ${LOAD[$t]:-} ]] || continue
		digest_col='' digest_val=''
		[[ $t != digest_keys ]] || digest_col=', kd' digest_val=', md5(md5(g::text)::uuid::text)::uuid'
		psql_q "
INSERT INTO $t (created_at, expires_at, response_code, state, scope, key, fingerprint, response_body$digest_col)
SELECT now() - interval '1 hour', now() + interval '30 days', 201, 'c', '', md5(g::text)::uuid::text,
       '\\x$FP'::bytea, '{\"id\": 991, \"state\": \"paid\"}'::jsonb$digest_val
  FROM generate_series($1 + 1, $2) g" >/dev/null
	done
	psql_q "VACUUM (FREEZE, ANALYZE) idem_keys, base_keys, digest_keys, payments" >/dev/null
	psql_q "CHECKPOINT" >/dev/null
}

echo "size,round,pos,scenario,tps,txns,failed,p50_ms,p99_ms,ok" >"$RESULTS"
FAILURES=0
run_one() {	# size round pos scenario [seconds]: round 0 is a warm-up, not recorded
	local size=$1 round=$2 pos=$3 scen=$4 secs=${5:-$DURATION} out tps txns failed t0 rows want lat p50 p99 ok=true
	t0=$(psql_q "SELECT clock_timestamp()")
	rm -f "$WORK"/pgbench_log.*
	set +e
	out=$(cd "$WORK" && "${AS_PG[@]}" "$BINDIR/pgbench" -h "$WORK" -p "$PORT" -U postgres -n -M prepared \
		-T "$secs" -c "$CLIENTS" -j "$CLIENTS" -D size="$size" -l \
		-f "$WORK/scale/$scen.sql" bench 2>&1)
	local rc=$?
	set -e
	tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out" | tail -1)
	txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
	failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out")
	tps=${tps:-0} txns=${txns:-0} failed=${failed:-0}
	[[ $rc -eq 0 && $failed -eq 0 && $txns -gt 0 ]] || { ok=false; echo "$out" | grep -Ei 'error|abort' | head -5 >&2; }
	# latency in microseconds is the log's third field
	lat=$(cat "$WORK"/pgbench_log.* | awk '{ print $3 }' | sort -n | awk '
{ v[NR] = $1 } END { if (NR) printf "%.3f %.3f", v[int(NR * 0.5) + 1] / 1000, v[int(NR * 0.99) + 1] / 1000; else print "0 0" }')
	read -r p50 p99 <<<"$lat"
	# a write must have left exactly one key row (and payment) per transaction
	case $scen in
		ext_write | ext_once) rows=$(psql_q "SELECT count(*) FROM idem_keys WHERE created_at >= '$t0'") want=$txns ;;
		base_write | base_once) rows=$(psql_q "SELECT count(*) FROM base_keys WHERE created_at >= '$t0'") want=$txns ;;
		digest_write | digest_once) rows=$(psql_q "SELECT count(*) FROM digest_keys WHERE created_at >= '$t0'") want=$txns ;;
		*) rows=0 want=0 ;;
	esac
	[[ $rows -eq $want ]] || { ok=false; log "CHECK FAILED: $scen wrote $rows key rows for $txns transactions"; }
	if [[ $scen == *_write || $scen == *_once ]]; then
		psql_q "DELETE FROM idem_keys WHERE created_at >= '$t0'; DELETE FROM base_keys WHERE created_at >= '$t0';
		        DELETE FROM digest_keys WHERE created_at >= '$t0'; TRUNCATE payments" >/dev/null
		psql_q "VACUUM idem_keys, base_keys, digest_keys" >/dev/null
	fi
	psql_q "CHECKPOINT" >/dev/null
	[[ $ok == true ]] || FAILURES=$((FAILURES + 1))
	((round > 0)) || { printf '  %-12s warm-up %s s, %.0f tps%s\n' "$scen" "$secs" "$tps" "$([[ $ok == true ]] || echo "  FAILED")"; return 0; }
	printf '  %-12s tps=%9.1f p50=%6.3f ms p99=%6.3f ms%s\n' "$scen" "$tps" "$p50" "$p99" "$([[ $ok == true ]] || echo "  FAILED")"
	echo "$size,$round,$pos,$scen,$tps,$txns,$failed,$p50,$p99,$ok" >>"$RESULTS"
}

SIZE_CSV=$RESULTS_DIR/scale-$TS-sizes.csv
echo "size,idem_keys_rows,idem_keys_bytes,idem_keys_index_bytes,base_keys_rows,base_keys_bytes,base_keys_index_bytes,load_s,digest_keys_rows,digest_keys_bytes,digest_keys_index_bytes" >"$SIZE_CSV"
have=0
n=${#SCENARIOS[@]}
for size in "${SIZE_LIST[@]}"; do
	log "growing both key tables to $size keys"
	t=$SECONDS
	grow_to "$have" "$size"
	have=$size
	read -r ir it ii br bt bi dr dt di < <(psql_q "SELECT (SELECT count(*) FROM idem_keys), pg_table_size('idem_keys'), pg_indexes_size('idem_keys'),
	                                             (SELECT count(*) FROM base_keys), pg_table_size('base_keys'), pg_indexes_size('base_keys'),
	                                             (SELECT count(*) FROM digest_keys), pg_table_size('digest_keys'), pg_indexes_size('digest_keys')" | tr '|' ' ')
	for want in "$ir:idem_keys" "$br:base_keys" "$dr:digest_keys"; do
		[[ ${want%%:*} -eq $([[ -n ${LOAD[${want#*:}]:-} ]] && echo "$size" || echo 0) ]] ||
			{ log "FAIL: ${want#*:} holds ${want%%:*} keys, not $size"; exit 1; }
	done
	echo "$size,$ir,$it,$ii,$br,$bt,$bi,$((SECONDS - t)),$dr,$dt,$di" >>"$SIZE_CSV"
	log "loaded in $((SECONDS - t)) s (B/key of a table not loaded: 0): idem_keys $(((it + ii) / size)) B/key ($((ii / size)) in indexes), base_keys $(((bt + bi) / size)) B/key ($((bi / size)) in indexes), digest_keys $(((dt + di) / size)) B/key ($((di / size)) in indexes)"
	if [[ -n ${LOAD[idem_keys]:-} ]]; then
		st=$(psql_q "SELECT status FROM idem_begin(md5('1')::uuid::text, '$REQ'::jsonb)")
		[[ $st == replay ]] || { log "FAIL: a stored key answered $st, not replay"; exit 1; }
	fi
	if ((WARMUP > 0)); then
		log "size $size, warm-up: ${WARMUP} s of each scenario"
		for scen in "${SCENARIOS[@]}"; do run_one "$size" 0 0 "$scen" "$WARMUP"; done
	fi
	for ((round = 1; round <= ROUNDS; round++)); do
		log "size $size, round $round/$ROUNDS"
		for ((i = 0; i < n; i++)); do
			run_one "$size" "$round" "$((i + 1))" "${SCENARIOS[(i + round - 1) % n]}"
		done
	done
done

echo
echo "### Cost against the number of keys (medians of $ROUNDS rounds, ${DURATION}s each, $CLIENTS clients, synchronous_commit off, shared_buffers $SHARED_BUFFERS)"
echo
awk -F, -v first="${SIZE_LIST[0]}" '
FNR == 1 { next }
FILENAME ~ /sizes/ { ib[$1] = ratio($3 + $4, $2); bb[$1] = ratio($6 + $7, $5); db[$1] = ratio($10 + $11, $9); next }
{ k = $1 SUBSEP $4; n[k]++; tps[k, n[k]] = $5; p99[k, n[k]] = $9; sizes[$1] = 1 }
function med(arr, k, cnt,   i, j, x, v) {
	if (cnt == 0) return 0
	for (i = 1; i <= cnt; i++) v[i] = arr[k, i]
	for (i = 1; i <= cnt; i++) for (j = i + 1; j <= cnt; j++) if (v[j] < v[i]) { x = v[i]; v[i] = v[j]; v[j] = x }
	return cnt % 2 ? v[(cnt + 1) / 2] : (v[cnt / 2] + v[cnt / 2 + 1]) / 2
}
function ratio(a, b) { return b > 0 ? a / b : 0 }
END {
	print "| keys | path | ext tps | base tps | ext / base | ext / ext at " first " | base / base at " first " | ext p99 ms | base p99 ms | B/key ext | B/key base | digest tps | digest / base | digest / digest at " first " | digest p99 ms | B/key digest |"
	print "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
	split("write replay once", paths, " ")
	ns = 0; for (s in sizes) sl[++ns] = s + 0
	for (i = 1; i <= ns; i++) for (j = i + 1; j <= ns; j++) if (sl[j] < sl[i]) { x = sl[i]; sl[i] = sl[j]; sl[j] = x }
	for (i = 1; i <= ns; i++) {
		s = sl[i]
		for (p = 1; p <= 3; p++) {
			e = s SUBSEP "ext_" paths[p]; b = s SUBSEP "base_" paths[p]
			e0 = first SUBSEP "ext_" paths[p]; b0 = first SUBSEP "base_" paths[p]
			d = s SUBSEP "digest_" paths[p]; d0 = first SUBSEP "digest_" paths[p]
			et = med(tps, e, n[e]); bt = med(tps, b, n[b]); dt = med(tps, d, n[d])
			printf "| %d | %s | %.0f | %.0f | %.3f | %.3f | %.3f | %.3f | %.3f | %.0f | %.0f | %.0f | %.3f | %.3f | %.3f | %.0f |\n", s, paths[p], et, bt,
				ratio(et, bt), ratio(et, med(tps, e0, n[e0])), ratio(bt, med(tps, b0, n[b0])),
				med(p99, e, n[e]), med(p99, b, n[b]), ib[s], bb[s],
				dt, ratio(dt, bt), ratio(dt, med(tps, d0, n[d0])), med(p99, d, n[d]), db[s]
		}
	}
}' "$SIZE_CSV" "$RESULTS"
echo
echo "ext / base: the extension against plain SQL on a table of the same size, same run; ext / ext at the first size: the goal is >= 0.9 at 10^7."
echo "digest: plain SQL on digest_keys, whose primary key is a 16-byte digest of the key (md5) instead of the text pair (scope, key)."
echo "CSV: ${RESULTS#"$BENCH_DIR/"}, ${SIZE_CSV#"$BENCH_DIR/"}"
((FAILURES == 0)) || { echo "FAIL: $FAILURES run(s) failed their check"; exit 1; }
