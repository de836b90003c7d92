#!/usr/bin/env bash
# The same HTTP API (POST /payments with an Idempotency-Key) built several
# ways, benchmarked in one run with wrk: no idempotency, a hand-written key
# table, the idempotency extension (five round trips, and idem_call's one),
# and two Redis middlewares from npm.  See bench/http/README.md.
#
# Makes a throwaway PostgreSQL cluster (bench/lib.sh) and a throwaway
# redis-server, starts one Node server per variant (as the postgres user),
# preloads completed keys for the replay path, runs the correctness checks
# (contention: many identical requests at once; replay; reused key), then
# ROUNDS rounds of a write run and a replay run per variant, in an order
# rotated per round.  Prints markdown tables; CSV in
# bench/results/http-<timestamp>.csv (and -checks.csv).
#
# Run as root (installs wrk and redis-server with apt-get if missing, runs
# npm ci; the servers run as postgres through runuser) after `make install`.
# Settings (environment):
#   DURATION     seconds per wrk run                            (default 10)
#   ROUNDS       rounds of all variants                         (default 5)
#   CONNECTIONS  wrk -c                                         (default 16)
#   THREADS      wrk -t                                         (default 2)
#   VARIANTS     which variants, space-separated                (default: all)
#   NKEYS        completed keys per variant for the replay path (default 1000)
#   WARMUP       seconds of untimed write load per variant before round 1 (default 2)
#   CONTENTION_KEYS, COPIES  keys, and identical requests per key sent at once (200, 8)
#   PG_CONFIG    pg_config of the server                        (default: pg_config in PATH,
#                else /usr/lib/postgresql/15/bin/pg_config)
#   KEEP=1       keep the temporary directory (cluster, server logs, wrk output)
#   RESULTS_DIR  where the CSV goes                             (default bench/results)
# Exit status: 0 whatever the speed; 1 if a variant that claims exactly-once
# (handwritten, ext_classic, ext_call) paid twice for a key; 2 on bad settings.
# Smoke test:  DURATION=2 ROUNDS=1 bench/http/run.sh
set -euo pipefail

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-5}
CONNECTIONS=${CONNECTIONS:-16}
THREADS=${THREADS:-2}
NKEYS=${NKEYS:-1000}
WARMUP=${WARMUP:-2}
CONTENTION_KEYS=${CONTENTION_KEYS:-200}
COPIES=${COPIES:-8}
KEEP=${KEEP:-0}
if [[ -z ${PG_CONFIG:-} ]]; then
	PG_CONFIG=$(command -v pg_config || echo /usr/lib/postgresql/15/bin/pg_config)
fi

for v in DURATION ROUNDS CONNECTIONS THREADS NKEYS CONTENTION_KEYS COPIES; do
	[[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "http/run.sh: $v must be a positive integer" >&2; exit 2; }
done
[[ $WARMUP =~ ^[0-9]+$ ]] || { echo "http/run.sh: WARMUP must be a non-negative integer" >&2; exit 2; }
((THREADS <= CONNECTIONS)) || { echo "http/run.sh: THREADS must not exceed CONNECTIONS" >&2; exit 2; }

ALL_VARIANTS=(none handwritten ext_classic ext_call express_idempotency node_idempotency)
read -r -a VARIANTS <<<"${VARIANTS:-${ALL_VARIANTS[*]}}"
((${#VARIANTS[@]})) || { echo "http/run.sh: VARIANTS is empty" >&2; exit 2; }
for v in "${VARIANTS[@]}"; do
	[[ " ${ALL_VARIANTS[*]} " == *" $v "* ]] || { echo "http/run.sh: unknown variant $v (one of: ${ALL_VARIANTS[*]})" >&2; exit 2; }
done
uses_redis() { [[ $1 == express_idempotency || $1 == node_idempotency ]]; }

HTTP_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROG=http/run.sh
# shellcheck source=bench/lib.sh
. "$HTTP_DIR/../lib.sh"

# --- what the run needs ---------------------------------------------------
NEED_REDIS=0
for v in "${VARIANTS[@]}"; do uses_redis "$v" && NEED_REDIS=1; done
MISSING=()
command -v wrk >/dev/null || MISSING+=(wrk)
[[ $NEED_REDIS == 0 ]] || command -v redis-server >/dev/null || MISSING+=(redis-server)
if ((${#MISSING[@]})); then
	[[ $EUID -eq 0 ]] || { echo "$PROG: needs ${MISSING[*]}: apt-get install -y ${MISSING[*]} (or run as root)" >&2; exit 2; }
	log "installing ${MISSING[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${MISSING[@]}" >/dev/null \
		|| { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${MISSING[@]}" >/dev/null; }
fi
command -v node >/dev/null || { echo "$PROG: needs Node.js 20 or later (node)" >&2; exit 2; }
NODE_MAJOR=$(node -p 'process.versions.node.split(".")[0]')
((NODE_MAJOR >= 20)) || { echo "$PROG: needs Node.js 20 or later, found $(node --version)" >&2; exit 2; }
if [[ ! -e $HTTP_DIR/node_modules/.package-lock.json \
	|| $HTTP_DIR/package-lock.json -nt $HTTP_DIR/node_modules/.package-lock.json \
	|| $HTTP_DIR/package.json -nt $HTTP_DIR/node_modules/.package-lock.json ]]; then
	log "npm ci in bench/http"
	(cd "$HTTP_DIR" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

bench_init
TS=$(date +%Y%m%d-%H%M%S)
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results}
mkdir -p "$RESULTS_DIR"
RESULTS=$RESULTS_DIR/http-$TS.csv
CHECKS_CSV=$RESULTS_DIR/http-$TS-checks.csv

bench_workdir idem-http http/servers http/tools http/wrk http/node_modules http/package.json http/setup.sql

bench_start_cluster <<EOF
idempotency.sweeper = off
shared_buffers = 256MB
fsync = on
synchronous_commit = on
full_page_writes = on
# checkpoints only where run.sh asks for one (before every wrk run);
# vacuum only there too, so that WAL per request is the requests' own
autovacuum = off
checkpoint_timeout = 1h
max_wal_size = 4GB
log_checkpoints = off
max_connections = 100
EOF

# --- schema ---------------------------------------------------------------
# The extension in a schema of its own, as the one-round-trip spec names it
# (idempotency.idem_call); if the installed version insists on another schema,
# wherever it goes.  The servers are told which (IDEM_SCHEMA).
if ! psql_q "CREATE SCHEMA idempotency; CREATE EXTENSION idempotency WITH SCHEMA idempotency" >/dev/null 2>"$WORK/ext.err"; then
	psql_q "CREATE EXTENSION idempotency" >/dev/null
fi
psql_q "SET client_min_messages = warning; ALTER EXTENSION idempotency UPDATE" >/dev/null
IDEM_SCHEMA=$(psql_q "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'idempotency'")
S=$(psql_q "SELECT quote_ident('$IDEM_SCHEMA')")
EXT_VERSION=$(psql_q "SELECT extversion FROM pg_extension WHERE extname = 'idempotency'")
"${AS_PG[@]}" "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$WORK" -p "$PORT" -U postgres -d bench -f "$WORK/setup.sql" >/dev/null

SKIPPED=()
if [[ " ${VARIANTS[*]} " == *" ext_call "* ]]; then
	if [[ -n $(psql_q "SELECT 1 FROM pg_proc WHERE proname = 'idem_call' AND pronamespace = '$S'::regnamespace") ]]; then
		# The app's work for ext_call, created once.
		psql_q "
CREATE FUNCTION create_payment(req jsonb) RETURNS $S.idem_response LANGUAGE plpgsql AS \$\$
DECLARE p payments;
BEGIN
  IF (req->>'amount')::int <= 0 THEN
    RETURN $S.idem_response(422, jsonb_build_object('error', 'amount must be positive'));
  END IF;
  INSERT INTO payments(idem_key, amount, to_account) VALUES (req->>'key', (req->>'amount')::int, req->>'to') RETURNING * INTO p;
  RETURN $S.idem_response(201, jsonb_build_object('id', p.id, 'amount', p.amount, 'to', p.to_account));
END \$\$" >/dev/null
	else
		log "ext_call skipped: the installed extension ($EXT_VERSION) has no idem_call"
		SKIPPED+=(ext_call)
		keep=()
		for v in "${VARIANTS[@]}"; do [[ $v == ext_call ]] || keep+=("$v"); done
		VARIANTS=("${keep[@]}")
		((${#VARIANTS[@]})) || { echo "$PROG: no variant left to run" >&2; exit 2; }
	fi
fi

free_port() {
	local p=$((20000 + RANDOM % 30000))
	while ss -Hltn "sport = :$p" | grep -q .; do p=$((p + 1)); done
	echo "$p"
}

# --- redis ----------------------------------------------------------------
REDIS_URL=
if [[ $NEED_REDIS == 1 ]]; then
	RPORT=$(free_port)
	bench_bg "${AS_PG[@]}" redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no \
		--dir "$WORK" --logfile "$WORK/redis.log" --daemonize no >/dev/null 2>&1
	for _ in $(seq 100); do
		[[ $(redis-cli -p "$RPORT" ping 2>/dev/null) == PONG ]] && break
		sleep 0.1
	done
	[[ $(redis-cli -p "$RPORT" ping 2>/dev/null) == PONG ]] || { cat "$WORK/redis.log" >&2; echo "$PROG: redis-server did not start" >&2; exit 1; }
	REDIS_URL=redis://127.0.0.1:$RPORT
fi

# --- servers --------------------------------------------------------------
PGENV=(PGHOST="$WORK" PGPORT="$PORT" PGUSER=postgres PGDATABASE=bench)
declare -A URL SPID
# On exit, stop the servers before the rest (lib.sh stops its background
# commands in the order they started, which would take redis away first).
# shellcheck disable=SC2317  # run by the EXIT trap
http_cleanup() {
	local rc=$? pid
	set +e
	for pid in "${SPID[@]}"; do
		kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	done
	(exit "$rc")
	bench_cleanup
}
trap http_cleanup EXIT
for v in "${VARIANTS[@]}"; do
	bench_bg "${AS_PG[@]}" env "${PGENV[@]}" REDIS_URL="$REDIS_URL" IDEM_SCHEMA="$IDEM_SCHEMA" \
		PORT_FILE="$WORK/$v.port" NODE_ENV=production node "$WORK/servers/$v.js" >"$WORK/$v.log" 2>&1
	SPID[$v]=$BG_PID
done
for v in "${VARIANTS[@]}"; do
	for _ in $(seq 200); do
		[[ -s $WORK/$v.port ]] && break
		kill -0 "${SPID[$v]}" 2>/dev/null || break
		sleep 0.05
	done
	[[ -s $WORK/$v.port ]] || { cat "$WORK/$v.log" >&2; echo "$PROG: the $v server did not start" >&2; exit 1; }
	URL[$v]=http://127.0.0.1:$(<"$WORK/$v.port")
done
log "PostgreSQL $(psql_q "SHOW server_version"), extension $EXT_VERSION in schema $IDEM_SCHEMA; node $(node --version); $(wrk --version 2>&1 | head -1 | awk '{print $1, $2}')$([[ $NEED_REDIS == 0 ]] || echo "; redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/')")"
log "servers up: ${VARIANTS[*]}; pool 10 connections each; wrk -t$THREADS -c$CONNECTIONS, ${DURATION}s x $ROUNDS rounds"

as_pg_node() { "${AS_PG[@]}" env "${PGENV[@]}" node "$@"; }

# --- preload, checks, warm-up --------------------------------------------
for v in "${VARIANTS[@]}"; do
	[[ $v == none ]] && continue
	out=$(as_pg_node "$WORK/tools/preload.js" "${URL[$v]}" "r-$v-" "$NKEYS") || log "WARNING: $v did not replay every preloaded key"
	log "preload $v: $NKEYS keys: $out"
done

: >"$WORK/checks.jsonl"
for v in "${VARIANTS[@]}"; do
	as_pg_node "$WORK/tools/checks.js" "$v" "${URL[$v]}" 1 "$CONTENTION_KEYS" "$COPIES" >"$WORK/checks-$v.json"
	cat "$WORK/checks-$v.json" >>"$WORK/checks.jsonl"
	# shellcheck disable=SC2016  # JavaScript, not shell
	log "checks $v: $(node -e '
const c = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
const st = Object.entries(c.statuses).map(([s, n]) => s + ":" + n).join(" ");
console.log(`${c.keys_once}/${c.keys} keys paid once, max ${c.max_payments}, statuses ${st}; replay same: ${c.replay_same}; other body: ${c.mismatch_status}; no key: ${c.missing_key_status}`);
' "$WORK/checks-$v.json")"
done

WRK=(wrk -t"$THREADS" -c"$CONNECTIONS" --timeout 10s --latency -s "$WORK/wrk/post.lua")
if ((WARMUP > 0)); then
	log "warm-up: ${WARMUP}s of writes per variant"
	for v in "${VARIANTS[@]}"; do
		"${WRK[@]}" -d"${WARMUP}s" "${URL[$v]}" -- write "warm-$v" >"$WORK/wrk-warmup-$v.txt"
	done
fi

# --- the runs -------------------------------------------------------------
echo "round,position,variant,path,requests,duration_s,rps,p50_ms,p90_ms,p99_ms,max_ms,status_errors,socket_errors,wal_bytes,wal_per_req,cpu_pg_us,cpu_node_us,cpu_redis_us,cpu_other_us,idle_pct" >"$RESULTS"

# Where the machine's CPU goes during a run: clock ticks used so far by every
# postgres, node and redis-server process, then the whole machine's busy and
# idle ticks (/proc/stat; "other" is busy minus the three, wrk mostly).  The
# servers and backends live through the runs, so differences are the run's.
CLK_TCK=$(getconf CLK_TCK)
cpu_snapshot() {
	local pg=0 nd=0 rd=0 f rest comm t
	for f in /proc/[0-9]*/stat; do
		read -r rest 2>/dev/null <"$f" || continue
		comm=${rest#*(}; comm=${comm%%)*}
		case $comm in postgres|node|redis-server) ;; *) continue ;; esac
		rest=${rest##*) }
		# fields 3.. after the comm: utime and stime are the 12th and 13th
		read -r -a t <<<"$rest"
		case $comm in
			postgres) pg=$((pg + t[11] + t[12])) ;;
			node) nd=$((nd + t[11] + t[12])) ;;
			redis-server) rd=$((rd + t[11] + t[12])) ;;
		esac
	done
	read -r -a t </proc/stat	# cpu user nice system idle iowait irq softirq steal
	echo "$pg $nd $rd $((t[1] + t[2] + t[3] + t[6] + t[7] + t[8])) $((t[4] + t[5]))"
}

run_one() {	# round position variant path
	local r=$1 pos=$2 v=$3 path=$4 args out line lsn1 lsn2 wal c1 c2
	if [[ $path == write ]]; then args=(write "w$r-$v"); else args=(replay "r-$v-" "$NKEYS"); fi
	psql_q "VACUUM (ANALYZE) payments, hw_keys, $S.idem_keys" >/dev/null
	psql_q "CHECKPOINT" >/dev/null
	lsn1=$(psql_q "SELECT pg_current_wal_lsn()")
	c1=$(cpu_snapshot)
	out=$("${WRK[@]}" -d"${DURATION}s" "${URL[$v]}" -- "${args[@]}")
	c2=$(cpu_snapshot)
	lsn2=$(psql_q "SELECT pg_current_wal_lsn()")
	wal=$(psql_q "SELECT pg_wal_lsn_diff('$lsn2', '$lsn1')")
	printf '%s\n' "$out" >"$WORK/wrk-$r-$v-$path.txt"
	line=$(grep '^WRK ' <<<"$out") || { printf '%s\n' "$out" >&2; echo "$PROG: no result from wrk ($v $path)" >&2; exit 1; }
	awk -v r="$r" -v pos="$pos" -v v="$v" -v path="$path" -v wal="$wal" -v c1="$c1" -v c2="$c2" -v tck="$CLK_TCK" '
{ for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] } }
END {
	d = f["duration_us"] / 1e6
	n = f["requests"] > 0 ? f["requests"] : 1
	split(c1, a, " "); split(c2, b, " ")
	for (i = 1; i <= 5; i++) c[i] = b[i] - a[i]
	us = 1e6 / tck / n
	printf "%d,%d,%s,%s,%d,%.3f,%.1f,%.3f,%.3f,%.3f,%.3f,%d,%d,%d,%.1f,%.1f,%.1f,%.1f,%.1f,%.1f\n", r, pos, v, path, f["requests"], d,
		f["requests"] / d, f["p50_us"] / 1000, f["p90_us"] / 1000, f["p99_us"] / 1000, f["max_us"] / 1000,
		f["status_errors"], f["socket_errors"], wal, (f["requests"] > 0 ? wal / f["requests"] : 0),
		c[1] * us, c[2] * us, c[3] * us, (c[4] - c[1] - c[2] - c[3]) * us, (c[4] + c[5] > 0 ? 100 * c[5] / (c[4] + c[5]) : 0)
}' <<<"$line" >>"$RESULTS"
	tail -n 1 "$RESULTS" | awk -F, '{ printf "  %-20s %-6s %9.0f req/s  p99 %7.2f ms  errors %d  WAL %.1f B/req  CPU us/req pg %.0f node %.0f other %.0f idle %.0f%%\n", $3, $4, $7, $10, $12 + $13, $15, $16, $17, $19, $20 }'
}

N=${#VARIANTS[@]}
for ((r = 1; r <= ROUNDS; r++)); do
	ORDER=()
	for ((i = 0; i < N; i++)); do ORDER+=("${VARIANTS[(i + r - 1) % N]}"); done
	log "round $r/$ROUNDS: ${ORDER[*]}"
	pos=0
	for v in "${ORDER[@]}"; do
		pos=$((pos + 1))
		run_one "$r" "$pos" "$v" write
		[[ $v == none ]] || run_one "$r" "$pos" "$v" replay
	done
done

# --- report ---------------------------------------------------------------
for v in "${VARIANTS[@]}"; do
	if grep -q . "$WORK/$v.log" && grep -qiv 'listening on' "$WORK/$v.log"; then
		log "the $v server logged:"; grep -iv 'listening on' "$WORK/$v.log" | head -20 >&2
	fi
done
echo
FAILED=0
node "$HTTP_DIR/tools/summary.js" "$RESULTS" "$WORK/checks.jsonl" "$CHECKS_CSV" || FAILED=1
echo
echo "write: a fresh Idempotency-Key per request; replay: the same body with one of $NKEYS completed keys (none has no replay)."
echo "ratios against none's write median; WAL: pg_current_wal_lsn() around each run, after VACUUM and CHECKPOINT (so every run starts with full-page writes), divided by the requests wrk completed."
echo "errors: wrk's responses with status >= 400 plus socket errors and timeouts, write and replay runs together (every request there expects 201)."
[[ ${#SKIPPED[@]} -eq 0 ]] || echo "skipped: ${SKIPPED[*]} (the installed extension $EXT_VERSION has no idem_call)"
echo "CSV: ${RESULTS#"$(cd "$HTTP_DIR/../.." && pwd)"/}, ${CHECKS_CSV#"$(cd "$HTTP_DIR/../.." && pwd)"/}"
exit "$FAILED"
