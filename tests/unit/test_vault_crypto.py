"""The vault's primitives, without a server: what a masked secret shows, that every
encryption of a secret is its own, and that a store's keyed hashes are the store's own."""

from __future__ import annotations

from cryptography.fernet import Fernet

from connector.vault.crypto import Concealed, ConcealedDict, Keyring, mask


def keyring() -> Keyring:
    return Keyring((Fernet.generate_key().decode(),), "s3cret")


def test_a_masked_secret_shows_its_last_four_characters_only_past_eight() -> None:
    """README: secrets are answered as their last four characters at most; a secret of
    eight characters or fewer shows none (four of eight would be half of it)."""
    assert mask(None) is None
    for short in ("", "k", "abcd", "abcdefg", "abcdefgh"):
        assert mask(short) == "****"
    assert mask("abcdefghi") == "****fghi"
    assert mask("xkeysib-" + "0" * 60 + "WXYZ") == "****WXYZ"


def test_the_same_secret_encrypted_twice_is_two_tokens_both_read_back() -> None:
    """A fresh nonce each time: two stores' equal secrets (or a secret saved again) cannot be
    told equal from the database."""
    ring = keyring()
    first, second = ring.encrypt("cs_secret"), ring.encrypt("cs_secret")
    assert first != second
    assert ring.decrypt(first) == ring.decrypt(second) == "cs_secret"


def test_a_stores_keyed_hash_is_its_own_and_no_store_independent_hash() -> None:
    """Two stores hash one buyer's address or IP apart, and neither store's hash is the
    store-independent hash of any value (its own purpose key, ``<purpose>@store``)."""
    ring = keyring()
    in_one, in_two = (ring.store_keyed_hash("erasure", store, "a@x.org") for store in (1, 2))
    assert in_one != in_two
    assert in_one == ring.keyed_hash("erasure@store", "1:a@x.org")
    assert in_one != ring.keyed_hash("erasure", "1:a@x.org")
    assert ring.keyed_hash("erasure", "a@x.org") != ring.keyed_hash("security-ip", "a@x.org")


def test_a_decrypted_secret_is_its_text_but_never_in_a_repr() -> None:
    secret = Concealed("cs_live_secret")
    assert secret == "cs_live_secret" and f"{secret}" == "cs_live_secret"
    assert "cs_live_secret" not in repr(secret)
    assert "cs_live_secret" not in repr(ConcealedDict({"consumer_secret": secret}))
