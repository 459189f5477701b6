#!/usr/bin/env python3
"""Benchmark: click-to-redirect requests/s of ``GET /d/<token>`` vs a bare endpoint.

Run from the repository root:

    .venv/bin/python bench/download.py [--database-url URL] [--servers waitress,gunicorn]

Both endpoints are served by one app (bench/download_app.py), the same way, in the same run,
by each of Keygate's two documented servers: waitress as ``keygate run`` serves (one
process, ``--threads`` threads) and gunicorn as "At scale" deploys it (2 x cores + 1 sync
workers).

- ``/d/<token>``: verify the token, read the grant, count the download with the conditional
  UPDATE, log the click (keyed IP hash), presign an R2 URL, commit, answer 302;
- ``/bench/bare``: answers the same 302 to a fixed URL and touches nothing.

Client processes (HTTP/1.1, kept alive where the server keeps connections) hammer each for
the same time, in alternating rounds; the median ratio click / bare is printed (target >=
0.4). R2 presigning is local; the click's existence check (a HEAD, remembered for
``SEEN_SECONDS`` per object and process) goes to a stand-in bucket on loopback that has every
object. SQLite by default (the embedded default); pass a PostgreSQL URL to measure that instead.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GUNICORN_WORKERS = 2 * (os.cpu_count() or 1) + 1


def client_loop(port: int, path: str, seconds: float, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    done, bad = 0, 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        connection.request("GET", path, headers={"User-Agent": "keygate-bench"})
        response = connection.getresponse()
        response.read()
        if response.status == 302:
            done += 1
        else:
            bad += 1
    connection.close()
    queue.put((done, bad))


def load(port: int, path: str, clients: int, seconds: float) -> tuple[float, int]:
    queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    workers = [
        multiprocessing.Process(target=client_loop, args=(port, path, seconds, queue))
        for _ in range(clients)
    ]
    for worker in workers:
        worker.start()
    results = [queue.get() for _ in workers]
    for worker in workers:
        worker.join()
    return sum(r[0] for r in results) / seconds, sum(r[1] for r in results)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class _BucketHead(BaseHTTPRequestHandler):
    """A stand-in bucket that has every object: a click asks it (HEAD) whether the file is
    there before presigning, at most once per object per ``SEEN_SECONDS`` and process."""

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("ETag", '"bench"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def stand_in_bucket() -> str:
    """Serve :class:`_BucketHead` on a free loopback port for the rest of the run."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BucketHead)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def set_up(folder: Path, database_url: str | None) -> tuple[Path, str]:
    """Migrate, add a store and a product, sell one download; return the settings file the
    servers read and the click path."""
    from cryptography.fernet import Fernet

    from connector import create_app
    from connector.db import db
    from connector.migrate import upgrade
    from connector.stores import create_store
    from tests.factories import WebhookSender, line_item, wc_order

    (folder / "instance" / "files").mkdir(parents=True)
    overrides = {
        "instance_dir": str(folder / "instance"),
        "database_url": database_url or f"sqlite:///{folder / 'bench.db'}",
        "master_keys": [Fernet.generate_key().decode()],
        "secret_key": "bench-secret-" + "x" * 40,
        "worker": "off",
        "mail_echo": False,
        "log_level": "WARNING",
        "base_url": "http://keygate.bench",
        "r2_account_id": "0123456789abcdef0123456789abcdef",
        "r2_access_key_id": "bench-key-id",
        "r2_secret_access_key": "bench-secret-access-key",
        "r2_bucket": "bench",
        # Presigning is local; only the existence check (HEAD, remembered briefly) reaches
        # the stand-in bucket on loopback.
        "r2_endpoint_url": stand_in_bucket(),
    }
    settings = folder / "settings.json"
    settings.write_text(json.dumps(overrides))
    app = create_app({**overrides, "start_worker": False, "check_database": False})
    with app.app_context():
        upgrade(db.get_engine())
        created = create_store(db.session, "Bench shop", "https://shop.example")
        db.session.commit()
    shop = WebhookSender(app.test_client(), created)
    shop.configure(501, files=[{"object_key": "apps/tool.zip", "filename": "tool.zip"}])
    shop.deliver(wc_order(1, "processing", [line_item(501)]))
    link: str = shop.order(1)["downloads"][0]["link"]
    app.extensions["keygate.db"].engine.dispose()
    return settings, link.removeprefix("http://keygate.bench")


def serve(server: str, threads: int, settings: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    call = "download_app:create_app"
    if server == "waitress":
        command = [sys.executable, "-m", "waitress", "--listen", f"127.0.0.1:{port}"]
        command += ["--threads", str(threads), "--call", call]
    else:
        command = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}"]
        command += ["--workers", str(GUNICORN_WORKERS), f"{call}()"]
    env = dict(
        os.environ,
        KEYGATE_BENCH_SETTINGS=str(settings),
        PYTHONPATH=os.pathsep.join([str(ROOT / "bench"), str(ROOT)]),
    )
    process = subprocess.Popen(
        command, env=env, cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            probe = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            probe.request("GET", "/bench/bare")
            probe.getresponse().read()
            probe.close()
            return process, port
        except OSError:
            time.sleep(0.1)
    process.terminate()
    raise RuntimeError(f"{server} did not start")


def measure(
    server: str, args: argparse.Namespace, settings: Path, click_path: str
) -> list[tuple[float, float, int]]:
    process, port = serve(server, args.threads, settings)
    try:
        load(port, "/bench/bare", args.clients, 1.0)  # warm up both paths
        load(port, click_path, args.clients, 1.0)
        # Alternate the two in rounds so load from elsewhere on the machine hits both alike.
        rounds = []
        for _ in range(args.rounds):
            bare_rps, bare_bad = load(port, "/bench/bare", args.clients, args.seconds)
            click_rps, click_bad = load(port, click_path, args.clients, args.seconds)
            rounds.append((bare_rps, click_rps, bare_bad + click_bad))
        return rounds
    finally:
        process.terminate()
        process.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--threads", type=int, default=8, help="waitress threads")
    parser.add_argument("--servers", default="waitress,gunicorn")
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()

    backend = "PostgreSQL" if args.database_url else "SQLite"
    with tempfile.TemporaryDirectory(prefix="keygate-bench-") as folder:
        settings, click_path = set_up(Path(folder), args.database_url)
        for server in [s.strip() for s in args.servers.split(",") if s.strip()]:
            rounds = measure(server, args, settings, click_path)
            how = (
                f"{args.threads} threads"
                if server == "waitress"
                else f"{GUNICORN_WORKERS} sync workers"
            )
            print(
                f"{backend}, {server} ({how}), {args.clients} clients, "
                f"{args.rounds} rounds of {args.seconds:.0f} s each"
            )
            for number, (bare_rps, click_rps, bad) in enumerate(rounds, 1):
                print(
                    f"  round {number}: bare 302 {bare_rps:6.0f} req/s, /d/<token> click -> 302 "
                    f"{click_rps:6.0f} req/s, ratio {click_rps / bare_rps:.2f}"
                    + (f" ({bad} non-302 answers)" if bad else "")
                )
            ratio = statistics.median(click / bare for bare, click, _ in rounds)
            print(f"  median ratio click / bare: {ratio:.2f}  (target >= 0.4)")


if __name__ == "__main__":
    main()
