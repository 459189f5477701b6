"""License key format: readable groups, no look-alike characters, a check character.

``KG-7XK4M-PQ2RT-9HWDC-AB3F5``: random characters from a CSPRNG, drawn from an alphabet
without 0/O, 1/I/L and U; the last character is a Luhn mod N check over the rest, which
catches every single mistyped character and every swap of two neighbours.
"""

from __future__ import annotations

import secrets
import unicodedata
from dataclasses import dataclass

ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"
_INDEX = {c: i for i, c in enumerate(ALPHABET)}
_N = len(ALPHABET)
MAX_KEY_LENGTH = 128
# 16 random characters (about 78 bits) and the check character: the shortest key a store makes.
MIN_KEY_CHARACTERS = 17


@dataclass(frozen=True)
class KeyFormat:
    prefix: str = ""
    groups: int = 4
    group_length: int = 5

    def __post_init__(self) -> None:
        if not 2 <= self.groups <= 8 or not 3 <= self.group_length <= 10:
            raise ValueError("a key has 2-8 groups of 3-10 characters")
        if self.groups * self.group_length < MIN_KEY_CHARACTERS:
            raise ValueError(
                "a key needs at least 16 random characters (about 78 bits) and its last,"
                " a check character: groups times characters per group must be 17 or more"
            )
        if self.prefix and not (self.prefix.isascii() and self.prefix.isalnum()):
            raise ValueError("a key prefix is letters and digits only")


def check_character(body: str) -> str:
    """Luhn mod N check character for ``body`` (characters of ALPHABET)."""
    factor = 2
    total = 0
    for char in reversed(body):
        addend = factor * _INDEX[char]
        factor = 1 if factor == 2 else 2
        total += addend // _N + addend % _N
    return ALPHABET[(_N - total % _N) % _N]


def generate_key(fmt: KeyFormat) -> str:
    """A new random key in ``fmt``."""
    length = fmt.groups * fmt.group_length
    body = "".join(secrets.choice(ALPHABET) for _ in range(length - 1))
    chars = body + check_character(body)
    groups = [chars[i : i + fmt.group_length] for i in range(0, length, fmt.group_length)]
    return "-".join(([fmt.prefix.upper()] if fmt.prefix else []) + groups)


def _body_valid(parts: list[str]) -> bool:
    chars = "".join(parts)
    if len(chars) < 2 or any(c not in _INDEX for c in chars):
        return False
    return check_character(chars[:-1]) == chars[-1]


def key_groups(raw: str) -> list[str]:
    """The groups of a key as typed, upper case: case, whitespace and dashes forgiven, and
    the Unicode ones a mail, PDF or chat slips in too: any whitespace (no-break, thin,
    ideographic spaces), invisible format characters (zero-width space, byte order mark,
    word joiner, soft hyphen) and dashes (non-breaking hyphen, en dash). None of them is
    ever part of a key. connector/client.py forgives the same characters."""
    text = "-".join(raw.split())  # str.split(): every Unicode whitespace
    if not text.isascii():
        text = "".join("-" if unicodedata.category(c) in ("Cf", "Pd") else c for c in text)
    return [p for p in text.upper().split("-") if p]


def normalize_key(raw: object) -> str | None:
    """Canonical form of a key as typed (case, spaces, dashes forgiven), or None if malformed.

    The first group may be a prefix (letters and digits); the check covers the rest. A
    prefix made of alphabet characters is ambiguous with a first group, so both readings
    are tried; they share one lookup form, so the answer does not depend on the reading.
    A key typed in one piece, without its dashes (a buyer retyping it, a form that strips
    them), is read without a prefix: trying every prefix length would pass a typo now and
    then, which the check character is there to catch.
    """
    if not isinstance(raw, str):
        return None
    if len(raw.strip()) > MAX_KEY_LENGTH:  # padding is forgiven whatever its length
        return None
    parts = key_groups(raw)
    if not parts or not all(p.isascii() and p.isalnum() for p in parts):
        return None
    if len(parts) == 1:
        whole = len(parts[0]) >= MIN_KEY_CHARACTERS and _body_valid(parts)
        return parts[0] if whole else None
    if _body_valid(parts) or _body_valid(parts[1:]):
        return "-".join(parts)
    return None


def lookup_form(canonical: str) -> str:
    """What the keyed hash is taken of: separators dropped, so regrouping still matches."""
    return canonical.replace("-", "")
