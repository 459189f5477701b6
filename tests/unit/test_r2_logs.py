"""botocore logs what it signs at DEBUG (the canonical request holds the access key id, the
signature follows it): Keygate's R2 use never lets either reach a log, whatever ran first."""

from __future__ import annotations

import logging

import pytest

from connector.integrations import r2
from connector.integrations.r2 import R2Config, R2Store
from tests.licensing_helpers import free_port

KEY_ID = "AKIDFIRSTCHECK123456"


def as_in_a_new_process() -> None:
    """No logger carries the redactor yet (no client was made in this process)."""
    names = [n for n in logging.root.manager.loggerDict if n.startswith(("botocore", "urllib3"))]
    for name in ["botocore", "urllib3", *names]:
        logging.getLogger(name).removeFilter(r2._AWS_REDACTOR)


def test_a_credentials_check_first_in_a_process_logs_no_access_key_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A check is often the first R2 use of a server process (an owner saves credentials):
    its presigned GET is signed before any client exists to hide botocore's lines."""
    as_in_a_new_process()
    caplog.set_level(logging.DEBUG)
    endpoint = f"http://127.0.0.1:{free_port()}"
    store = R2Store(R2Config("acct", KEY_ID, "secret", "bucket", endpoint, private_ok=True))
    problem = store.check_access()
    assert problem is not None and problem.kind == r2.UNREACHABLE
    assert "CanonicalRequest" in caplog.text  # botocore did log what it signed
    assert KEY_ID not in caplog.text
