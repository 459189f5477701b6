"""Product meta read as the admin API reads a PUT: a value is what its key says, or refused."""

from __future__ import annotations

from typing import Any

import pytest

from connector.orders.product_sync import MetaError, spec_from_meta


@pytest.mark.parametrize(
    ("meta", "problem"),
    [
        ({"_keygate_activation_limit": "2.5"}, "_keygate_activation_limit must be a whole number"),
        ({"_keygate_duration_days": "1e3"}, "_keygate_duration_days must be a whole number"),
        ({"_keygate_files": '{"object_key": "a/b.zip"}'}, "_keygate_files must be a JSON list"),
        ({"_keygate_files": '"a/b.zip"'}, "_keygate_files must be a JSON list"),
    ],
)
def test_meta_that_is_not_what_its_key_says_is_refused_not_read_loosely(
    meta: dict[str, Any], problem: str
) -> None:
    """A fraction or an exponent is no whole number (never rounded to one), and files meta
    that is one object or one key is no list (never read as "no files")."""
    with pytest.raises(MetaError) as refused:
        spec_from_meta("Plugin Pro", meta)
    assert str(refused.value) == problem


@pytest.mark.parametrize(
    ("value", "meant"),
    [
        *[("yes", True), ("1", True), (" On ", True), (True, True)],
        *[("no", False), ("0", False), ("off", False), (False, False)],
    ],
)
def test_yes_no_meta_reads_each_way_the_shop_admin_writes_it(value: Any, meant: bool) -> None:
    """WooCommerce checkboxes and plugins write yes/no, 1/0, on/off or a decoded boolean."""
    spec = spec_from_meta("Plugin Pro", {"_keygate_staging_free": value})
    assert spec.policy["staging_free"] is meant
