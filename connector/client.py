"""Keygate's client library for the sold software. One file: vendor it into your product.

Needs only the standard library and ``cryptography``. It checks every answer before trusting
it: the Ed25519 signature (against public keys you pin), the body's ``Digest``, the ``Date``
(clock skew), and that it answers the request sent (it echoes the nonce and the request
body's digest). An answer that fails a check is never trusted and counts as Keygate out of
reach (:class:`UnverifiedAnswer`, logged). The last good ``validate`` answer is kept with its
request (in memory, and in ``cache_path`` if given) and used for the same question while
Keygate cannot be reached or asks the client to wait (429), for ``grace_period`` seconds
after it was signed (``result.offline_reason`` says why).

    from keygate_client import KeygateClient   # this file, renamed as you like

    client = KeygateClient(
        "https://licenses.example.com",
        public_keys={"kg-1a2b3c4d5e6f": "base64-of-the-32-byte-key="},
        product="501",
        cache_path="~/.myapp/license-cache.json",
    )
    result = client.activate(key, site="https://shop.example.com")
    result = client.validate(key, site="https://shop.example.com")
    if not result.valid:
        print(result.code, result.detail)

Offline files: ``client.checkout(key, ...)`` returns one; ``verify_license_file(text,
public_keys, key=key, site=..., fingerprint=...)`` checks it later without the network.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import email.message
import email.utils
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import math
import os
import queue
import re
import secrets
import socket
import tempfile
import threading
import time
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "KeygateClient",
    "KeygateClientError",
    "LicenseFileError",
    "RequestRejected",
    "Result",
    "SignatureError",
    "Unavailable",
    "UnverifiedAnswer",
    "verify_license_file",
    "verify_response",
]

SIGNED_HEADERS = "(request-target) host date digest"
FILE_BEGIN = "-----BEGIN KEYGATE LICENSE FILE-----"
FILE_END = "-----END KEYGATE LICENSE FILE-----"
HKDF_INFO = b"keygate license file v1"
_PARAM = re.compile(r'(\w+)="([^"]*)"')
VALIDATE_PATH = "/api/v1/licenses/validate"
DEFAULT_SKEW = 300.0
# The largest answer read: a license answer or file is a few KiB.
MAX_ANSWER_BYTES = 1024 * 1024
# Result.offline_reason: why a saved answer served instead of a fresh one.
UNREACHABLE = "unreachable"
RATE_LIMITED = "rate_limited"
UNVERIFIED = "unverified"
# Codes of a signed answer to any call saying the license is no good for its key, site and
# fingerprint whatever the version asked about (not EXPIRED: a release from before the
# expiry may still run; not UPDATES_EXPIRED): the answer saved for validate is forgotten;
# for the license's own end (LICENSE_ENDED), every site's and machine's answer for the key.
LICENSE_ENDED = frozenset({"NOT_FOUND", "REVOKED", "SUSPENDED"})
NO_LONGER_VALID = LICENSE_ENDED | {
    "PRODUCT_MISMATCH",
    "NO_ACTIVATION",
    "SITE_MISMATCH",
    "FINGERPRINT_MISMATCH",
    "TOO_MANY_ACTIVATIONS",
}

_log = logging.getLogger(__name__)


class KeygateClientError(Exception):
    """Base of this module's errors."""


class SignatureError(KeygateClientError):
    """The answer is not provably from Keygate (signature, digest, date or nonce)."""


class Unavailable(KeygateClientError):
    """Keygate could not be reached (or its answer could not be trusted:
    :class:`UnverifiedAnswer`) and no cached answer is within the grace period."""


class UnverifiedAnswer(SignatureError, Unavailable):
    """An answer came to a call but did not verify: altered on the way, signed by a key not
    pinned, dated too far from this machine's clock, or not to the request sent. It is never
    trusted, and it counts as Keygate out of reach (whoever can alter answers can block them
    too, so an altered answer must not do more harm than none): ``validate`` serves its
    saved answer meanwhile, with ``offline_reason == "unverified"``. A warning is logged
    each time. Both ``except Unavailable`` and ``except SignatureError`` catch it."""


class RequestRejected(KeygateClientError):
    """A signed error answer (4xx): bad input, or rate limited (status 429)."""

    def __init__(self, status: int, body: dict[str, Any], retry_after: int | None) -> None:
        super().__init__(f"{status}: {body.get('detail', '')}")
        self.status = status
        self.body = body
        self.retry_after = retry_after


class LicenseFileError(KeygateClientError):
    """An offline license file is malformed, forged, expired or for another key."""


class UpdateRejected(KeygateClientError):
    """What was fetched for an update is not the release Keygate's signed answer describes
    (its sha256 or size differ): a file swapped in storage or on the way. Nothing is kept."""


@dataclass
class Result:
    """A verified answer. ``offline`` is True when it came from the cache, and
    ``offline_reason`` then says why: ``"unreachable"`` (no connection, no whole answer in
    time, a 5xx, a page not from Keygate), ``"rate_limited"`` (a signed 429) or
    ``"unverified"`` (an answer came that did not verify: see :class:`UnverifiedAnswer`)."""

    valid: bool
    code: str
    detail: str
    license: dict[str, Any] | None
    data: dict[str, Any] = field(default_factory=dict)
    offline: bool = False
    offline_reason: str | None = None


# Key id -> the public key as /api/v1/signing-keys lists it (standard base64 of its 32
# bytes), its raw bytes, or a checked key (a client's ``public_keys``).
PublicKeys = Mapping[str, str | bytes] | Mapping[str, Ed25519PublicKey]


def _public_key(kid: str, value: str | bytes | Ed25519PublicKey) -> Ed25519PublicKey:
    if isinstance(value, Ed25519PublicKey):  # a client's public_keys, passed on
        return value
    try:
        raw = value if isinstance(value, bytes) else base64.b64decode(value, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (TypeError, ValueError, binascii.Error):
        raise ValueError(
            f"the public key pinned as {kid!r} is not one Keygate publishes: pin its "
            "public_key as GET /api/v1/signing-keys lists it (the standard base64 of 32 "
            "bytes, nothing added)"
        ) from None


def _base_url(value: str) -> str:
    """The address Keygate is served at, without a trailing slash.

    Raises:
        ValueError: not the http(s) address of a host (a bare host name, a query, a user
            name), naming it.
    """
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
        # A host name no resolver takes (an empty label: a doubled dot; one over 63
        # characters) raised UnicodeError (a ValueError) from every call.
        (parts.hostname or "").encode("idna")
    except (TypeError, ValueError, AttributeError):
        parts = None
    if (
        parts is None
        or parts.scheme.lower() not in {"http", "https"}
        or not parts.hostname
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
    ):
        shown = "" if "@" in str(value) else f" {value!r}"  # a password is never shown
        raise ValueError(
            f"base_url{shown} is not the address Keygate is served at: give its http(s)"
            " address, such as https://keygate.example.com (no query, no user name)"
        )
    return value.rstrip("/")


def _cache_path(value: str | os.PathLike[str]) -> Path | None:
    """Where the saved answers go, ``~`` expanded; None (answers kept in memory only) when
    there is no home to expand it to (a container's user without HOME or passwd entry):
    a cache never fails the product."""
    try:
        return Path(value).expanduser()
    except RuntimeError:
        _log.warning("no home folder to keep the saved answers in (%s): kept in memory", value)
        return None


def _pinned(
    public_keys: PublicKeys,
) -> dict[str, Ed25519PublicKey]:
    """The pinned keys, checked.

    Raises:
        TypeError: not a mapping of key id to key (the signing-keys answer's list, say).
        ValueError: a key that is not an Ed25519 public key in standard base64, naming it.
    """
    if not isinstance(public_keys, Mapping):
        raise TypeError(
            "public_keys maps each key id (kid) to its public_key, as GET "
            "/api/v1/signing-keys lists them: {kid: public_key}"
        )
    return {kid: _public_key(kid, value) for kid, value in public_keys.items()}


def _digest(body: bytes) -> str:
    return "sha-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


# Headers the check reads that must come once: which Digest or signature counts must not
# depend on who reads the answer. Others may repeat (a CDN's Set-Cookie; Date, below).
SINGLE_HEADERS = ("keygate-signature", "digest")


def _signed_dates(received: list[str]) -> list[tuple[str, float]]:
    """The Dates the answer may have been signed with, and their times: each Date received,
    then each a second earlier. A server or proxy in front of Keygate (gunicorn, nginx)
    replaces Keygate's Date with its own, made a moment later, which may fall in the next
    second; some (werkzeug) send theirs besides Keygate's."""
    candidates = []
    for value in received:
        try:
            at = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            continue
        candidates.append((value, at))
    return candidates + [
        (email.utils.formatdate(at - 1, usegmt=True), at - 1) for _, at in candidates
    ]


def verify_response(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str] | email.message.Message,
    body: bytes,
    public_keys: PublicKeys,
    nonce: str | None = None,
    max_skew: float | None = 300.0,
    now: float | None = None,
    host: str | None = None,
    request_body: bytes | None = None,
) -> dict[str, Any]:
    """Check a Keygate answer and return its JSON body.

    Args:
        method, url: the request as sent (the URL's path and query are signed). Keygate
            served under a path prefix signs the path it routes: pass the URL without it.
        headers, body: the answer as received.
        public_keys: pinned keys, key id -> standard base64 of the raw 32 bytes (or bytes, or
            a client's ``public_keys``).
        nonce: the nonce sent; the body must echo it.
        max_skew: how far the answer's Date may be from ``now`` (None: not checked).
        host: the Host header sent, when it differs from the URL's host[:port] (without
            it, that or the host name alone, as a proxy passing on nginx's ``$host``
            makes it, is taken).
        request_body: the body sent; the answer's ``request_digest`` must be its digest
            (the answer is to this question: key, site, fingerprint, product, version).

    Raises:
        SignatureError: anything does not check out.
    """
    data, _, _ = _verify(
        method=method,
        url=url,
        headers=headers,
        body=body,
        public_keys=public_keys,
        nonce=nonce,
        max_skew=max_skew,
        now=now,
        host=host,
        request_body=request_body,
    )
    return data


def _verify(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str] | email.message.Message,
    body: bytes,
    public_keys: PublicKeys,
    nonce: str | None = None,
    max_skew: float | None = 300.0,
    now: float | None = None,
    host: str | None = None,
    request_body: bytes | None = None,
    routed_url: str | None = None,
) -> tuple[dict[str, Any], str, str]:
    """:func:`verify_response`, which also gives the Date that was signed (one received, or
    a second before one) and the URL whose path was signed: what a saved answer keeps to be
    checked again offline. ``routed_url``: the URL as Keygate may have routed it, tried
    after ``url`` (behind a path prefix, Keygate signs the path it routes, without it)."""
    received = [(k.lower(), v) for k, v in headers.items()]
    for name in SINGLE_HEADERS:
        if sum(1 for k, _ in received if k == name) > 1:
            raise SignatureError(f"the answer carries {name} twice")
    lowered = dict(received)
    params = dict(_PARAM.findall(lowered.get("keygate-signature", "")))
    if params.get("algorithm") != "ed25519" or params.get("headers") != SIGNED_HEADERS:
        raise SignatureError("the answer is not signed the way Keygate signs")
    keys = _pinned(public_keys)
    key = keys.get(params.get("keyid", ""))
    if key is None:
        raise SignatureError(f"unknown signing key id {params.get('keyid')!r}")
    digest = lowered.get("digest", "")
    if not hmac.compare_digest(digest.encode("utf-8", "replace"), _digest(body).encode()):
        raise SignatureError("the body does not match its Digest")
    dates = _signed_dates([v for k, v in received if k == "date"])
    if not dates:
        raise SignatureError("the answer has no valid Date")
    parts = urlsplit(url)
    try:
        signature = base64.b64decode(params.get("signature", ""), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("the signature does not verify") from None

    hosts = [host] if host is not None else _hosts_received(parts.netloc)

    def signed_with(signed_url: str, date: str) -> bool:
        path = urlsplit(signed_url)
        target = f"{method.lower()} {path.path or '/'}" + (f"?{path.query}" if path.query else "")
        for signed_host in hosts:
            signed = (
                f"(request-target): {target}\nhost: {signed_host}\ndate: {date}\ndigest: {digest}"
            ).encode()
            try:
                key.verify(signature, signed)
            except InvalidSignature:
                continue
            return True
        return False

    signed_urls = [url] if routed_url in (None, url) else [url, str(routed_url)]
    signed_url, signed_date, signed_at = next(
        (
            (signed_url, date, at)
            for signed_url in signed_urls
            for date, at in dates
            if signed_with(signed_url, date)
        ),
        (url, None, 0.0),
    )
    if signed_date is None:
        raise SignatureError("the signature does not verify")
    if max_skew is not None and abs((time.time() if now is None else now) - signed_at) > max_skew:
        raise SignatureError("the answer's Date is too far from this machine's clock")
    try:
        data = json.loads(body)
    except ValueError:
        raise SignatureError("the signed body is not JSON") from None
    if not isinstance(data, dict):
        raise SignatureError("the signed body is not a JSON object")
    _check_echo(data, nonce, request_body, required=True)
    return data, signed_date, signed_url


def _hosts_received(netloc: str) -> list[str]:
    """The Host headers Keygate may have received for a request to ``netloc``: the one
    sent, then the name alone in lower case, without the port, which a reverse proxy
    passes on as nginx's ``proxy_set_header Host $host;`` does (IPv6 in brackets)."""
    name = urlsplit("//" + netloc).hostname or ""
    alone = f"[{name}]" if ":" in name else name
    return [netloc] if alone in ("", netloc) else [netloc, alone]


def _check_echo(
    data: dict[str, Any], nonce: str | None, request_body: bytes | None, *, required: bool
) -> None:
    """The answer names the request it answers: its nonce and the digest of its body. Not
    ``required``: only what the answer echoes is compared (an error about a body the
    server could not read, too large or not JSON, cannot echo it)."""
    for name, sent in (
        ("nonce", nonce),
        ("request_digest", None if request_body is None else _digest(request_body)),
    ):
        echoed = data.get(name)
        if sent is None or (echoed is None and not required):
            continue
        if not isinstance(echoed, str) or not hmac.compare_digest(echoed.encode(), sent.encode()):
            raise SignatureError(f"the answer is not to this request: its {name} differs")


def _asked_key(record: Any) -> str | None:
    """The key (compacted) a saved answer's request asked about, or None: not one."""
    try:
        key = json.loads(record["request"])["key"]
    except (KeyError, TypeError, ValueError, RecursionError):
        return None
    return _compact(key) if isinstance(key, str) else None


def _moment(value: Any) -> float | None:
    """The time of an ISO 8601 UTC string Keygate wrote, or None."""
    try:
        at = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return at.timestamp() if at.tzinfo is not None else None


def _compact(license_key: str) -> str:
    """The key without its separators, upper case: whitespace and dashes forgiven, the Unicode
    ones a mail, PDF or chat slips in too (no-break and zero-width spaces, byte order mark,
    non-breaking hyphen, en dash: whitespace, format characters and dashes), as Keygate
    forgives them (connector.licensing.keys.key_groups; this file stands alone)."""
    text = "-".join(license_key.split())
    if not text.isascii():
        text = "".join("-" if unicodedata.category(c) in ("Cf", "Pd") else c for c in text)
    return "".join(p for p in text.upper().split("-") if p)


def _utf8(text: str) -> bytes:
    """``text`` as UTF-8, a lone surrogate too: what Python makes of bytes that are not
    UTF-8 read from argv, the environment or a file (``surrogateescape``). Such text is
    never a key or site Keygate knows: it says so (422), and the product hears it, not a crash."""
    return text.encode("utf-8", "surrogatepass")


def _file_key(license_key: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO).derive(
        _utf8(_compact(license_key))
    )


def verify_license_file(
    text: str | bytes,
    public_keys: PublicKeys,
    *,
    key: str | None = None,
    product: str | int | None = None,
    store: str | None = None,
    site: str | None = None,
    fingerprint: str | None = None,
    now: dt.datetime | None = None,
    max_skew: float = DEFAULT_SKEW,
) -> dict[str, Any]:
    """Check an offline license file; return its content (license, site, expiry...).

    Pass ``key`` to decrypt an encrypted file and to check that a plain one names this key,
    ``product`` and ``store`` (as given to the client) to check the file is for this
    store's product, and the identity it must be for: ``site`` (as sent to checkout, or
    as Keygate answers it) and ``fingerprint`` (as sent to checkout). An identity is the
    pair: a file naming a site is no machine's license unless ``site`` is checked too (a
    free staging site takes no seat, so anyone with the key can check one out for any
    fingerprint).

    Raises:
        LicenseFileError: not a license file (``None`` too: what a refused checkout gives),
            malformed, forged, encrypted for another key, for another product, site or
            machine, issued in the future (a clock set back), or past its expiry.
        ValueError: ``site`` is empty or blank (None is no site).
        TypeError: ``key`` is given but is not text.
    """
    _refuse_empty_site(site)
    if key is not None:
        _refuse_key_not_text(key)
    if isinstance(text, bytes):  # read from disk as bytes: the file is ASCII
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise LicenseFileError("not a Keygate license file") from None
    if not isinstance(text, str):
        raise LicenseFileError("not a Keygate license file")
    body = text.strip()
    if not body.startswith(FILE_BEGIN) or not body.endswith(FILE_END):
        raise LicenseFileError("not a Keygate license file")
    encoded = "".join(body[len(FILE_BEGIN) : -len(FILE_END)].split())
    try:
        envelope = json.loads(base64.b64decode(encoded, validate=True))
        enc, sig, alg, kid = envelope["enc"], envelope["sig"], envelope["alg"], envelope["kid"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise LicenseFileError("the license file is damaged") from None
    keys = _pinned(public_keys)
    if kid not in keys:
        raise LicenseFileError(f"the license file is signed by an unknown key {kid!r}")
    try:
        keys[kid].verify(base64.b64decode(sig, validate=True), b"license/" + enc.encode())
    except (InvalidSignature, binascii.Error, ValueError):
        raise LicenseFileError("the license file's signature does not verify") from None
    try:
        raw = base64.b64decode(enc, validate=True)
        if alg == "aes-256-gcm+ed25519":
            if key is None:
                raise LicenseFileError("this license file is encrypted: pass the license key")
            plain = AESGCM(_file_key(key)).decrypt(raw[:12], raw[12:], None)
        elif alg == "base64+ed25519":
            plain = raw
        else:
            raise LicenseFileError(f"unknown license file algorithm {alg!r}")
        content = json.loads(plain)
    except InvalidTag:
        raise LicenseFileError("this license file was made for another key") from None
    except (ValueError, binascii.Error):
        raise LicenseFileError("the license file is damaged") from None
    if not isinstance(content, dict):
        raise LicenseFileError("the license file is damaged")
    if key is not None and "key_sha256" in content:
        expected = hashlib.sha256(_utf8(_compact(key))).hexdigest()
        if not hmac.compare_digest(str(content["key_sha256"]), expected):
            raise LicenseFileError("this license file was made for another key")
    if now is not None and now.tzinfo is None:
        raise ValueError("now must be timezone-aware, e.g. datetime.now(timezone.utc)")
    moment = now or dt.datetime.now(dt.UTC)
    try:
        expiry = dt.datetime.fromisoformat(str(content.get("expiry", "")).replace("Z", "+00:00"))
    except ValueError:
        raise LicenseFileError("the license file has no valid expiry") from None
    if expiry.tzinfo is None:  # Keygate writes UTC with a Z: this file was not made by it
        raise LicenseFileError("the license file has no valid expiry")
    if moment >= expiry:
        raise LicenseFileError(f"the license file expired at {content.get('expiry')}")
    issued = _moment(content.get("issued"))
    if issued is not None and issued > moment.timestamp() + max_skew:
        raise LicenseFileError("the license file was issued after this machine's time")
    licensed = content.get("license")
    licensed = licensed if isinstance(licensed, dict) else {}
    # The product checkout was asked for (a variation's parent), or the license's own.
    # Shop ids are strings in the file: 501 and "501" name one product.
    if product is not None and str(product) not in (
        content.get("product"),
        licensed.get("product"),
    ):
        raise LicenseFileError("this license file is for another product")
    if store is not None and content.get("store") != store:
        raise LicenseFileError("this license file is for another store's product")
    if fingerprint is not None and content.get("fingerprint") != fingerprint.strip():
        raise LicenseFileError("this license file is for another machine")
    named_site = content.get("site")
    if site is not None and named_site not in (site.strip(), site_host(site)):
        raise LicenseFileError("this license file is for another site")
    if site is None and fingerprint is not None and named_site is not None:
        raise LicenseFileError(
            "this license file is for a site, not this machine alone: pass site= to check it"
        )
    return dict(content)


def _refuse_empty_site(site: str | None) -> None:
    """An empty or blank ``site`` is a mistake (a setting not filled in), never "no site":
    that is None. Keygate refuses it too (422)."""
    if isinstance(site, str) and not site.strip():
        raise ValueError("site is empty: pass site=None for no site")


def _refuse_key_not_text(key: object) -> None:
    """A key that is not text (None: a setting never filled in; bytes read from a file) is
    the product's mistake, named before anything is sent, not an AttributeError."""
    if not isinstance(key, str):
        raise TypeError(f"key must be the license key as text (str), not {type(key).__name__}")


def site_host(site: str) -> str | None:
    """``site`` as Keygate names sites (lower case; no scheme, user, port, path, trailing
    dot or ``www.``; IP literals compressed; other hosts in IDNA ``xn--`` form), or None
    when it names no host. The standard library's IDNA is the 2003 one: for the few hosts
    it spells otherwise (``ß``), pass the site as Keygate answered it."""
    text = site.strip()
    if "://" not in text:  # "2001:DB8::1", as Keygate takes it: not a host and a port
        try:
            return ipaddress.ip_address(text.partition("%")[0]).compressed
        except ValueError:
            pass
    try:
        host = urlsplit(text if "://" in text else "//" + text).hostname or ""
    except ValueError:
        return None
    host = host.partition("%")[0].rstrip(".")
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        pass
    try:
        host = host.encode("idna").decode("ascii").lower().rstrip(".")
    except UnicodeError:
        return None
    rest = host.removeprefix("www.")
    if rest != host and ("." in rest or rest == "localhost"):
        host = rest
    return host or None


class _Deadline:
    """Ends a call's connection ``seconds`` after it started: urllib's timeout applies to
    each read, so a server trickling its status line, headers or body a byte at a time
    would hold the product for as long as it likes. The socket is shut, which ends the read
    waiting on it. Connecting, name resolution included, is bounded too (:meth:`connect`)."""

    def __init__(self, seconds: float) -> None:
        self.ends = time.monotonic() + seconds
        self.expired = False
        self._timer: threading.Timer | None = None

    def connect(self, connect: Callable[..., socket.socket], *args: Any) -> socket.socket:
        """``connect(*args)`` within the time left. Neither name resolution (the system's
        resolver has no timeout of ours: a hanging DNS server holds it for as long as the
        resolver retries) nor a host's addresses tried one after another keep to urllib's
        timeout, which bounds each attempt. So the connection is made in a daemon thread;
        one still at work when the time is up is left to end by itself (nothing can cut a
        resolver short), and closes the connection it makes then, unused: the request is
        never sent after the call gave up."""
        made: queue.SimpleQueue[socket.socket | Exception] = queue.SimpleQueue()
        lock = threading.Lock()
        abandoned = False

        def attempt() -> None:
            try:
                sock = connect(*args)
            except Exception as exc:  # raised again in the caller's thread
                made.put(exc)
                return
            with lock:
                if abandoned:
                    sock.close()
                else:
                    made.put(sock)

        threading.Thread(target=attempt, name="keygate-connect", daemon=True).start()
        try:
            outcome = made.get(timeout=max(0.0, self.ends - time.monotonic()))
        except queue.Empty:
            with lock:
                abandoned = True
            with contextlib.suppress(queue.Empty):  # made just as the time was up
                late = made.get_nowait()
                if isinstance(late, socket.socket):
                    late.close()
            self.expired = True
            raise TimeoutError("no connection to Keygate in time") from None
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def arm(self, sock: socket.socket) -> None:
        def cut() -> None:
            self.expired = True
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

        self._timer = threading.Timer(max(0.0, self.ends - time.monotonic()), cut)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _within(base: type[http.client.HTTPConnection], deadline: _Deadline) -> Any:
    """``base`` connecting (name resolution included) within ``deadline``, whose socket,
    once connected, is ended at ``deadline``."""

    class Connection(base):  # type: ignore[valid-type,misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            connect = self._create_connection  # type: ignore[has-type]

            def connect_and_arm(*args: Any) -> socket.socket:
                sock = deadline.connect(connect, *args)
                deadline.arm(sock)
                return sock

            self._create_connection = connect_and_arm

    return Connection


class _HTTPWithin(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_within(http.client.HTTPConnection, self.deadline), req)


class _HTTPSWithin(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        connection = _within(http.client.HTTPSConnection, self.deadline)
        return self.do_open(connection, req, context=self._context)  # type: ignore[attr-defined]


SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _fetch_release(url: str, out: Any, size: Any, timeout: float) -> tuple[str, int]:
    """Stream ``url`` into ``out`` over http(s) only (a redirect to the bucket followed);
    the hex sha256 and the bytes received. More bytes than ``size`` stop it at once.

    Raises:
        Unavailable: no connection, an error status, a read timed out.
        UpdateRejected: more bytes than the release has.
    """
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        urllib.request.HTTPRedirectHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    digest, received = hashlib.sha256(), 0
    unwritten: OSError | None = None  # the product's disk, not the network
    try:
        with opener.open(url, timeout=timeout) as response:
            while chunk := response.read(1 << 16):
                received += len(chunk)
                if isinstance(size, int) and received > size:
                    raise UpdateRejected(f"the file is larger than the release's {size} bytes")
                digest.update(chunk)
                try:
                    out.write(chunk)
                except OSError as exc:
                    unwritten = exc
                    break
    except urllib.error.HTTPError as exc:
        raise Unavailable(
            f"the release could not be fetched (HTTP {exc.code}): its download_url may have"
            " expired; ask check_update again"
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        raise Unavailable(f"the release could not be fetched: {exc}") from None
    if unwritten is not None:
        raise unwritten
    return digest.hexdigest(), received


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as it is (urllib would follow it as a GET)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class KeygateClient:
    """Talks to Keygate's license API and trusts only verified answers. One client may be
    shared by threads: its calls may run at once (each on its own connection), and the
    saved answers are changed and written one call at a time."""

    def __init__(
        self,
        base_url: str,
        public_keys: PublicKeys,
        *,
        product: str | int | None = None,
        store: str | None = None,
        cache_path: str | os.PathLike[str] | None = None,
        grace_period: float = 7 * 24 * 3600,
        max_skew: float = 300.0,
        timeout: float = 10.0,
    ) -> None:
        """``product``: the shop product id the product is sold as (``501`` or ``"501"``:
        shop ids are text in Keygate's answers); ``store``: the store id it is sold in
        (sent with every call; needed on a Keygate several stores share, whose shops may
        number products alike). An empty or blank one is a ``ValueError`` naming it (a
        setting not filled in: Keygate reads it as a product and store no key is for);
        None is none."""
        for name, value in (("product", product), ("store", store)):
            if value is not None and not str(value).strip():
                raise ValueError(f"{name} is empty: pass {name}=None for none")
        self.base_url = _base_url(base_url)
        self.public_keys = _pinned(public_keys)
        self.product = None if product is None else str(product)
        self.store = store
        self.cache_path = _cache_path(cache_path) if cache_path else None
        self.grace_period = grace_period
        self.max_skew = max_skew
        self.timeout = timeout
        # Held while the saved answers change and are written: threads sharing this client
        # would otherwise write the cache while another adds to it (a RuntimeError).
        self._cache_lock = threading.Lock()
        self._cache: dict[str, dict[str, Any]] = self._read_cache() or {}
        # Slots changed in memory whose write failed (an unwritable cache): the file does not
        # have them as this client does, so they are kept over it.
        self._unsaved: set[str] = set()
        # Keys Keygate asked to wait (a signed 429): until when (monotonic), and its answer.
        self._held: dict[str, tuple[float, dict[str, Any]]] = {}

    # --- the API ---------------------------------------------------------------------------

    def validate(
        self,
        key: str,
        *,
        site: str | None = None,
        fingerprint: str | None = None,
        version: str | None = None,
    ) -> Result:
        """Validate; while Keygate is unreachable (or asks this client to wait: 429), the
        last good answer to the same question within the grace period."""
        question = self._question(
            key, site=site, fingerprint=fingerprint, version=version, product=self.product
        )
        # One slot per key, site, fingerprint and product: the answer kept there serves
        # only the question it answered (its request_digest names it, version included).
        cache_key = self._cache_key(key, site, fingerprint)
        try:
            result, record = self._call(VALIDATE_PATH, self._payload(**question))
        except (Unavailable, RequestRejected) as exc:  # UnverifiedAnswer is Unavailable too
            # A rejection naming no request (a 413: its body was never read) may be one
            # kept from another call and played back: no more harm than no answer.
            unbound = isinstance(exc, RequestRejected) and exc.body.get("request_digest") is None
            if isinstance(exc, RequestRejected) and exc.status != 429 and not unbound:
                raise
            cached = self._cached(cache_key, question)
            if cached is None:
                raise
            cached.offline_reason = (
                RATE_LIMITED
                if isinstance(exc, RequestRejected) and exc.status == 429
                else UNVERIFIED
                if isinstance(exc, UnverifiedAnswer) or unbound
                else UNREACHABLE
            )
            return cached
        if result.valid:
            self._remember(cache_key, record)
        else:
            self._forget(cache_key, *self._license_ended(result, key))
        return result

    def activate(
        self,
        key: str,
        *,
        site: str | None = None,
        fingerprint: str | None = None,
        label: str | None = None,
    ) -> Result:
        """Take a seat for (site, fingerprint); a key of another product than the client's
        takes none (``PRODUCT_MISMATCH``)."""
        payload = self._payload(
            key, site=site, fingerprint=fingerprint, label=label, product=self.product
        )
        result = self._call("/api/v1/licenses/activate", payload)[0]
        return self._heard(result, key, site, fingerprint)

    def deactivate(
        self, key: str, *, site: str | None = None, fingerprint: str | None = None
    ) -> Result:
        payload = self._payload(key, site=site, fingerprint=fingerprint)
        self._forget(self._cache_key(key, site, fingerprint))
        return self._call("/api/v1/licenses/deactivate", payload)[0]

    def check_update(
        self, key: str, version: str, *, site: str | None = None, fingerprint: str | None = None
    ) -> Result:
        """``result.data["update"]`` has version, sha256, size, changelog and download_url."""
        payload = self._payload(
            key, site=site, fingerprint=fingerprint, version=version, product=self.product
        )
        result = self._call("/api/v1/licenses/update-check", payload)[0]
        return self._heard(result, key, site, fingerprint)

    def checkout(
        self,
        key: str,
        *,
        site: str | None = None,
        fingerprint: str | None = None,
        ttl: int | None = None,
        encrypt: bool = True,
    ) -> Result:
        """``result.data["license_file"]``: check it later with :func:`verify_license_file`."""
        payload = self._payload(
            key, site=site, fingerprint=fingerprint, ttl=ttl, encrypt=encrypt, product=self.product
        )
        result = self._call("/api/v1/licenses/checkout", payload)[0]
        return self._heard(result, key, site, fingerprint)

    def download_update(
        self, update: Mapping[str, Any] | None, destination: str | os.PathLike[str]
    ) -> Path:
        """Fetch the release an update-check offers (``check_update(...).data["update"]``,
        from an answer this client verified) to ``destination``, and keep it only if it is
        that release: the sha256 and size Keygate signed. ``timeout`` bounds each read, not
        the whole download. Returns the file's path.

        Raises:
            ValueError: ``update`` is not an update-check's offer (None: no update offered).
            Unavailable: the file could not be fetched: no connection, an error status (its
                ``download_url`` lasts ``download_expires_in`` seconds: ask again).
            UpdateRejected: what came is not the release; nothing is left at ``destination``.
            OSError: ``destination``'s folder cannot be written.
        """
        try:
            url, sha256 = str(update["download_url"]), str(update["sha256"]).lower()  # type: ignore[index]
            size = update.get("size")  # type: ignore[union-attr]
        except (KeyError, TypeError, AttributeError):
            raise ValueError(
                "update is an update-check's offer, check_update(...).data['update'] (None when"
                " no update is offered)"
            ) from None
        if urlsplit(url).scheme.lower() not in {"http", "https"} or not SHA256_HEX.fullmatch(
            sha256
        ):
            raise ValueError("update is not an update-check's offer: no http(s) URL or sha256")
        target = Path(destination).expanduser()
        fd, part = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "wb") as out:
                digest, received = _fetch_release(url, out, size, self.timeout)
            if isinstance(size, int) and received != size:
                raise UpdateRejected(f"the file has {received} bytes, the release {size}")
            if not hmac.compare_digest(digest, sha256):
                raise UpdateRejected("the file's sha256 is not the release's")
            os.replace(part, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(part)
            raise
        return target

    # --- transport -------------------------------------------------------------------------

    def _question(self, key: str, **fields: Any) -> dict[str, Any]:
        """What a call asks: the key, the fields given (None: left out) and the store.

        Raises:
            TypeError: ``key`` is not text (None included), naming it; nothing is sent.
            ValueError: ``site`` is empty or blank.
        """
        _refuse_key_not_text(key)
        _refuse_empty_site(fields.get("site"))
        fields = {"key": key, **fields, "store": self.store}
        return {k: v for k, v in fields.items() if v is not None}

    def _payload(self, key: str, **fields: Any) -> dict[str, Any]:
        return {**self._question(key, **fields), "nonce": secrets.token_urlsafe(16)}

    def _call(self, path: str, payload: dict[str, Any]) -> tuple[Result, dict[str, Any]]:
        # A signed 429 asked this client to wait: nothing more goes out for the key until its
        # Retry-After has passed (validate serves its saved answer meanwhile).
        held_as = _compact(str(payload.get("key", "")))
        until, answer = self._held.get(held_as, (0.0, {}))
        left = until - time.monotonic()
        if left > 0:
            raise RequestRejected(429, answer, math.ceil(left))
        self._held.pop(held_as, None)
        url = self.base_url + path
        # Keygate served under a path prefix (https://example.com/keygate: a proxy passing
        # /keygate/... on, or SCRIPT_NAME) signs the path it routes, without the prefix.
        origin = urlsplit(self.base_url)
        routed_url = f"{origin.scheme}://{origin.netloc}{path}"
        body = json.dumps({k: v for k, v in payload.items() if v is not None}).encode()
        request = urllib.request.Request(  # noqa: S310 - the product's own Keygate URL
            url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        status, message, raw = self._exchange(request)
        headers = dict(message.items())
        lowered = {k.lower(): v for k, v in headers.items()}
        if status >= 500:
            raise Unavailable(f"Keygate answered {status}")
        if "keygate-signature" not in lowered:
            # Not Keygate's answer: a captive portal, a firewall's or CDN's page, a redirect
            # (never followed: it would turn the POST into a GET). Treated as Keygate being
            # out of reach, which whoever sits in between could cause anyway.
            where = f" (redirected to {lowered.get('location')})" if 300 <= status < 400 else ""
            raise Unavailable(f"an answer {status} not from Keygate{where}")
        try:
            data, signed_date, signed_url = _verify(
                method="POST",
                url=url,
                routed_url=routed_url,
                headers=message,  # every header as received, repeated ones included
                body=raw,
                public_keys=self.public_keys,
                max_skew=self.max_skew,
            )
            if status < 400 and "request_digest" not in data:
                # Signed, but by a Keygate older than this client (or a fleet half
                # upgraded): its answers cannot be bound to the request, so none is
                # trusted; the product keeps its grace period meanwhile.
                raise Unavailable(
                    "Keygate is older than this client (no request_digest): upgrade it"
                )
            _check_echo(data, payload["nonce"], body, required=status < 400)
        except SignatureError as exc:
            # Never trusted, and no worse than no answer: whoever can alter answers can
            # block them. Logged, as it may also be this product's own mistake (a key not
            # pinned, a clock far off); the reason names no secret (never the key).
            _log.warning(
                "Keygate's answer to %s did not verify (%s): not trusted, handled as "
                "Keygate out of reach",
                path,
                exc,
            )
            raise UnverifiedAnswer(str(exc)) from None
        if status >= 400:
            retry = str(lowered.get("retry-after") or "")
            # ASCII digits, a few of them: isdigit() is also true for "²", which int() cannot
            # read (this file stands alone, so it cannot use connector.validation).
            readable = retry.isascii() and retry.isdigit() and len(retry) <= 9
            if status == 429 and readable and int(retry) > 0:
                self._held[held_as] = (time.monotonic() + int(retry), data)
            raise RequestRejected(status, data, int(retry) if readable else None)
        # Saved with the Date that was signed: another one (a server in front of Keygate
        # may add its own) would not verify offline, where the record holds one per name.
        saved = {k: v for k, v in headers.items() if k.lower() != "date"}
        record = {
            "url": signed_url,  # the URL as signed: offline, the check reads no prefix
            "headers": {**saved, "Date": signed_date},
            "body": raw.decode("utf-8"),
            "request": body.decode("utf-8"),
        }
        return self._result(data), record

    def _exchange(
        self, request: urllib.request.Request
    ) -> tuple[int, email.message.Message, bytes]:
        """Send the request; the status, headers and body, read within ``timeout`` seconds
        in all (a server trickling its answer is out of reach too).

        Raises:
            Unavailable: no connection, no answer in time, a broken or cut-short one.
        """
        deadline = _Deadline(self.timeout)
        opener = urllib.request.build_opener(
            _NoRedirects, _HTTPWithin(deadline), _HTTPSWithin(deadline)
        )
        try:
            try:
                response = opener.open(request, timeout=self.timeout)
            except urllib.error.HTTPError as exc:
                response = exc
            with response:
                status, message = response.status or 0, response.headers
                raw = response.read(MAX_ANSWER_BYTES + 1)
        # HTTPException: a broken status line or headers, a body cut short (IncompleteRead).
        except (OSError, http.client.HTTPException) as exc:
            if deadline.expired:
                raise Unavailable("Keygate's answer did not arrive in time") from None
            raise Unavailable(f"Keygate is not reachable: {exc}") from None
        finally:
            deadline.cancel()
        if deadline.expired:  # cut while reading the body: what came is not the answer
            raise Unavailable("Keygate's answer did not arrive in time")
        if len(raw) > MAX_ANSWER_BYTES:
            raise Unavailable("Keygate's answer is larger than any answer it gives")
        length = message.get("content-length", "")
        if length.isascii() and length.isdigit() and len(raw) < int(length):
            raise Unavailable("Keygate's answer was cut short")
        return status, message, raw

    @staticmethod
    def _result(data: dict[str, Any], *, offline: bool = False) -> Result:
        return Result(
            valid=bool(data.get("valid")),
            code=str(data.get("code")),
            detail=str(data.get("detail", "")),
            license=data.get("license"),
            data=data,
            offline=offline,
        )

    # --- offline grace ---------------------------------------------------------------------

    def _cache_key(self, key: str, site: str | None, fingerprint: str | None) -> str:
        material = "\n".join(
            [key.strip().upper(), site or "", fingerprint or "", self.product or ""]
        )
        return hashlib.sha256(_utf8(material)).hexdigest()

    def _remember(self, cache_key: str, record: dict[str, Any]) -> None:
        with self._cache_lock:
            self._cache[cache_key] = record
            self._save_cache(cache_key)

    def _heard(self, result: Result, key: str, site: str | None, fingerprint: str | None) -> Result:
        """``result``, an answer to another call than validate; one saying the license is no
        longer valid for this key, site and fingerprint (revoked, say) ends the grace of the
        answer saved for validate, as validate's own answer would."""
        if not result.valid and result.code in NO_LONGER_VALID:
            self._forget(self._cache_key(key, site, fingerprint), *self._license_ended(result, key))
        return result

    def _license_ended(self, result: Result, key: str) -> set[str]:
        """The slots of the answers saved for ``key`` (any site, machine or version, in
        memory or in the cache file) when ``result`` says the license itself has ended."""
        if result.valid or result.code not in LICENSE_ENDED:
            return set()
        with self._cache_lock:
            kept = {**(self._read_cache() or {}), **self._cache}
        return {slot for slot, record in kept.items() if _asked_key(record) == _compact(key)}

    def _forget(self, *cache_keys: str) -> None:
        """Forget the answers saved in these slots, in memory and in the cache file (where
        another process sharing it may have saved one this client never had)."""
        with self._cache_lock:
            on_disk = self._read_cache() or {}
            gone = [k for k in cache_keys if self._cache.pop(k, None) is not None or k in on_disk]
            if gone:
                self._unsaved.update(gone)
                self._save_cache(gone[0])

    def _cached(self, cache_key: str, question: dict[str, Any]) -> Result | None:
        """The answer kept for ``question``, verified again: signed by a pinned key, to a
        validate request that asked exactly this (its ``request_digest`` is the digest of
        the request kept with it), valid; its age (from its signed Date, not the file) within
        the grace period, and the license not past an end it reached since."""
        record = self._kept(cache_key)
        if record is None:
            return None
        try:
            request_body = record["request"].encode("utf-8")
            asked = json.loads(request_body)
            data = verify_response(
                method="POST",
                url=record["url"],
                headers=record["headers"],
                body=record["body"].encode("utf-8"),
                public_keys=self.public_keys,
                max_skew=None,
                request_body=request_body,
            )
            # Aged by the Date that was signed: a record (saved as one header per name) with
            # a second Date in another case was edited, and its other Date is unsigned.
            [date] = [v for k, v in record["headers"].items() if k.lower() == "date"]
            signed_at = email.utils.parsedate_to_datetime(date).timestamp()
        except (SignatureError, KeyError, TypeError, ValueError, AttributeError, RecursionError):
            return None  # not a saved answer this client made, or a damaged one
        if (
            urlsplit(record["url"]).path != VALIDATE_PATH
            or not isinstance(asked, dict)
            or {k: v for k, v in asked.items() if k != "nonce"} != question
            or data.get("valid") is not True
        ):
            return None  # an answer to another question (another key, site, product, call)
        now = time.time()
        age = now - signed_at
        if age > self.grace_period or age < -(self.max_skew or DEFAULT_SKEW):
            return None  # too old, or dated in the future (a clock set back)
        ends = _moment((data.get("license") or {}).get("expires_at"))
        if ends is not None and signed_at < ends <= now:
            return None  # valid when signed; the license has ended since
        return self._result(data, offline=True)

    def _kept(self, cache_key: str) -> Any:
        """The answer saved in ``cache_key``, as the cache file has it now: another process
        sharing it may have saved one since this client read it, or forgotten this one (the
        key revoked). This client's own, when the file could not be written or read."""
        with self._cache_lock:
            on_disk = None if cache_key in self._unsaved else self._read_cache()
            if on_disk is None:
                return self._cache.get(cache_key)
            record = on_disk.get(cache_key)
            if record is None:
                self._cache.pop(cache_key, None)
            else:
                self._cache[cache_key] = record
            return record

    def _read_cache(self) -> dict[str, dict[str, Any]] | None:
        """The saved answers, or None: a cache missing, unreadable (its folder closed to this
        user, a name too long: errors Path.exists raises on Python 3.11) or damaged never
        fails the product."""
        if self.cache_path is None:
            return None
        try:
            loaded = json.loads(self.cache_path.read_text())
        except (OSError, ValueError, RecursionError):  # RecursionError: absurdly nested
            return None
        return loaded if isinstance(loaded, dict) else None

    def _save_cache(self, changed: str) -> None:
        """Write the saved answers (best effort: an unwritable cache never fails a call;
        the answers stay in memory for this process), with ``changed`` as this client has
        it and the others as the file has them now: a client of another product or process
        sharing the file may have saved answers since this one read it, which a copy of
        this client's memory would erase, or forgotten one (a license revoked, a site
        deactivated), which it would bring back to be served offline. Two writing at the
        same moment may still lose one answer, saved again at its next validate."""
        if self.cache_path is None:
            return
        self._unsaved.add(changed)
        on_disk = self._read_cache()
        if on_disk is not None:
            for slot in self._unsaved:
                on_disk.pop(slot, None)
            mine = {slot: self._cache[slot] for slot in self._unsaved if slot in self._cache}
            self._cache = {**on_disk, **mine}
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.cache_path.parent, prefix=".keygate-cache")
        except OSError:
            return
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(self._cache, handle)
            os.replace(tmp, self.cache_path)
        except OSError:  # a full disk, a folder in the cache's place: no copy left behind
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return
        self._unsaved.clear()
