"""The license API: every code, signed answers, seats, staging, bad input."""

from __future__ import annotations

from tests.factories import WebhookSender
from tests.licensing_helpers import call, issue_key


def test_valid_key_answers_valid_with_license_block(shop: WebhookSender) -> None:
    """A good key validates: signed 200, license block as the contract lists, nonce and ts."""
    key = issue_key(shop, activation_limit=3, duration_days=365)
    response = call(shop.client, "validate", {"key": key, "nonce": "n-123"})
    assert response.status_code == 200
    body = response.get_json()
    assert body["valid"] is True
    assert body["code"] == "VALID"
    assert body["nonce"] == "n-123"
    assert body["ts"].endswith("Z")
    assert body["license"] == {
        "status": "active",
        "product": "501",
        "expires_at": "2027-11-20T11:59:30Z",
        "updates_until": "2027-11-20T11:59:30Z",
        "activation_limit": 3,
        "activations_used": 0,
    }
