"""Benchmark: license validate requests/s against a bare Flask JSON endpoint.

Both are served the same way in the same run, on loopback, by each of Keygate's two
documented servers:

- ``waitress``: what ``keygate run`` serves (one process, 8 threads);
- ``gunicorn``: the deployment of the README's "At scale" (``gunicorn -w 2*cores+1``, its
  default sync workers, as gunicorn's documentation recommends).

For each server and backend (SQLite file, PostgreSQL) it measures:

1. peak: closed loop, CONCURRENCY client connections (kept alive where the server keeps them:
   waitress does, gunicorn's sync workers close each) for DURATION seconds -> requests/s;
2. latency at half the peak: an open loop paced at peak/2 req/s; latency is counted from the
   scheduled send time (so queueing counts), p50 and p99.

The bare endpoint is measured the same way; the ratio is validate peak / bare peak.
Targets (issue 3): ratio >= 0.6 and p99 < 25 ms at half the measured peak.

The client runs on the same cores as the server, so the throughput ratio also depends on
how much of the machine the client takes in that run. Beside it the bench prints what
each request cost the server in CPU time (Linux ``/proc``: the server's processes and
threads, and for PostgreSQL the database's backends serving the bench database), and the
bare/validate ratio of those costs: the throughput ratio the server alone would allow.

    .venv/bin/python bench/validate.py [--duration 5] [--backends sqlite,postgresql]
        [--servers waitress,gunicorn]

PostgreSQL: KEYGATE_BENCH_PG_ADMIN_URL (default postgresql://postgres@127.0.0.1:5432/postgres);
the bench creates and drops its own database. Traffic goes to 127.0.0.1 only and every loop
is bounded in time.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG_ADMIN_URL = os.environ.get(
    "KEYGATE_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
THREADS = 8
CONCURRENCY = 8
GUNICORN_WORKERS = 2 * (os.cpu_count() or 1) + 1
PROC = Path("/proc")


def _process_stats() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds used so far, its threads included), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
    return stats


def cpu_seconds(roots: list[int]) -> float:
    """CPU time used so far by the processes ``roots`` and all their descendants."""
    stats = _process_stats()
    children: dict[int, list[int]] = {}
    for pid, (parent, _cpu) in stats.items():
        children.setdefault(parent, []).append(pid)
    total, todo = 0.0, list(roots)
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
            todo.extend(children.get(pid, []))
    return total


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_serving(port: int, path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("POST", path, body=b"{}", headers={"Content-Type": "application/json"})
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start")


def server_command(server: str, call: str, port: int) -> list[str]:
    if server == "waitress":
        return [
            sys.executable,
            "-m",
            "waitress",
            "--listen",
            f"127.0.0.1:{port}",
            "--threads",
            str(THREADS),
            "--call",
            call,
        ]
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(GUNICORN_WORKERS),
        f"{call}()",
    ]


def serve(server: str, call: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        server_command(server, call, port),
        env=env,
        cwd=str(ROOT),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until_serving(port, "/api/v1/licenses/validate")
    return process, port


def setup_keygate(database_url: str, instance: Path) -> tuple[dict[str, str], str]:
    """Migrate, add a store and a product, sell one license; return the server env and key."""
    from cryptography.fernet import Fernet

    from connector import create_app
    from connector.db import db
    from connector.stores import create_store
    from tests.factories import WebhookSender, line_item, wc_order

    env = dict(
        os.environ,
        KEYGATE_DATABASE_URL=database_url,
        KEYGATE_MASTER_KEY=Fernet.generate_key().decode(),
        KEYGATE_SECRET_KEY="bench-secret-" + "x" * 40,
        KEYGATE_INSTANCE_DIR=str(instance),
        KEYGATE_WORKER="off",
        KEYGATE_MAIL_ECHO="false",
        KEYGATE_LOG_LEVEL="WARNING",
        KEYGATE_RATELIMIT_LICENSE_PER_KEY="100000000/minute",
        KEYGATE_RATELIMIT_LICENSE_PER_IP="100000000/minute",
    )
    (instance / "files").mkdir(parents=True, exist_ok=True)
    overrides = {
        "instance_dir": instance,
        "database_url": database_url,
        "master_keys": [env["KEYGATE_MASTER_KEY"]],
        "secret_key": env["KEYGATE_SECRET_KEY"],
        "start_worker": False,
        "mail_echo": False,
    }
    app = create_app({**overrides, "check_database": False})  # migrated just below
    from connector.migrate import upgrade

    with app.app_context():
        upgrade(db.get_engine())
        created = create_store(db.session, "Bench shop", "https://shop.example")
        db.session.commit()
    shop = WebhookSender(app.test_client(), created)
    shop.configure(501, activation_limit=3, duration_days=365)
    shop.deliver(wc_order(1, "processing", [line_item(501)]))
    key: str = shop.order(1)["licenses"][0]["key"]
    shop.client.post("/api/v1/licenses/activate", json={"key": key, "site": "bench-shop.com"})
    with app.app_context():
        db.get_engine().dispose()
    return env, key


class Worker(threading.Thread):
    """One keep-alive connection sending requests until told to stop."""

    def __init__(self, port: int, body: bytes, stop_at: float) -> None:
        super().__init__(daemon=True)
        self.port, self.body, self.stop_at = port, body, stop_at
        self.latencies: list[float] = []
        self.errors = 0

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {"Content-Type": "application/json"}
        while time.monotonic() < self.stop_at:
            start = time.perf_counter()
            try:
                conn.request("POST", "/api/v1/licenses/validate", body=self.body, headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    self.errors += 1
            except OSError:
                self.errors += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                continue
            self.latencies.append(time.perf_counter() - start)
        conn.close()


def peak(port: int, body: bytes, duration: float) -> tuple[float, int, int]:
    """Requests/s, failed requests and answered requests of one closed-loop phase."""
    stop_at = time.monotonic() + duration
    workers = [Worker(port, body, stop_at) for _ in range(CONCURRENCY)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(duration + 30)
    elapsed = time.perf_counter() - started
    done = sum(len(w.latencies) for w in workers)
    return done / elapsed, sum(w.errors for w in workers), done


def paced(port: int, body: bytes, rate: float, duration: float) -> list[float]:
    """Open loop at ``rate`` req/s; latency from each request's scheduled time."""
    total = max(1, int(rate * duration))
    interval = 1.0 / rate
    start = time.perf_counter() + 0.05
    next_index = 0
    lock = threading.Lock()
    latencies: list[float] = []

    def run() -> None:
        nonlocal next_index
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        headers = {"Content-Type": "application/json"}
        while True:
            with lock:
                index = next_index
                next_index += 1
            if index >= total:
                break
            scheduled = start + index * interval
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            conn.request("POST", "/api/v1/licenses/validate", body=body, headers=headers)
            conn.getresponse().read()
            latencies.append(time.perf_counter() - scheduled)
        conn.close()

    threads = [threading.Thread(target=run, daemon=True) for _ in range(CONCURRENCY * 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration + 60)
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency(port: int, body: bytes, rate: float, duration: float) -> dict[str, float]:
    latencies = paced(port, body, rate / 2, duration)
    return {
        "half_rate": rate / 2,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


@dataclass
class Endpoint:
    """One served endpoint, and the processes whose CPU time its requests cost."""

    name: str
    port: int
    body: bytes
    processes: Callable[[], list[int]]


def create_pg_database() -> tuple[str, Callable[[], None], Callable[[], list[int]]]:
    """A fresh database: its URL, how to drop it, and the pids of its current backends."""
    from sqlalchemy import create_engine, text

    name = f"keygate_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(
        PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    def backends() -> list[int]:
        with admin.connect() as conn:
            query = text("SELECT pid FROM pg_stat_activity WHERE datname = :name")
            return [int(pid) for pid in conn.execute(query, {"name": name}).scalars()]

    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name, drop, backends


def keygate_endpoint(stack: contextlib.ExitStack, server: str, backend: str) -> Endpoint:
    """A Keygate server on a fresh database of ``backend`` with one sold license."""
    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="keygate-bench-"))
    backends: Callable[[], list[int]] = list
    if backend == "sqlite":
        url = f"sqlite:///{tmp}/keygate.db"
    else:
        url, drop, backends = create_pg_database()
        stack.callback(drop)
    env, key = setup_keygate(url, Path(tmp) / "instance")
    body = json.dumps({"key": key, "product": "501", "site": "bench-shop.com", "nonce": "n"})
    port, pid = started(stack, server, "connector:create_app", env)
    return Endpoint(f"validate/{backend}", port, body.encode(), lambda: [pid, *backends()])


def started(
    stack: contextlib.ExitStack, server: str, call: str, env: dict[str, str]
) -> tuple[int, int]:
    """Serve ``call``; its port and the server's pid (gunicorn's workers are its children)."""
    process, port = serve(server, call, env)

    def stop() -> None:
        process.terminate()
        process.wait(timeout=10)

    stack.callback(stop)
    return port, process.pid


def bench_server(
    server: str, backends: list[str], duration: float, rounds: int
) -> list[tuple[str, dict[str, Any]]]:
    """Peaks measured in interleaved rounds (bare, then each backend, ``rounds`` times), so a
    slow spell of this shared machine hits both sides of a ratio; medians are reported."""
    with contextlib.ExitStack() as stack:
        bare_env = dict(os.environ, PYTHONPATH=str(ROOT / "bench"))
        bare_port, bare_pid = started(stack, server, "bare_app:create_app", bare_env)
        bare_body = json.dumps({"key": "X", "nonce": "n"}).encode()
        endpoints = [Endpoint("bare flask", bare_port, bare_body, lambda: [bare_pid])]
        endpoints += [keygate_endpoint(stack, server, backend) for backend in backends]
        for endpoint in endpoints:
            peak(endpoint.port, endpoint.body, 1.0)  # warm up
        peaks: dict[str, list[float]] = {endpoint.name: [] for endpoint in endpoints}
        costs: dict[str, list[float]] = {endpoint.name: [] for endpoint in endpoints}
        errors: dict[str, int] = dict.fromkeys(peaks, 0)
        measure_cpu = PROC.is_dir()
        for _ in range(rounds):
            for endpoint in endpoints:
                processes = endpoint.processes() if measure_cpu else []
                before = cpu_seconds(processes) if measure_cpu else 0.0
                rate, failed, done = peak(endpoint.port, endpoint.body, duration)
                if measure_cpu and done:
                    costs[endpoint.name].append((cpu_seconds(processes) - before) / done)
                peaks[endpoint.name].append(rate)
                errors[endpoint.name] += failed
        rows: list[tuple[str, dict[str, Any]]] = []
        bare = endpoints[0].name
        for endpoint in endpoints:
            name = endpoint.name
            rate = statistics.median(peaks[name])
            row: dict[str, Any] = {"peak_rps": rate, "errors": errors[name]}
            if len(costs[name]) == rounds:
                row["cpu_ms"] = statistics.median(costs[name]) * 1000
            if name != bare:
                ratios = [mine / base for mine, base in zip(peaks[name], peaks[bare], strict=True)]
                row["ratio"] = statistics.median(ratios)
                row["ratios"] = ratios
                if "cpu_ms" in row and len(costs[bare]) == rounds:
                    row["cpu_ratio"] = statistics.median(
                        base / mine for mine, base in zip(costs[name], costs[bare], strict=True)
                    )
            row.update(latency(endpoint.port, endpoint.body, rate, duration))
            rows.append((f"{server}: {name}", row))
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per phase")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--servers", default="waitress,gunicorn")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved peak rounds")
    args = parser.parse_args()
    duration = min(max(args.duration, 1.0), 60.0)
    rounds = min(max(args.rounds, 1), 20)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]

    rows = []
    for server in [s.strip() for s in args.servers.split(",") if s.strip()]:
        rows.extend(bench_server(server, backends, duration, rounds))

    print(
        f"waitress: 1 process, {THREADS} threads; gunicorn: {GUNICORN_WORKERS} sync workers; "
        f"{CONCURRENCY} clients; median of {rounds} interleaved {duration:.0f}s peak rounds"
    )
    print(
        f"{'endpoint':<32}{'peak req/s':>11}{'ratio':>7}{'@ req/s':>9}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'cpu ms/req':>11}{'cpu ratio':>10}"
    )
    for name, r in rows:
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
        cpu = f"{r['cpu_ms']:.3f}" if "cpu_ms" in r else "-"
        cpu_ratio = f"{r['cpu_ratio']:.2f}" if "cpu_ratio" in r else "-"
        print(
            f"{name:<32}{r['peak_rps']:>11.0f}{ratio:>7}{r['half_rate']:>9.0f}"
            f"{r['p50_ms']:>8.2f}{r['p99_ms']:>8.2f}{cpu:>11}{cpu_ratio:>10}"
            + (f"  ({r['errors']} errors)" if r["errors"] else "")
            + ("  ratios " + " ".join(f"{x:.2f}" for x in r["ratios"]) if "ratios" in r else "")
        )


if __name__ == "__main__":
    main()
