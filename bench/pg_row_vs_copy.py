"""One row per group commit (what the PostgreSQL journal does) against one
row per record written with COPY, each group in its own transaction, on
the same local PostgreSQL 15: commits/s and records/s for groups of 30
records of 300 bytes (scenario 2's measured ~27 jobs per commit).

    python3 -m venv /tmp/pgv && /tmp/pgv/bin/pip install "psycopg[binary]"
    /tmp/pgv/bin/python bench/pg_row_vs_copy.py postgresql://emq@127.0.0.1:PORT/postgres

(a cluster as bench/run.py's PgCluster makes one; N and GROUP in the
environment). Both forms are interleaved, three rounds each."""
import os, sys, time, psycopg
url = sys.argv[1]
GROUP, SIZE, N = int(os.environ.get("GROUP", 30)), 300, int(os.environ.get("N", 2000))
rec = os.urandom(SIZE)
with psycopg.connect(url, autocommit=True) as c:
    c.execute("DROP TABLE IF EXISTS t_row, t_copy")
    c.execute("CREATE TABLE t_row (seq bigserial PRIMARY KEY, epoch bigint, batch bigint, body bytea)")
    c.execute("CREATE TABLE t_copy (seq bigserial PRIMARY KEY, epoch bigint, batch bigint, msgid text, body bytea)")
    res = {"row": [], "copy": []}
    for rnd in range(3):
        t = time.perf_counter()
        for i in range(N):
            c.execute("INSERT INTO t_row (epoch, batch, body) VALUES (%s, %s, %s)", (1, i, rec * GROUP), prepare=True)
        res["row"].append(N / (time.perf_counter() - t))
        t = time.perf_counter()
        for i in range(N):
            with c.transaction():
                with c.cursor().copy("COPY t_copy (epoch, batch, msgid, body) FROM STDIN (FORMAT BINARY)") as cp:
                    cp.set_types(["int8", "int8", "text", "bytea"])
                    for k in range(GROUP):
                        cp.write_row((1, i, "m%d-%d" % (i, k), rec))
        res["copy"].append(N / (time.perf_counter() - t))
    for k, v in res.items():
        v.sort()
        print("%-5s commits/s median %.0f (%.0f-%.0f), records/s %.0f" % (k, v[1], v[0], v[2], v[1] * GROUP))
    for t in ("t_row", "t_copy"):
        print(t, c.execute("SELECT pg_size_pretty(pg_total_relation_size(%s))", (t,)).fetchone()[0])
