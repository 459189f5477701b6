"""Settings, read once at boot from ``KEYGATE_*`` environment variables.

Every setting may also be written in ``<instance>/keygate.toml`` (keys without the
``KEYGATE_`` prefix, lower case); the environment wins. A bad value stops the app at boot
with a message that names the setting, never later in the middle of a request.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from cryptography.fernet import Fernet

MASTER_KEY_FILE = "master.key"
SECRET_KEY_FILE = "secret.key"  # noqa: S105 - a file name
CONFIG_FILE = "keygate.toml"


class ConfigError(ValueError):
    """A setting is missing or malformed; raised at boot."""


@dataclass(frozen=True)
class Settings:
    """Validated settings. Built by :func:`load_settings`; never mutated afterwards."""

    instance_dir: Path
    # Secrets (and URLs that may hold a password) are left out of repr, so of tracebacks.
    database_url: str = field(repr=False)
    master_keys: tuple[str, ...] = field(repr=False)
    secret_key: str = field(repr=False)
    # The file the master keys were read from (None: the environment or an override), which
    # a running process follows (connector.vault.crypto.Keyring).
    master_key_file: Path | None = field(default=None, repr=False)
    base_url: str = "http://127.0.0.1:8000"
    max_body_bytes: int = 1024 * 1024
    # Reverse proxies in front of Keygate whose X-Forwarded-For/-Proto to trust (0: none).
    proxy_hops: int = 0
    worker: str = (
        "thread"  # "thread" runs jobs inside the server; "off" leaves them to `keygate worker`
    )
    worker_poll_seconds: float = 2.0
    # With the backoff (5 s doubling, capped at an hour): about 10 hours of retries, so a
    # mail, storage or shop outage of a night does not leave a buyer's mail dead.
    job_max_attempts: int = 20
    # auto: Brevo for stores with Brevo credentials, else the console; console: always the
    # console (development); brevo: only Brevo (mail waits in the outbox until configured).
    mail_backend: str = "auto"
    brevo_api_host: str = "https://api.brevo.com/v3"
    mail_echo: bool = True
    ratelimit_storage_uri: str = field(default="memory://", repr=False)
    ratelimit_license_per_key: str = "60/minute"
    ratelimit_license_per_ip: str = "600/minute"
    ratelimit_enabled: bool = True
    download_url_ttl: int = 300
    # How long a buyer's portal link (/my/<token>) works; an expired one offers a fresh link
    # by mail to the order's address.
    portal_link_days: int = 30
    # Shop connection (vault): how often orders are re-read and product meta is synced.
    reconcile_interval_seconds: int = 900
    product_sync_interval_seconds: int = 3600
    # Cloudflare R2 (or another S3-compatible endpoint) for every store, until the
    # per-store credential vault holds them. Empty bucket = embedded local storage.
    r2_account_id: str = ""
    r2_access_key_id: str = field(default="", repr=False)
    r2_secret_access_key: str = field(default="", repr=False)
    r2_bucket: str = ""
    r2_endpoint_url: str = ""
    # Whether a store's R2 endpoint_url may be (or resolve to) a loopback, private,
    # link-local or other non-public address: off, an owner or a store's API token could
    # point Keygate's requests at the instance's own network. Cloud metadata services are
    # refused either way; the instance-wide KEYGATE_R2_ENDPOINT_URL is the operator's own.
    allow_private_endpoints: bool = False
    # The visible line on watermarked PDFs; fields {name} {email} {order} {date}.
    watermark_template: str = "Licensed to {name} <{email}> · Order {order} · {date}"
    # Largest file the admin leak lookup accepts (the whole file is needed to read a PDF).
    leak_lookup_max_bytes: int = 512 * 1024 * 1024
    log_level: str = "INFO"
    # Retention (days) of records that are not needed for accounting or license enforcement.
    retention_webhook_days: int = 90
    retention_jobs_days: int = 30
    retention_mail_days: int = 365
    retention_security_days: int = 180
    retention_download_log_days: int = 365
    # An order that never issued a license or a download link (a product Keygate does not
    # license, a failed or cancelled checkout) keeps its buyer this long after its last
    # change, then only what identifies the sale: longer than product sync re-reads
    # unlicensed sales (30 days) and than a bank transfer waits on hold.
    retention_unlicensed_order_days: int = 90
    # The audit log, but for the order page's warning of a refund not applied (see purge).
    retention_audit_days: int = 730
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def storage_dir(self) -> Path:
        """Embedded object storage: ``<instance>/files/<object_key>``."""
        return self.instance_dir / "files"


_ENUMS = {"worker": {"thread", "off"}, "mail_backend": {"auto", "console", "brevo"}}


def _coerce(name: str, raw: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"KEYGATE_{name.upper()} must be true or false, not {raw!r}")
    if kind in (int, float):
        # keygate.toml gives typed values: a boolean is no number, and a float for a whole
        # number (1.5, inf, nan) is refused, not cut down or a traceback.
        whole_float = isinstance(raw, float) and math.isfinite(raw) and raw.is_integer()
        if isinstance(raw, bool) or (kind is int and isinstance(raw, float) and not whole_float):
            noun = "a whole number" if kind is int else "a number"
            raise ConfigError(f"KEYGATE_{name.upper()} must be {noun}, not {raw!r}")
        try:
            value = kind(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"KEYGATE_{name.upper()} must be a number, not {raw!r}") from None
        if not math.isfinite(value):  # "nan", "inf": the worker would spin or stop
            raise ConfigError(f"KEYGATE_{name.upper()} must be a finite number, not {raw!r}")
        if value < 0:
            raise ConfigError(f"KEYGATE_{name.upper()} must not be negative")
        return value
    if not isinstance(raw, str):
        # keygate.toml's quotes forgotten or brackets added: its Python spelling ("['…']",
        # "True") would be taken as the text. Named by its type only: it may be a secret.
        raise ConfigError(
            f"KEYGATE_{name.upper()} must be text (in quotes in keygate.toml), not"
            f" {_toml_type(raw)}"
        )
    return raw


def _toml_type(value: Any) -> str:
    """What a value read from keygate.toml is, in TOML's words."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return "a date" if isinstance(value, dt.date | dt.time) else type(value).__name__


def _read_key_file(path: Path) -> list[str]:
    if not path.exists():
        return []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise ConfigError(f"cannot read {path}: {reason}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_master_key_file(path: Path) -> tuple[str, ...]:
    """The master keys in ``path``, newest first, checked.

    Raises:
        ConfigError: the file is missing, unreadable, empty or holds a key that is not one.
    """
    keys = _read_key_file(path)
    if not keys:
        raise ConfigError(f"{path} holds no master key")
    return _check_fernet_keys(keys)


def _check_fernet_keys(keys: list[str]) -> tuple[str, ...]:
    for key in keys:
        try:
            Fernet(key)
        except (ValueError, TypeError):
            # Say which key by position only: the value itself is a secret.
            position = keys.index(key) + 1
            raise ConfigError(
                f"master key #{position} is not a valid Fernet key "
                "(32 url-safe base64-encoded bytes)"
            ) from None
    return tuple(keys)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# What Python's logging also takes, to the level it means.
_LEVEL_ALIASES = {"WARN": "WARNING", "FATAL": "CRITICAL", "NOTSET": "DEBUG"}
# The least value of settings that would otherwise break Keygate: 0 would spin the worker,
# give up on every job at once, purge records the day they are made, or ask the shop again
# every second; a body limit under a kilobyte would refuse every webhook and form (and a
# leak lookup limit, every found file).
_FLOORS = {
    "job_max_attempts": 1,
    "retention_webhook_days": 1,
    "retention_jobs_days": 1,
    "retention_mail_days": 1,
    "retention_security_days": 1,
    "retention_download_log_days": 1,
    "retention_unlicensed_order_days": 1,
    "retention_audit_days": 1,
    "reconcile_interval_seconds": 60,
    "product_sync_interval_seconds": 60,
    "max_body_bytes": 1024,
    "leak_lookup_max_bytes": 1024,
}

# The greatest value of settings: past those that count time a date computed from one (the
# purge's cutoff, a periodic job's next run) is outside the years a datetime can hold, and
# the job that needs it fails every time (nothing would ever be purged again).
_CEILINGS = {
    **{name: 36_600 for name in _FLOORS if name.startswith("retention_")},  # 100 years
    "reconcile_interval_seconds": 366 * 86_400,
    "product_sync_interval_seconds": 366 * 86_400,
    # An idle worker finds due jobs (retries, periodic runs, those other processes queued)
    # only when it looks: an hour at most, the longest wait between a job's tries. Past
    # about 300 years no thread can wait that long, and the worker died at its first poll.
    "worker_poll_seconds": 3600,
    # Every body up to it is read into memory (a webhook's before its signature is checked):
    # past 64 MiB one sender could fill the server's memory with a few requests.
    "max_body_bytes": 64 * 1024 * 1024,
}


def _check_values(values: dict[str, Any]) -> None:
    """What a library would otherwise refuse later, with a traceback naming no setting."""
    from limits import parse_many
    from limits.errors import ConfigurationError
    from limits.storage import storage_from_string

    from connector.db import url_problem
    from connector.downloads.watermark import template_problem
    from connector.ratelimit import storage_uri

    level = str(values.get("log_level", Settings.log_level)).upper()
    level = _LEVEL_ALIASES.get(level, level)
    if level not in LOG_LEVELS:
        raise ConfigError(f"KEYGATE_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
    values["log_level"] = level
    if "worker_poll_seconds" in values and values["worker_poll_seconds"] < 0.1:
        raise ConfigError("KEYGATE_WORKER_POLL_SECONDS must be at least 0.1")
    for name, least in _FLOORS.items():
        if name in values and values[name] < least:
            raise ConfigError(f"KEYGATE_{name.upper()} must be at least {least}")
    for name, most in _CEILINGS.items():
        if name in values and values[name] > most:
            raise ConfigError(f"KEYGATE_{name.upper()} must be at most {most}")
    if "brevo_api_host" in values and _http_url(str(values["brevo_api_host"])) is None:
        raise ConfigError("KEYGATE_BREVO_API_HOST must be an http(s) URL")
    base = _http_url(str(values.get("base_url", Settings.base_url)))
    # Every link in a mail and every webhook address starts with it: a user and password
    # would be mailed to every buyer, a query or fragment would swallow the links' paths.
    if base is None or base.username is not None or base.query or base.fragment:
        raise ConfigError(
            "KEYGATE_BASE_URL must be an http(s) address (scheme, host, optional port and"
            " path) without a user, password, query or fragment"
        )
    for name in ("ratelimit_license_per_key", "ratelimit_license_per_ip"):
        if name in values:
            try:
                parse_many(str(values[name]))
            except ValueError:
                raise ConfigError(
                    f"KEYGATE_{name.upper()} must be a rate limit such as 60/minute"
                ) from None
    uri = str(values.get("ratelimit_storage_uri", Settings.ratelimit_storage_uri))
    try:
        storage_from_string(storage_uri(uri))  # builds a client; most connect on first use
    except (ConfigurationError, ValueError):  # an unknown scheme, a client not installed
        # Not the URI itself in the message: it may carry a Redis password.
        raise ConfigError(
            "KEYGATE_RATELIMIT_STORAGE_URI must be memory:// or a storage the limits library"
            " knows and has its client installed for, such as redis://127.0.0.1:6379"
        ) from None
    except Exception:  # noqa: S110 - a cluster that does not answer yet: limits wait for it
        pass
    if "watermark_template" in values:
        problem = template_problem(str(values["watermark_template"]))
        if problem is not None:  # else every click on a watermarked file would fail
            raise ConfigError(f"KEYGATE_WATERMARK_TEMPLATE {problem}")
    if "database_url" in values:
        # Checked as the engine will use it (else a traceback from every command, at the
        # first connection), in words that never hold the password.
        problem = url_problem(str(values["database_url"]))
        if problem is not None:
            raise ConfigError(f"KEYGATE_DATABASE_URL {problem}")


# Read from their own files or the environment, never from keygate.toml (nor as ordinary
# settings: master_key is the one-key spelling of master_keys).
_NOT_IN_FILE = {
    "master_key",
    "master_keys",
    "master_key_file",
    "secret_key",
    "instance_dir",
    "extra",
}


def _check_file_keys(path: Path, given: set[str], known: set[str]) -> None:
    """A key keygate.toml cannot set is an error at boot, not silently ignored (a typo
    would otherwise leave the default in force)."""
    secrets_given = sorted(given & _NOT_IN_FILE)
    if secrets_given:
        raise ConfigError(
            f"{path}: {', '.join(secrets_given)} cannot be set here: the master and secret keys"
            " are read from master.key and secret.key beside it, or KEYGATE_MASTER_KEY(S) and"
            " KEYGATE_SECRET_KEY; the instance folder from KEYGATE_INSTANCE_DIR"
        )
    unknown = sorted(given - known)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}")


def _check_r2(values: dict[str, Any]) -> None:
    """The instance-wide bucket's settings, by the rules a store's R2 credentials follow."""
    from connector.integrations.r2 import ACCOUNT_ID, BUCKET, endpoint_problem  # boto3: lazily

    if values.get("r2_endpoint_url"):
        problem = endpoint_problem(str(values["r2_endpoint_url"]))
        if problem is not None:
            raise ConfigError(f"KEYGATE_R2_ENDPOINT_URL {problem}")
    if values.get("r2_bucket") and not BUCKET.fullmatch(str(values["r2_bucket"])):
        raise ConfigError(
            "KEYGATE_R2_BUCKET must be a bucket name: 3-63 lower-case letters, digits, dots"
            " and hyphens"
        )
    account = str(values.get("r2_account_id") or "")
    no_endpoint = values.get("r2_bucket") and not values.get("r2_endpoint_url")
    if no_endpoint and not ACCOUNT_ID.fullmatch(account):
        raise ConfigError(
            "KEYGATE_R2_ACCOUNT_ID must be the R2 account id (letters, digits, _ and -),"
            " or set KEYGATE_R2_ENDPOINT_URL"
        )
    missing = [
        f"KEYGATE_{name.upper()}"
        for name in ("r2_access_key_id", "r2_secret_access_key")
        if not values.get(name)
    ]
    if values.get("r2_bucket") and missing:  # else every file went to the embedded folder
        raise ConfigError(
            f"KEYGATE_R2_BUCKET is set, but not {' and '.join(missing)}: give the bucket's"
            " keys, or leave KEYGATE_R2_BUCKET empty to keep files in the embedded folder"
        )


def _plain_settings(
    overrides: dict[str, Any], env: Mapping[str, str], defaults: Mapping[str, Any] | None
) -> tuple[Path, dict[str, Any]]:
    """The instance folder and every setting but the keys, checked; what is read from
    ``overrides`` is popped from it."""
    instance_dir = Path(
        overrides.pop("instance_dir", None) or env.get("KEYGATE_INSTANCE_DIR") or "instance"
    ).resolve()

    file_values: dict[str, Any] = {}
    config_path = instance_dir / CONFIG_FILE
    if config_path.exists():
        try:
            file_values = tomllib.loads(config_path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_path} is not valid TOML: {exc}") from None
        except UnicodeDecodeError:  # an editor's Latin-1: TOML is UTF-8, whatever the locale
            raise ConfigError(f"{config_path} is not UTF-8 text: save it as UTF-8") from None
        except OSError as exc:  # a folder of that name, a file of another user's
            reason = exc.strerror or type(exc).__name__
            raise ConfigError(f"cannot read {config_path}: {reason}") from None

    known = {f.name: f for f in fields(Settings)}
    _check_file_keys(config_path, set(file_values), set(known))
    values: dict[str, Any] = {}
    for name, spec in known.items():
        if name in _NOT_IN_FILE:  # read on their own, below (or not settings at all)
            continue
        env_name = f"KEYGATE_{name.upper()}"
        if name in overrides:
            raw = overrides.pop(name)
        elif env.get(env_name, "") != "":  # set but empty (VAR= in a compose file): unset
            raw = env[env_name]
        elif name in file_values:
            raw = file_values[name]
        elif defaults and name in defaults:
            raw = defaults[name]
        else:
            continue
        kind = type(spec.default) if not isinstance(spec.default, type(None)) else str
        values[name] = _coerce(name, raw, kind if name != "database_url" else str)

    for name, allowed in _ENUMS.items():
        if name in values and values[name] not in allowed:
            raise ConfigError(
                f"KEYGATE_{name.upper()} must be one of {sorted(allowed)}, not {values[name]!r}"
            )

    values.setdefault("database_url", f"sqlite:///{instance_dir / 'keygate.db'}")
    # "HTTPS://" (typed so, or capitalised by a phone's keyboard) is https: every check of
    # the scheme (secure cookies, the wc-auth link's warning) and every link reads it lower.
    scheme, sep, rest = str(values.get("base_url", Settings.base_url)).partition("://")
    values["base_url"] = (scheme.lower() + sep + rest if sep else scheme).rstrip("/")
    if values.get("download_url_ttl", 300) < 1 or values.get("download_url_ttl", 300) > 604800:
        raise ConfigError("KEYGATE_DOWNLOAD_URL_TTL must be between 1 and 604800 seconds")
    if not 1 <= values.get("portal_link_days", 30) <= 3650:
        raise ConfigError("KEYGATE_PORTAL_LINK_DAYS must be between 1 and 3650")
    _check_values(values)
    if values.get("r2_bucket") or values.get("r2_endpoint_url"):
        _check_r2(values)
    return instance_dir, values


def _http_url(value: str) -> SplitResult | None:
    """``value`` split, when it is an http(s) URL with a host and a valid port, else None."""
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        return None
    try:
        url = urlsplit(value)
        url.port  # noqa: B018 - raises for a port that is no number or past 65535
    except ValueError:  # an unclosed [ of an IPv6 host, a port out of range
        return None
    return url if url.scheme in ("http", "https") and url.hostname else None


def unset_base_url_warning(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> str | None:
    """What to tell the operator of a server or worker given no address (neither
    ``KEYGATE_BASE_URL`` nor ``base_url`` in keygate.toml): its links (buyers' mails, the
    portal, webhook URLs) would name the embedded default, which no buyer can open. None
    when an address is given."""
    env = os.environ if environ is None else environ
    probe = "http://base-url-not-given.invalid"
    if settings.base_url != Settings.base_url:
        return None
    if _plain_settings({}, env, {"base_url": probe})[1]["base_url"] != probe:
        return None  # given, as the embedded default itself
    return (
        f"no KEYGATE_BASE_URL: links in mails and pages say {Settings.base_url}, which"
        " buyers cannot open; set it to the address buyers and the shop reach Keygate at,"
        " the same on every server and worker"
    )


def configured_database_url(environ: Mapping[str, str] | None = None) -> str:
    """The database the settings name, read without the keys (which a new instance does
    not have yet): for saying which database could not be reached.

    Raises:
        ConfigError: a setting is malformed.
    """
    env = os.environ if environ is None else environ
    return str(_plain_settings({}, env, None)[1]["database_url"])


def _missing_key(path: Path, kind: str, variable: str) -> str:
    """Why there is no master or secret key, and what to do: a file that is there but empty
    (a copy cut short) is not one `keygate init` may make anew."""
    if path.exists():
        return (
            f"{path} holds no {kind} key (an empty or cut-short copy?): restore it from the"
            " machine or backup the database was made on, or set KEYGATE_" + variable
        )
    return (
        f"no {kind} key in {path} or KEYGATE_{variable}: for a new instance, run `keygate"
        " init`; an existing database needs the key it was made with (restore the file)"
    )


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Settings:
    """Read and validate settings.

    Args:
        overrides: values that win over everything (tests, embedding); keys are field names.
        environ: the environment to read (defaults to ``os.environ``).
        defaults: values used only where neither the environment nor ``keygate.toml`` sets
            one (``keygate run``'s own address as the base URL).

    Raises:
        ConfigError: a value is malformed or a required secret is missing.
    """
    env = os.environ if environ is None else environ
    overrides = dict(overrides or {})
    instance_dir, values = _plain_settings(overrides, env, defaults)

    # Master keys: newest first. KEYGATE_MASTER_KEYS (comma separated) or KEYGATE_MASTER_KEY,
    # else the instance file written by `keygate init`.
    master_key_file = None
    if "master_keys" in overrides:
        master = list(overrides.pop("master_keys"))
    elif env.get("KEYGATE_MASTER_KEYS"):
        master = [k.strip() for k in env["KEYGATE_MASTER_KEYS"].split(",") if k.strip()]
        if not master:  # set, to commas or spaces: not the key file's fault
            raise ConfigError(
                "KEYGATE_MASTER_KEYS names no key: Fernet keys, comma separated, newest first"
            )
    elif env.get("KEYGATE_MASTER_KEY"):
        master = [env["KEYGATE_MASTER_KEY"].strip()]
    else:
        master_key_file = instance_dir / MASTER_KEY_FILE
        master = _read_key_file(master_key_file)
    if not master:
        raise ConfigError(_missing_key(instance_dir / MASTER_KEY_FILE, "master", "MASTER_KEY"))

    secret = overrides.pop("secret_key", None) or env.get("KEYGATE_SECRET_KEY")
    if not secret:
        secret_lines = _read_key_file(instance_dir / SECRET_KEY_FILE)
        secret = secret_lines[0] if secret_lines else None
    if secret and len(secret) < 32:
        raise ConfigError("the secret key (KEYGATE_SECRET_KEY or secret.key) is shorter than 32")
    if not secret:
        raise ConfigError(_missing_key(instance_dir / SECRET_KEY_FILE, "secret", "SECRET_KEY"))

    return Settings(
        instance_dir=instance_dir,
        master_keys=_check_fernet_keys(master),
        master_key_file=master_key_file,
        secret_key=secret,
        extra=overrides,
        **values,
    )
