# shellcheck shell=bash
# Shared set-up of the benchmark runners (bench/run.sh, soak.sh, sweeper.sh):
# a throwaway cluster in a private temp dir, reachable only through a unix
# socket in that dir, removed on exit.  Sourced, not run.
#
# The caller sets PROG (its name in messages), KEEP and PG_CONFIG, then:
#   bench_init                   BENCH_DIR BINDIR PKGLIBDIR AS_PG
#   bench_workdir PREFIX FILE..  WORK DATA PORT, the exit trap; copies FILEs
#                                (paths under bench/) into WORK and cd's there
#   bench_start_cluster <<EOF    initdb + start + createdb bench; stdin is
#   ...                          appended to postgresql.conf after the common
#   EOF                          lines (socket, port, shared_preload_libraries)
#   psql_q SQL                   one query on database bench, unaligned, -At
#   bench_set NAME VALUE         ALTER SYSTEM SET + reload; returns once new
#                                sessions see VALUE (exits after 5 s if not)
#   bench_bg CMD...              run CMD in the background; it is killed (by
#                                its pid) on exit; its pid is in BG_PID
#   bench_bg_done PID [kill]     wait for (or kill, then wait for) such a
#                                command; returns its exit status
#   bench_paired CSV A B         per scenario, the median of the per-round
#                                ratios A/B of a CSV round,scenario,arm,tps,...
#                                with a distribution-free 95% interval
# BENCH_FAIL_RC, if set, replaces any other non-zero exit status (except
# 130/143 for SIGINT/SIGTERM).

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }

bench_init() {
	BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
	BINDIR=$("$PG_CONFIG" --bindir)
	PKGLIBDIR=$("$PG_CONFIG" --pkglibdir)
	[[ -e $PKGLIBDIR/idempotency.so ]] || { echo "$PROG: $PKGLIBDIR/idempotency.so not found; run make install first" >&2; exit 2; }

	if [[ $EUID -eq 0 ]]; then
		AS_PG=(runuser -u postgres --)
	elif [[ $(id -un) == postgres ]]; then
		AS_PG=()
	else
		echo "$PROG: run as root or as postgres" >&2
		exit 2
	fi
	STARTED=0
	BG_PIDS=()
}

# shellcheck disable=SC2153  # KEEP is the caller's setting
bench_cleanup() {
	local rc=$? pid
	set +e
	for pid in "${BG_PIDS[@]}"; do
		kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	done
	if [[ $STARTED == 1 ]]; then
		"${AS_PG[@]}" "$BINDIR/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null 2>&1
	fi
	if [[ $KEEP == 1 ]]; then
		echo "KEEP=1: cluster directory left in $WORK"
	else
		rm -rf "$WORK"
	fi
	if [[ -n ${BENCH_FAIL_RC:-} && $rc -ne 0 && $rc -ne 130 && $rc -ne 143 ]]; then
		rc=$BENCH_FAIL_RC
	fi
	exit "$rc"
}

bench_workdir() {	# prefix file...
	local prefix=$1 f
	shift
	WORK=$(mktemp -d "${TMPDIR:-/tmp}/$prefix.XXXXXX")
	DATA=$WORK/data
	trap bench_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM

	# Everything the postgres user reads lives in $WORK (the checkout may not be
	# readable or may be someone's home directory); run from there too.
	chmod 700 "$WORK"
	for f in "$@"; do
		cp -r "$BENCH_DIR/$f" "$WORK/"
	done
	[[ ${#AS_PG[@]} -eq 0 ]] || chown -R postgres: "$WORK"
	cd "$WORK" || exit 1

	# The server listens on a unix socket in $WORK only (listen_addresses = ''),
	# so the port just names the socket; pick one no TCP listener uses anyway.
	PORT=$((20000 + RANDOM % 30000))
	if command -v ss >/dev/null; then
		while ss -Hltn "sport = :$PORT" | grep -q .; do PORT=$((PORT + 1)); done
	fi
}

psql_q() {	# one query, unaligned tuples-only output
	"${AS_PG[@]}" "$BINDIR/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$WORK" -p "$PORT" -U postgres -d bench -c "$1"
}

bench_set() {	# name value
	psql_q "ALTER SYSTEM SET $1 = '$2'" >/dev/null
	psql_q "SELECT pg_reload_conf()" >/dev/null
	for _ in $(seq 50); do
		[[ $(psql_q "SHOW $1") == "$2" ]] && return 0
		sleep 0.1
	done
	echo "$PROG: $1 did not become $2" >&2
	exit 1
}

bench_start_cluster() {	# extra postgresql.conf lines on stdin
	log "initdb in $WORK (PostgreSQL $("$BINDIR/postgres" --version | awk '{print $NF}'), $(nproc) CPUs)"
	"${AS_PG[@]}" "$BINDIR/initdb" -D "$DATA" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$WORK/initdb.log" 2>&1 \
		|| { cat "$WORK/initdb.log" >&2; exit 1; }
	{
		cat <<EOF

# --- idempotency benchmark ---
listen_addresses = ''
unix_socket_directories = '$WORK'
port = $PORT
shared_preload_libraries = 'idempotency'
EOF
		cat
	} >>"$DATA/postgresql.conf"
	"${AS_PG[@]}" "$BINDIR/pg_ctl" -D "$DATA" -l "$WORK/server.log" -w start >/dev/null \
		|| { cat "$WORK/server.log" >&2; exit 1; }
	STARTED=1
	"${AS_PG[@]}" "$BINDIR/createdb" -h "$WORK" -p "$PORT" -U postgres bench
}

bench_bg() {	# command...: run in the background, killed on exit
	"$@" &
	BG_PID=$!
	BG_PIDS+=("$BG_PID")
}

bench_bg_done() {	# pid [kill]
	local pid=$1 rc=0 p keep=()
	[[ ${2:-} != kill ]] || kill "$pid" 2>/dev/null || true
	wait "$pid" || rc=$?
	for p in "${BG_PIDS[@]}"; do
		[[ $p == "$pid" ]] || keep+=("$p")
	done
	BG_PIDS=("${keep[@]}")
	return $rc
}

# The median of the per-round ratios tps(A) / tps(B), per scenario, of a CSV
# whose columns start round,scenario,arm,tps; and a distribution-free 95%
# interval for it: the order statistics k and n-k+1 of the sorted ratios,
# k = floor((n - 1.96 sqrt(n)) / 2), as for a sign test.  Prints whether the
# interval is within +/-2%.
bench_paired() {	# csv A B
	awk -F, -v A="$2" -v B="$3" '
NR > 1 { t[$2, $3, $1] = $4; scen[$2] = 1; rounds[$1] = 1 }
END {
	for (s in scen) {
		n = 0
		for (r in rounds)
			if ((s, A, r) in t && (s, B, r) in t && t[s, B, r] > 0)
				q[++n] = t[s, A, r] / t[s, B, r]
		for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (q[j] < q[i]) { x = q[i]; q[i] = q[j]; q[j] = x }
		med = n % 2 ? q[(n + 1) / 2] : (q[n / 2] + q[n / 2 + 1]) / 2
		k = int((n - 1.96 * sqrt(n)) / 2); if (k < 1) k = 1
		printf "  %-11s n=%-3d median %.4f  95%% [%.4f, %.4f]  %s\n", s, n, med, q[k], q[n - k + 1],
			(q[n - k + 1] - q[k]) / 2 <= 0.02 ? "resolves 2%" : "does not resolve 2%"
		delete q
	}
}' "$1" | sort
}
