#!/usr/bin/env bash
# End-to-end test of the libpq example; run by examples/run-tests.sh with
# PGHOST/PGPORT/PGUSER/PGDATABASE set.  Runs 8 copies of idem_worker at once on
# the same keys (under SERIALIZABLE, with wait => false, pipelined under READ
# COMMITTED and SERIALIZABLE) and checks that each key did its work once and that
# every copy got the same answer for it.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
make -s BIN="$tmp/idem_worker"
export PGOPTIONS='-c statement_timeout=10s -c lock_timeout=10s -c client_min_messages=warning'
SERIALIZABLE='-c default_transaction_isolation=serializable'
PROCS=8
passed=0 failed=0
declare -A retries  # retries[ROUND.KIND], summed over the workers of a round

check() {  # check NAME COMMAND...
    if "${@:2}"; then passed=$((passed + 1)); echo "ok - $1"
    else failed=$((failed + 1)); echo "FAILED - $1"; fi
}
sql() { psql -X -q -At -v ON_ERROR_STOP=1 -c "$1"; }

sql "DROP TABLE IF EXISTS orders"
psql -X -q -v ON_ERROR_STOP=1 -f schema.sql   # orders (no UNIQUE (key)) and create_order(jsonb)

# round NAME OPTIONS KEYS: PROCS workers at once; their outputs in $tmp/NAME.*
round() {
    local name=$1 opts=$2 keys=$3 pids=() i ok=true
    for i in $(seq 1 $PROCS); do
        # shellcheck disable=SC2086
        timeout 30 "$tmp/idem_worker" $opts "$i" $keys >"$tmp/$name.out.$i" 2>"$tmp/$name.err.$i" &
        pids+=($!)
    done
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || { ok=false; cat "$tmp/$name.err.$((i + 1))" >&2; }
    done
    check "$name: all $PROCS workers succeeded" $ok
    { grep -h '^key=' "$tmp/$name".out.* || true; } | sort >"$tmp/$name.all"
    local nkeys; nkeys=$(wc -w <<<"$keys")
    check "$name: every worker answered every key" \
        test "$(wc -l <"$tmp/$name.all")" -eq $((PROCS * nkeys))
    # the answer a key gets (code and body) must not depend on who asked or when
    sed -E 's/ status=[a-z_]+ attempts=[0-9]+//' "$tmp/$name.all" | sort -u >"$tmp/$name.answers"
    check "$name: all workers printed the same response per key" \
        test "$(wc -l <"$tmp/$name.answers")" -eq "$nkeys"
    check "$name: exactly one worker did the work per key" \
        test "$(grep -c ' status=done ' "$tmp/$name.all")" -eq "$nkeys"
    # ... and that answer describes the one business row of the key
    local in; in=$(sed "s/[^ ]*/'&'/g; s/ /,/g" <<<"$keys")
    sql "SELECT 'key=' || key || ' code=201 body='
                || jsonb_build_object('order_id', id, 'worker', worker, 'amount', amount)
           FROM orders WHERE key IN ($in)" | sort >"$tmp/$name.rows"
    check "$name: one business row per key, and it is the response" \
        cmp -s "$tmp/$name.rows" "$tmp/$name.answers"
    for f in serialization deadlock in_progress; do
        retries[$name.$f]=$(sed -nE "s/.* ${f}_retries=([0-9]+).*/\1/p" "$tmp/$name".out.* |
            awk '{s += $1} END {print s + 0}')
    done
}

# 1. wait => true (default) on the unix socket, SERIALIZABLE: the copies queue
#    behind the first; when it commits their snapshots (taken when their
#    statement started) cannot see its record, so they get 40001, run the
#    statement again, and get replay.
PGOPTIONS="$PGOPTIONS $SERIALIZABLE" round wait "-d 30" "k1 k2 k3"
echo "wait: serialization retries ${retries[wait.serialization]}, deadlock retries ${retries[wait.deadlock]}"
check "wait: 40001 happened and was retried" test "${retries[wait.serialization]}" -gt 0

# 2. wait => false over TCP: the copies get in_progress, back off and retry.
#    That they meet each other depends on how the machine schedules them, so
#    another session holds n1 begun until idem_stats has counted a copy's
#    in_progress, then lets it go (no wait here depends on the machine's speed).
in_progress() {
    sql "SELECT in_progress FROM idem_stats WHERE datname = current_database()"
}
before=$(in_progress)
mkfifo "$tmp/holder.in"
psql -X -q -At -v ON_ERROR_STOP=1 <"$tmp/holder.in" >"$tmp/holder.out" 2>&1 &
holder=$!
exec 7>"$tmp/holder.in"
echo "BEGIN; SELECT status FROM idem_begin('n1', '{}'::jsonb, 'orders-api');" >&7
for _ in $(seq 600); do [ -s "$tmp/holder.out" ] && break; sleep 0.05; done
check "nowait: another session holds n1 begun" test "$(cat "$tmp/holder.out")" = started
( for _ in $(seq 600); do
      [ "$(in_progress)" -gt "$before" ] && break
      sleep 0.05
  done
  echo "ROLLBACK;" >&7 ) &
releaser=$!
PGHOST=127.0.0.1 round nowait "-n -d 30" "n1 n2 n3"
wait "$releaser"
exec 7>&-
wait "$holder" || true
echo "nowait: in_progress retries ${retries[nowait.in_progress]}, serialization retries ${retries[nowait.serialization]}"
check "nowait: in_progress happened and was retried" test "${retries[nowait.in_progress]}" -gt 0

# 3. wait => true, READ COMMITTED, every worker's requests in one pipeline:
#    the copies wait for the first and get its replay directly, no 40001.
round pipeline "-P -d 30" "p1 p2 p3 p4 p5"
echo "pipeline: serialization retries ${retries[pipeline.serialization]}, in_progress retries ${retries[pipeline.in_progress]}"
check "pipeline: under READ COMMITTED a waiter replays without 40001" \
    test "${retries[pipeline.serialization]}" -eq 0 -a "${retries[pipeline.in_progress]}" -eq 0
check "pipeline: waiters were answered by replay" \
    test "$(grep -c ' status=replay ' "$tmp/pipeline.all")" -eq $(( (PROCS - 1) * 5 ))

# 4. pipelined under SERIALIZABLE: a waiter's 40001 is an error result inside
#    the pipeline; its sync ends it there, the other statements go on, and the
#    next round sends it again and gets replay.
PGOPTIONS="$PGOPTIONS $SERIALIZABLE" round pipeline_ser "-P -d 30" "s1 s2 s3"
echo "pipeline_ser: serialization retries ${retries[pipeline_ser.serialization]}"
check "pipeline_ser: 40001 happened and was retried" test "${retries[pipeline_ser.serialization]}" -gt 0

# 5. the same key with a different request: 422, nothing written
out=$("$tmp/idem_worker" -a 999 9 k1) || true
echo "$out" | head -1
check "mismatch: a reused key with another body gets 422" grep -q '^key=k1 status=mismatch .* code=422 ' <<<"$out"
check "mismatch: no second business row" test "$(sql "SELECT count(*) FROM orders WHERE key = 'k1'")" -eq 1

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
