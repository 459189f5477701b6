"""Version precedence for update-check and perpetual fallback, without a server."""

from __future__ import annotations

import itertools

import pytest

from connector.licensing.versions import Version


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("1.0.0", "1.0.1"),
        ("1.2", "1.10"),
        ("1.9.9", "2.0"),
        ("2.0.0-beta.1", "2.0.0"),
        ("v1.0", "1.0.1"),
        ("1.0", "1.0.0.1"),
    ],
)
def test_versions_sort_numerically(older: str, newer: str) -> None:
    assert Version.parse(older) < Version.parse(newer)


def test_pre_releases_follow_semver_precedence() -> None:
    """Identifiers compare one by one: numbers numerically and before text, fewer first
    when all are equal, and every pre-release before its release."""
    chain = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.0.1-0.3.7",
        "1.0.1-rc.1",
    ]
    for older, newer in itertools.pairwise(chain):
        assert Version.parse(older) < Version.parse(newer), (older, newer)


@pytest.mark.parametrize(
    ("one", "same"),
    [
        ("1.10+build.7", "1.10"),
        ("v1.9+exp.sha.5114f85", "1.9.0"),
        ("2.0.0-rc.1+build.1", "2.0.0-rc.1"),
    ],
)
def test_build_metadata_does_not_make_another_version(one: str, same: str) -> None:
    assert Version.parse(one) == Version.parse(same)
