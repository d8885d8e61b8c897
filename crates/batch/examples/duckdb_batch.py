#!/usr/bin/env python3
"""Runs the batch layer's SQL in DuckDB over the same Parquet archive, for scripts/bench_batch.sh.

    python duckdb_batch.py run SQL_JSON OUT_DIR [--threads N]
    python duckdb_batch.py compare CARTPULSE_VIEWS DUCKDB_OUT [--full]

`run` reads the statements printed by `crates/batch/examples/dump_sql.rs` (every statement
`cartpulse batch --complete` executes, per day and view, with the archive files that day
registers as `events`) and executes them as cartpulse does: per day, `events` is a view over
exactly those files (the same pruning), each view's result is written with
`COPY (...) TO 'OUT/<view>/dt=<day>/part-0.parquet' (FORMAT parquet, COMPRESSION zstd)`;
then the total views over the daily outputs, then `baskets.txt`. Prints per-view seconds and
rows as JSON on stdout.

The DataFusion SQL is adapted to DuckDB's dialect mechanically, by `adapt` below (each
rewrite is listed there and in BENCHMARKS.md).

`compare` checks DuckDB's outputs against cartpulse's views: row counts and column sums for
every view, and with --full a row-by-row EXCEPT ALL in both directions (doubles rounded to
9 places).
"""
import json
import os
import re
import sys
import time

import duckdb

# (pattern, replacement, why) — applied in order to every statement
ADAPTATIONS = [
    (r"CAST\(ts AS BIGINT\)", "epoch_ms(ts)",
     "ts is TIMESTAMPTZ(ms); DuckDB does not cast a timestamp to BIGINT"),
    (r"to_timestamp_millis\(", "epoch_ms(",
     "epoch_ms(BIGINT) is DuckDB's milliseconds-to-TIMESTAMP"),
    (r"\) / 3600000 AS INT\)", ") // 3600000 AS INT)",
     "DataFusion's BIGINT / BIGINT is integer division, DuckDB's `/` is a DOUBLE division "
     "(and CAST(double AS INT) rounds)"),
    (r"CAST\((a\.day|f\.cohort_day) AS INT\)", r"(\1 - DATE '1970-01-01')",
     "DataFusion casts DATE to INT (days since 1970); DuckDB refuses, DATE - DATE is days"),
]


def adapt(sql):
    for pat, rep, _ in ADAPTATIONS:
        sql = re.sub(pat, rep, sql)
    return sql


def q(path):
    return "'" + str(path).replace("'", "''") + "'"


def copy_to(con, sql, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    r = con.execute(
        f"COPY ({sql}) TO {q(path)} (FORMAT parquet, COMPRESSION zstd)").fetchone()
    return int(r[0]) if r else 0


def run(sql_json, out, threads):
    plan = json.load(open(sql_json))
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET preserve_insertion_order = true")
    secs, rows = {}, {}
    t0 = time.monotonic()
    empty = None
    for day in plan["days"]:
        if day["files"]:
            files = "[" + ", ".join(q(f) for f in day["files"]) + "]"
            con.execute(f"CREATE OR REPLACE VIEW events AS SELECT * FROM read_parquet({files})")
        else:
            # no archive file in this day's input range: an empty relation of the same schema
            if empty is None:
                first = next(d["files"][0] for d in plan["days"] if d["files"])
                empty = f"SELECT * FROM read_parquet({q(first)}) LIMIT 0"
            con.execute(f"CREATE OR REPLACE VIEW events AS {empty}")
        for st in day["statements"]:
            v = st["view"]
            t = time.monotonic()
            n = copy_to(con, adapt(st["sql"]),
                        os.path.join(out, v, f"dt={day['day']}", "part-0.parquet"))
            secs[v] = secs.get(v, 0.0) + time.monotonic() - t
            rows[v] = rows.get(v, 0) + n
    t = time.monotonic()
    for v in ["user_daily", "product_daily", "orders"]:
        con.execute(
            f"CREATE OR REPLACE VIEW {v} AS SELECT * FROM read_parquet("
            f"{q(os.path.join(out, v, '*', 'part-0.parquet'))}, hive_partitioning = false)")
    for st in plan["totals"]:
        v = st["view"]
        tv = time.monotonic()
        rows[v] = copy_to(con, adapt(st["sql"]), os.path.join(out, v, "part-0.parquet"))
        secs[v] = time.monotonic() - tv
    tv = time.monotonic()
    b = con.execute(
        f"COPY (SELECT items FROM ({plan['baskets_sql']}) WHERE items IS NOT NULL AND items <> '') "
        f"TO {q(os.path.join(out, 'baskets.txt'))} (FORMAT csv, HEADER false, DELIMITER '\t', QUOTE '')"
    ).fetchone()
    rows["baskets"] = int(b[0]) if b else 0
    secs["baskets"] = time.monotonic() - tv
    total = time.monotonic() - t0
    print(json.dumps({"total_s": round(total, 3), "days": len(plan["days"]),
                      "seconds": {k: round(x, 3) for k, x in secs.items()}, "rows": rows,
                      "duckdb": duckdb.__version__, "threads": threads}))


VIEWS = ["user_windows", "global_windows", "user_daily", "product_daily", "conversion_daily",
         "conversion_category", "orders", "sessions", "users", "products", "retention"]


def compare(cp, dd, full):
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    bad = 0
    for v in VIEWS:
        def src(root):
            day = os.path.join(root, v, "*", "part-0.parquet")
            one = os.path.join(root, v, "part-0.parquet")
            p = one if os.path.exists(one) else day
            return f"read_parquet({q(p)}, hive_partitioning = false, union_by_name = true)"
        cols = con.execute(f"DESCRIBE SELECT * FROM {src(cp)}").fetchall()
        sums, labels = [], ["count"]
        for name, typ, *_ in cols:
            if typ.startswith(("DECIMAL", "BIGINT", "INTEGER", "DOUBLE", "HUGEINT")):
                sums.append(f"SUM(\"{name}\")::VARCHAR")
                labels.append(name)
            elif typ == "BOOLEAN":
                sums.append(f"SUM(\"{name}\"::INT)::VARCHAR")
                labels.append(name)
        agg = ", ".join(["COUNT(*)::VARCHAR"] + sums)
        a = con.execute(f"SELECT {agg} FROM {src(cp)}").fetchone()
        b = con.execute(f"SELECT {agg} FROM {src(dd)}").fetchone()
        # doubles (conversion, retention) may differ in the last bits of a sum
        same = all(x == y or _close(x, y) for x, y in zip(a, b))
        line = {"view": v, "rows_cartpulse": int(a[0]), "rows_duckdb": int(b[0]),
                "sums_equal": same}
        if not same:
            line["sums"] = [{"column": c, "cartpulse": x, "duckdb": y}
                            for c, x, y in zip(labels, a, b) if x != y]
        if full:
            sel = ", ".join(
                f"round(\"{n}\", 9) AS \"{n}\"" if t == "DOUBLE" else f"\"{n}\"" for n, t, *_ in cols)
            only_a = con.execute(
                f"SELECT COUNT(*) FROM (SELECT {sel} FROM {src(cp)} EXCEPT ALL "
                f"SELECT {sel} FROM {src(dd)})").fetchone()[0]
            only_b = con.execute(
                f"SELECT COUNT(*) FROM (SELECT {sel} FROM {src(dd)} EXCEPT ALL "
                f"SELECT {sel} FROM {src(cp)})").fetchone()[0]
            line["rows_only_in_cartpulse"] = only_a
            line["rows_only_in_duckdb"] = only_b
            same = same and only_a == 0 and only_b == 0
        bad += 0 if same and a[0] == b[0] else 1
        print(json.dumps(line))
    ba = open(os.path.join(cp, "baskets.txt")).read()
    bb = open(os.path.join(dd, "baskets.txt")).read()
    print(json.dumps({"view": "baskets.txt", "lines_cartpulse": ba.count("\n"),
                      "lines_duckdb": bb.count("\n"), "identical": ba == bb}))
    bad += 0 if ba == bb else 1
    print(json.dumps({"views_differing": bad}))
    return bad


def _close(x, y):
    try:
        fx, fy = float(x), float(y)
    except (TypeError, ValueError):
        return False
    return abs(fx - fy) <= 1e-9 * max(1.0, abs(fx), abs(fy))


if __name__ == "__main__":
    a = sys.argv[1:]
    if a and a[0] == "run":
        threads = int(a[a.index("--threads") + 1]) if "--threads" in a else 2
        run(a[1], a[2], threads)
    elif a and a[0] == "compare":
        sys.exit(1 if compare(a[1], a[2], "--full" in a) else 0)
    elif a and a[0] == "adaptations":
        for pat, rep, why in ADAPTATIONS:
            print(f"{pat}  ->  {rep}   ({why})")
    else:
        print(__doc__)
        sys.exit(2)
