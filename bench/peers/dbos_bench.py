"""The peer benchmark: the same W1 and W2 on DBOS Transact (Python), run by bench/run.

W1: a durable workflow of five no-op steps. W2: steps 1..3 succeed, step 4 raises (DBOS steps
do not retry by default), and the workflow compensates steps 3, 2, 1 with three more steps, the
usual saga pattern in DBOS. Closed loop: N threads each call the workflow (a direct call runs it
durably in the caller's thread and returns once its result is recorded) and call the next one.
The system database is a database of its own on the same server. Prints one JSON line.
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse

import psycopg

STEP_TIMES = {}
STEP_LOCK = threading.Lock()


def with_database(url, name):
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def fresh_database(admin_url, name):
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
        try:
            conn.execute("CHECKPOINT")
        except Exception:
            pass
    return with_database(admin_url, name)


def snapshot(url):
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit, pg_current_wal_lsn()::text FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return row[0], row[1]


class Meter:
    """Commits and WAL bytes of one database, as in the Rust benchmarks (see pgutil.rs)."""

    def __init__(self, url):
        self.url = url
        c0, _ = snapshot(url)
        time.sleep(0.25)
        c1, _ = snapshot(url)
        self.overhead = max(0, c1 - c0)
        time.sleep(0.25)
        self.commits, self.lsn = snapshot(url)

    def finish(self):
        time.sleep(0.6)
        commits, lsn = snapshot(self.url)
        with psycopg.connect(self.url, autocommit=True) as conn:
            wal = conn.execute("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)::float8", (lsn, self.lsn)).fetchone()[0]
        return commits - self.commits - self.overhead, wal


def peak_rss_mb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 1))))
    return sorted_values[rank - 1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--admin-url", required=True)
    parser.add_argument("--workload", default="w1", choices=["w1", "w2"])
    parser.add_argument("--inflight", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--migrate-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()

    from dbos import DBOS, DBOSConfig

    pool = max(20, args.inflight + 4)
    if args.migrate_only:
        url = args.url
    else:
        name = f"bench_dbos_{args.workload}_c{args.inflight}"
        url = fresh_database(args.admin_url, name)
        # Create DBOS's schema in a process of its own, so that its start-up is not measured.
        subprocess.run(
            [sys.executable, __file__, "--admin-url", args.admin_url, "--migrate-only", "--url", url],
            check=True,
            timeout=120,
        )
    sa_url = url.replace("postgres://", "postgresql://", 1)
    config: DBOSConfig = {
        "name": "saga-bench",
        "system_database_url": sa_url,
        "sys_db_pool_size": pool,
        "log_level": "ERROR",
    }
    DBOS(config=config)

    def note(i):
        now = time.perf_counter()
        with STEP_LOCK:
            STEP_TIMES.setdefault(i, []).append(now)

    @DBOS.step()
    def ok_step(i, k):
        note(i)
        return k

    @DBOS.step()
    def failing_step(i, k):
        note(i)
        raise RuntimeError("bench: step 4 fails for good")

    @DBOS.step()
    def compensation(i, k):
        note(i)
        return k

    @DBOS.workflow()
    def w1(i):
        for k in range(1, 6):
            ok_step(i, k)
        return "completed"

    @DBOS.workflow()
    def w2(i):
        done = []
        try:
            for k in range(1, 6):
                if k == 4:
                    failing_step(i, k)
                else:
                    ok_step(i, k)
                done.append(k)
        except Exception:
            for k in reversed(done):
                compensation(i, k)
            return "compensated"
        return "completed"

    DBOS.launch()
    if args.migrate_only:
        DBOS.destroy()
        return

    workflow = w1 if args.workload == "w1" else w2
    expected = "completed" if args.workload == "w1" else "compensated"
    meter = Meter(url)
    begin = time.perf_counter()
    window_start = begin + args.warmup
    window_end = window_start + args.duration
    samples = []
    errors = [0]
    lock = threading.Lock()

    def client(c):
        i = c
        mine = []
        while time.perf_counter() < window_end:
            started = time.perf_counter()
            try:
                result = workflow(i)
            except Exception as e:  # noqa: BLE001
                with lock:
                    errors[0] += 1
                print(f"workflow failed: {e}", file=sys.stderr)
                time.sleep(0.05)
                i += 1 << 20
                continue
            settled = time.perf_counter()
            if result != expected:
                with lock:
                    errors[0] += 1
            with STEP_LOCK:
                steps = STEP_TIMES.pop(i, [])
            mine.append((started, settled, steps))
            i += 1 << 20
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(args.inflight)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=args.warmup + args.duration + 60)
    DBOS.destroy()
    commits, wal = meter.finish()

    total = len(samples)
    in_window = sum(1 for s in samples if window_start <= s[1] <= window_end)
    measured = [s for s in samples if window_start <= s[0] < window_end]
    latencies = sorted((s[1] - s[0]) * 1e3 for s in measured)
    gaps = sorted((b - a) * 1e3 for s in measured for a, b in zip(s[2], s[2][1:]))
    transitions = 7 if args.workload == "w2" else 5
    sagas_per_s = in_window / args.duration
    import importlib.metadata

    print(
        json.dumps(
            {
                "engine": "dbos",
                "backend": "pg",
                "workload": args.workload,
                "inflight": args.inflight,
                "sagas": in_window,
                "total_sagas": total,
                "elapsed_s": args.duration,
                "sagas_per_s": sagas_per_s,
                "transitions_per_s": sagas_per_s * transitions,
                "p50_ms": percentile(latencies, 0.5),
                "p99_ms": percentile(latencies, 0.99),
                "step_p50_ms": percentile(gaps, 0.5),
                "step_p99_ms": percentile(gaps, 0.99),
                "commits_per_saga": commits / total if total else None,
                "wal_bytes_per_saga": wal / total if total else None,
                "rss_mb": peak_rss_mb(),
                "pool": pool,
                "errors": errors[0],
                "version": importlib.metadata.version("dbos"),
            }
        )
    )
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
