"""R2 download URLs come from botocore's SigV4 query signer directly (hot path): they must
be exactly what the boto3 client's generate_presigned_url makes."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from connector.integrations.r2 import R2Config, R2Store

CONFIGS = [
    R2Config("0123456789abcdef0123456789abcdef", "AKIDEXAMPLE", "secret/with+chars", "bucket"),
    R2Config("acct", "AK", "S", "my-bucket", endpoint_url="http://127.0.0.1:4566"),
    R2Config("acct", "AK", "S", "b", endpoint_url="https://s3.example.com:8443"),
]
OBJECTS = [
    ("apps/tool.zip", "tool.zip"),
    ("apps/tool é+x.zip", "tool é.zip"),
    ("a/b c/d~e;f%g&h=i?.pdf", 'na"me;%\\.pdf'),
    ("watermarked/1/2/3/Ünïcode 漢字.pdf", "Ünïcode 漢字.pdf"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.endpoint)
@pytest.mark.parametrize(("key", "filename"), OBJECTS)
def test_presigned_url_is_botocores(config: R2Config, key: str, filename: str) -> None:
    store = R2Store(config)
    for ttl in (1, 300, 604_800):
        # Both sign with the current second; retry in the rare case a second ticks between.
        for _ in range(3):
            expected = store.presigned_url_botocore(key, filename, ttl)
            ours = store.presigned_url(key, filename, ttl)
            if _stamp(ours) == _stamp(expected):
                break
        assert ours == expected


def _stamp(url: str) -> str:
    return parse_qs(urlsplit(url).query)["X-Amz-Date"][0]


def test_presigned_url_clamps_ttl() -> None:
    store = R2Store(CONFIGS[0])
    url = store.presigned_url("k", "k", 10**9)
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["604800"]


def test_botocores_debug_log_never_holds_a_signature(caplog: pytest.LogCaptureFixture) -> None:
    """With DEBUG on, botocore logs the canonical request and the signature of every URL it
    signs: together a working download link. The signature is hidden."""
    store = R2Store(CONFIGS[1])
    with caplog.at_level("DEBUG", logger="botocore"):
        url = store.presigned_url_botocore("apps/tool.zip", "tool.zip", 300)
    signature = parse_qs(urlsplit(url).query)["X-Amz-Signature"][0]
    assert "Signature" in caplog.text  # botocore did log the step
    assert signature not in caplog.text
