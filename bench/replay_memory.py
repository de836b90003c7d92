#!/usr/bin/python3
"""How much memory a replay of a large stored response takes, as a multiple
of the body.

    bench/replay_memory.py DSN [MB ...]     e.g. bench/replay_memory.py \
        "host=/tmp port=5432 dbname=postgres user=postgres" 20 100 200

For each size, stores a bytea body (response_bytes) and a jsonb body
(response_body) of MB megabytes under scope 'bench-replay-memory', then
replays each in a fresh backend (idem_begin_full / idem_begin, the result
fetched by the client) and reads that backend's peak resident memory
(VmHWM in /proc/PID/status), minus a fresh backend's after SELECT 1.  The
server must run on this machine, as a user whose /proc entries this script
can read (run it as root or as the server's user), with the extension
installed and idempotency.max_response_size unset.  The keys are deleted at
the end.  About a minute for the default sizes.
"""
import sys

import psycopg

SCOPE = "bench-replay-memory"


def peak_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for backend {pid}")


def measure(dsn, sql, binary=False):
    with psycopg.connect(dsn, autocommit=True) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        conn.cursor().execute(sql, binary=binary).fetchall()
        return peak_kb(pid)


def store(conn, mb):
    conn.execute("DELETE FROM idem_keys WHERE scope = %s", (SCOPE,))
    size = mb << 20
    with conn.transaction():
        conn.execute("SELECT idem_begin('bytes', 'r'::text, %s)", (SCOPE,))
        conn.execute("SELECT idem_finish('bytes', 200, NULL, %s, NULL, NULL,"
                     " convert_to(repeat('x', %s), 'UTF8'))", (SCOPE, size))
    with conn.transaction():
        conn.execute("SELECT idem_begin('json', 'r'::text, %s)", (SCOPE,))
        conn.execute("SELECT idem_finish('json', 200,"
                     " jsonb_build_object('pad', repeat('x', %s)), %s)", (size, SCOPE))


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    dsn = sys.argv[1]
    sizes = [int(a) for a in sys.argv[2:]] or [20, 100, 200]
    scope = psycopg.sql.Literal(SCOPE)
    replays = [
        ("bytea body, text format",
         psycopg.sql.SQL("SELECT * FROM idem_begin_full('bytes', 'r'::text, {})").format(scope), False),
        ("bytea body, binary format",
         psycopg.sql.SQL("SELECT * FROM idem_begin_full('bytes', 'r'::text, {})").format(scope), True),
        ("jsonb body",
         psycopg.sql.SQL("SELECT * FROM idem_begin('json', 'r'::text, {})").format(scope), False),
    ]
    print("| body | replay of | peak memory over a fresh backend | multiple of the body |")
    print("|---|---|---|---|")
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            for mb in sizes:
                store(conn, mb)
                base = measure(dsn, "SELECT 1")
                for name, sql, binary in replays:
                    grown = (measure(dsn, sql, binary) - base) / 1024
                    print(f"| {mb} MB | {name} | {grown:.0f} MB | {grown / mb:.2f} |")
        finally:
            conn.execute("DELETE FROM idem_keys WHERE scope = %s", (SCOPE,))


if __name__ == "__main__":
    main()
