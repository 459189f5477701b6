"""License keys: readable, random, and a typo never finds another key."""

from __future__ import annotations

import pytest

from connector.client import _compact as client_compact
from connector.licensing.files import compact_key
from connector.licensing.keys import (
    ALPHABET,
    KeyFormat,
    check_character,
    generate_key,
    lookup_form,
    normalize_key,
)


def test_generated_keys_have_the_configured_shape_and_validate() -> None:
    fmt = KeyFormat(prefix="KG", groups=5, group_length=4)
    key = generate_key(fmt)
    parts = key.split("-")
    assert parts[0] == "KG"
    assert [len(p) for p in parts[1:]] == [4] * 5
    assert all(c in ALPHABET for c in "".join(parts[1:]))
    assert normalize_key(key) == key


def test_keys_are_not_repeated() -> None:
    keys = {generate_key(KeyFormat()) for _ in range(2000)}
    assert len(keys) == 2000


def test_no_look_alike_characters() -> None:
    assert not set("0O1IL") & set(ALPHABET)


def test_every_single_character_typo_is_caught() -> None:
    """Changing any one character of a key never yields a valid key."""
    key = generate_key(KeyFormat())
    chars = key.replace("-", "")
    for position in range(len(chars)):
        for replacement in ALPHABET:
            if replacement == chars[position]:
                continue
            typo = chars[:position] + replacement + chars[position + 1 :]
            assert normalize_key(typo) is None, typo


def test_swapped_neighbours_are_caught() -> None:
    caught = 0
    total = 0
    for _ in range(200):
        chars = generate_key(KeyFormat()).replace("-", "")
        for i in range(len(chars) - 1):
            if chars[i] == chars[i + 1]:
                continue
            total += 1
            swapped = chars[:i] + chars[i + 1] + chars[i] + chars[i + 2 :]
            caught += normalize_key(swapped) is None
    # Luhn mod N misses only the swap of the two characters whose values sum to N-1.
    assert caught / total > 0.95


def test_typing_is_forgiven_case_spaces_and_dashes() -> None:
    key = generate_key(KeyFormat())
    sloppy = " " + key.lower().replace("-", " ") + " "
    normalized = normalize_key(sloppy)
    assert normalized is not None
    assert lookup_form(normalized) == lookup_form(key)


# What a key picks up on its way through a mail, a PDF, a chat or a word processor.
PASTED_SEPARATORS = [
    "\u200b",  # zero-width space
    "\u00a0",  # no-break space
    "\u202f",  # narrow no-break space
    "\u2009",  # thin space
    "\u3000",  # ideographic space
    "\ufeff",  # byte order mark / zero-width no-break space
    "\u2060",  # word joiner
    "\u00ad",  # soft hyphen
    "\u2010",  # hyphen
    "\u2011",  # non-breaking hyphen
    "\u2013",  # en dash
    "\u2014",  # em dash
    "\t",
    "\n",
]


@pytest.mark.parametrize("separator", PASTED_SEPARATORS)
def test_unicode_whitespace_and_dashes_pasted_with_a_key_are_forgiven(separator: str) -> None:
    """Invisible or look-alike characters inside or around a pasted key are separators, as
    ASCII spaces and dashes are: the key is found, not read as a typo."""
    key = generate_key(KeyFormat(prefix="KG"))
    for pasted in (
        separator + key + separator,
        key.replace("-", separator),
        key.replace("-", "-" + separator),
        key[:5] + separator + key[5:],
    ):
        normalized = normalize_key(pasted)
        assert normalized is not None, repr(pasted)
        assert lookup_form(normalized) == lookup_form(key)
        assert compact_key(pasted) == compact_key(key)  # offline files name the same key
        assert client_compact(pasted) == compact_key(key)  # and the client library agrees


def test_a_key_typed_in_one_piece_is_read_without_a_prefix() -> None:
    """Without its dashes a key is one piece: read whole (no prefix), its check character
    still catches a typo, and a piece too short to be any store's key is no key."""
    key = generate_key(KeyFormat())
    normalized = normalize_key(key.replace("-", "").lower())
    assert normalized is not None
    assert lookup_form(normalized) == lookup_form(key)
    prefixed = generate_key(KeyFormat(prefix="KG"))
    apart = "KG " + prefixed.removeprefix("KG-").replace("-", "")
    assert lookup_form(normalize_key(apart) or "") == lookup_form(prefixed)
    body = "23456789ABCDEFG"  # 15 characters and its check: valid, but shorter than any key
    assert normalize_key(body + check_character(body)) is None
    assert normalize_key(key.replace("-", "")[:-1] + ("2" if key[-1] != "2" else "3")) is None


@pytest.mark.parametrize("garbage", ["", "-", "ABC", "x" * 500, "KG-!!!!-AAAA", 12345, None])
def test_garbage_is_not_a_key(garbage: object) -> None:
    assert normalize_key(garbage) is None


def test_formats_with_too_little_entropy_are_refused() -> None:
    with pytest.raises(ValueError, match="random characters"):
        KeyFormat(groups=2, group_length=5)


def test_a_refused_format_says_the_check_character_is_not_random() -> None:
    """4 groups of 4 hold 16 characters but only 15 random ones: the owner, told "at least
    16 random characters", hears why 16 is not enough."""
    with pytest.raises(ValueError, match="check character") as refused:
        KeyFormat(groups=4, group_length=4)
    assert "17 or more" in str(refused.value)
