"""Small, explicit checks for JSON bodies; each failure names the field (422)."""

from __future__ import annotations

from typing import Any

from flask import request

from connector.errors import InvalidInput, ValidationFailed


def json_body() -> dict[str, Any]:
    """The request's JSON object, or 400 when the body is not one."""
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise InvalidInput("The body must be a JSON object (Content-Type: application/json).")
    return data


def optional_int(
    data: dict[str, Any], name: str, *, minimum: int = 0, maximum: int = 10**6
) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationFailed(f"{name} must be a whole number or null", field=name)
    if not minimum <= value <= maximum:
        raise ValidationFailed(f"{name} must be between {minimum} and {maximum}", field=name)
    return value


def optional_bool(data: dict[str, Any], name: str) -> bool | None:
    value = data.get(name)
    if value is None or isinstance(value, bool):
        return value
    raise ValidationFailed(f"{name} must be true, false or null", field=name)


def required_str(data: dict[str, Any], name: str, *, max_length: int = 300) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ValidationFailed(f"{name} is required and must be text", field=name)
    if len(value) > max_length:
        raise ValidationFailed(f"{name} is longer than {max_length} characters", field=name)
    return value.strip()


def optional_str(data: dict[str, Any], name: str, *, max_length: int = 300) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationFailed(f"{name} must be text", field=name)
    if len(value) > max_length:
        raise ValidationFailed(f"{name} is longer than {max_length} characters", field=name)
    return value.strip()
