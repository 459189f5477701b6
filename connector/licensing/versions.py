"""Product versions as update-check and perpetual fallback compare them.

SemVer-style precedence, lenient about the shape of the release part (product versions are
whatever owners publish, not PEP 440 and not always three numbers):

- a leading ``v`` is dropped (``v1.9`` is ``1.9``), and so is build metadata after ``+``
  (``1.10+build.7`` is ``1.10``);
- the release part's numbers compare numerically, missing ones count as 0 (``1.10`` is
  ``1.10.0``, ``1.10`` is after ``1.9``);
- after the first ``-`` comes a pre-release (``2.0.0-beta.2``), before its release: its
  dot-separated identifiers compare one by one, numeric ones as numbers and before
  alphanumeric ones, which compare as ASCII text; when all are equal, fewer come first.

``packaging`` does not fit: PEP 440 ranks local versions (``+build.7``) above the bare one and
refuses pre-release identifiers it does not know (``-alpha.beta``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from connector.errors import ValidationFailed

_NUMBER = re.compile(r"[0-9]+")

# One pre-release identifier as it sorts: numeric (0, value, "") before alphanumeric (1, 0, text).
Identifier = tuple[int, int, str]


def _identifier(text: str) -> Identifier:
    return (0, int(text), "") if _NUMBER.fullmatch(text) else (1, 0, text)


def _release_part(text: str) -> tuple[str, str]:
    """The release part of a version and its pre-release (empty for a stable version)."""
    version = text.strip().partition("+")[0]
    if version[:1] in ("v", "V"):
        version = version[1:]
    release_part, _, pre = version.partition("-")
    return release_part, pre


def comparable_version(text: str) -> str:
    """``text`` if it is a version update-check can compare: one with a number in its release
    part (``1.2``, ``v1.2.3-beta.1``, ``2024.05.01``). Without one (``!!!``, ``latest``,
    ``-1.0``) it would compare as 0, older than every release: a caller sending it is told
    "up to date", and a release published as it is never offered. Versions already stored are
    compared as they are (:meth:`Version.parse` takes any text).

    Raises:
        ValidationFailed: (422) naming ``version``.
    """
    if not _NUMBER.search(_release_part(text)[0]):
        raise ValidationFailed(
            "version cannot be compared: it needs a number before any '-' "
            "(1.2, 1.2.3, v1.2.3, 1.2.3-beta.1, 2024.05.01)",
            field="version",
        )
    return text


@dataclass(frozen=True, order=True)
class Version:
    """A version's precedence: equal objects are the same version, a greater one is newer."""

    release: tuple[int, ...]  # trailing zeros dropped, so 1.10 == 1.10.0
    stable: bool  # False for a pre-release, which sorts before its release
    pre: tuple[Identifier, ...]

    @classmethod
    def parse(cls, text: str) -> Version:
        """Any text a caller or owner sends; the numbers of the release part are what count
        there (``latest`` is 0)."""
        release_part, pre = _release_part(text)
        numbers = [int(n) for n in _NUMBER.findall(release_part)]
        while numbers and numbers[-1] == 0:
            numbers.pop()
        return cls(
            release=tuple(numbers),
            stable=not pre,
            pre=tuple(_identifier(part) for part in pre.split(".")) if pre else (),
        )
