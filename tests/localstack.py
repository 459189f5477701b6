"""LocalStack's S3 on 127.0.0.1, installed and started by the test setup itself.

It checks presigned URLs for real (signature and expiry), which moto does not. Installed in
a venv of its own under ``.cache/localstack-venv`` (it pins its own boto3), with the versions
measured in shared/notes/s3-test-server.md. When it cannot be installed or started, the
tests that need it fail: they never skip.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

PINS = [
    "localstack-core[base-runtime]==4.13.1",
    "moto-ext==5.1.54",
    "cbor2<6",
    "pyopenssl<25",
    "cryptography<45",
    "service-identity",
]
CACHE = Path(__file__).resolve().parent.parent / ".cache"
VENV = CACHE / "localstack-venv"
ACCESS_KEY_ID = "test"
SECRET_ACCESS_KEY = "test"  # LocalStack accepts any key id with the secret "test"


def _ensure_venv() -> Path:
    """Create the LocalStack venv once (a file lock keeps parallel workers from racing)."""
    CACHE.mkdir(exist_ok=True)
    python = VENV / "bin" / "python"
    marker = VENV / f".installed-{hashlib.sha256(' '.join(PINS).encode()).hexdigest()[:12]}"
    with (CACHE / "localstack.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
            subprocess.run(
                [str(python), "-m", "pip", "install", "--quiet", *PINS],
                check=True,
                timeout=1200,
            )
            marker.touch()
    return python


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _s3_running(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/_localstack/health", timeout=2) as answer:
            health = json.loads(answer.read())
    except (OSError, ValueError):
        return False
    return health.get("services", {}).get("s3") in {"running", "available"}


@pytest.fixture(scope="session")
def localstack_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a LocalStack S3 that enforces presigned signatures and expiry."""
    try:
        python = _ensure_venv()
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.fail(f"could not install LocalStack ({exc})", pytrace=False)
    root = tmp_path_factory.mktemp("localstack")
    port = _free_port()
    env = {
        **os.environ,
        "SERVICES": "s3",
        "GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "S3_SKIP_SIGNATURE_VALIDATION": "0",
        "OVERRIDE_IN_DOCKER": "0",
        "FILESYSTEM_ROOT": str(root / "fs"),
        "SKIP_SSL_CERT_DOWNLOAD": "1",
        "DNS_ADDRESS": "0",
        "DISABLE_EVENTS": "1",
        "EAGER_SERVICE_LOADING": "1",
        "ALLOW_NONSTANDARD_REGIONS": "1",
    }
    log_path = root / "localstack.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(python), "-m", "localstack.runtime.main"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while not _s3_running(endpoint):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            tail = log_path.read_text(errors="replace")[-3000:]
            pytest.fail(f"LocalStack did not start on {endpoint}:\n{tail}", pytrace=False)
        time.sleep(0.5)
    yield endpoint
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
