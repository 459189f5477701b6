"""Which network addresses Keygate may connect to for a store, and connections that hold to it.

A store's owner (or its API token) chooses the R2 endpoint_url; unless the instance allows
private endpoints, Keygate must not become their way into the instance's own network. An
address is private when it is not globally reachable (loopback, RFC 1918, unique-local,
link-local, site-local, CGNAT, unspecified, reserved, documentation) or multicast, including an IPv4
address carried inside an IPv6 one (IPv4-mapped, 6to4, NAT64).

A name is checked by what it resolves to, and a connection goes to the very addresses that
were checked: the name is looked up once, never again between the check and the connect
(a name whose answer changes, DNS rebinding, cannot slip a private address in).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any

from botocore.awsrequest import (
    AWSHTTPConnection,
    AWSHTTPConnectionPool,
    AWSHTTPSConnection,
    AWSHTTPSConnectionPool,
)
from botocore.httpsession import URLLib3Session
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class PrivateAddress(ValueError):
    """A host is, or resolves to, an address that is not public."""


class MetadataAddress(PrivateAddress):
    """A host is, or resolves to, a link-local address or a cloud's metadata service,
    refused even where private addresses are allowed."""


# Cloud metadata services outside the link-local range.
METADATA_ADDRESSES = {
    ipaddress.ip_address("fd00:ec2::254"),
    ipaddress.ip_address("100.100.100.200"),
}


def _unwrapped(address: Address) -> Address:
    """The IPv4 address an IPv6 one carries (IPv4-mapped, 6to4, NAT64), or ``address``."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        return address.ipv4_mapped or address.sixtofour or address
    return address


def private_address(address: Address) -> bool:
    """Is ``address`` anything but a public unicast address?"""
    address = _unwrapped(address)
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return True  # fec0::/10: deprecated, still routed inside some networks, never global
    return (
        not address.is_global
        or address.is_multicast
        or address.is_reserved
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_unspecified
    )


def metadata_address(address: Address) -> bool:
    """Is ``address`` link-local (169.254.169.254 and its kind) or a cloud metadata
    service's: never an S3 service, whatever the instance allows?"""
    address = _unwrapped(address)
    return address.is_link_local or address in METADATA_ADDRESSES


def public_addresses(host: str, port: int, *, private_ok: bool = False) -> list[str]:
    """The addresses ``host`` resolves to (an IP literal: itself), all checked public (with
    ``private_ok``: none link-local nor a metadata service's).

    Raises:
        PrivateAddress: one of them is not public (a name answering with a public and a
            private address is refused too: which one is used is not ours to choose).
        MetadataAddress: with ``private_ok``, one of them is link-local or a metadata
            service's.
        OSError: the name does not resolve (``socket.gaierror``).
    """
    found: list[str] = []
    for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        text = str(sockaddr[0])
        address = ipaddress.ip_address(text.partition("%")[0])  # fe80::1%eth0
        if not private_ok and private_address(address):  # link-local ones too
            raise PrivateAddress(f"{host} is or resolves to a private address")
        if metadata_address(address):
            raise MetadataAddress(f"{host} is or resolves to a link-local address")
        if text not in found:
            found.append(text)
    return found


def _connect_checked(connection: Any, connect: Callable[[], socket.socket]) -> socket.socket:
    """Open ``connection``'s socket to the public addresses of its host only."""
    if connection.proxy is not None:
        # To a proxy (the operator's, from the environment), which connects on by itself:
        # the endpoint's name was checked just before the request (connector.integrations.r2).
        return connect()
    name = connection._dns_host
    try:
        addresses = public_addresses(name, connection.port, private_ok=connection.private_ok)
    except PrivateAddress as exc:
        raise NewConnectionError(connection, f"Refused to connect: {exc}") from exc
    except socket.gaierror as exc:
        raise NameResolutionError(connection.host, connection, exc) from exc
    failed: ConnectTimeoutError | None = None
    try:
        for address in addresses:
            # urllib3 connects to _dns_host; the host name stays for TLS (SNI, certificate)
            # and the Host header.
            connection._dns_host = address
            try:
                return connect()
            except ConnectTimeoutError as exc:  # NewConnectionError too: try the next one
                failed = exc
    finally:
        connection._dns_host = name
    raise failed or NewConnectionError(connection, f"{name} has no address")


class PublicHTTPConnection(AWSHTTPConnection):
    """botocore's HTTP connection, to public addresses only."""

    private_ok = False

    def _new_conn(self) -> socket.socket:
        return _connect_checked(self, super()._new_conn)


class PublicHTTPSConnection(AWSHTTPSConnection):
    """botocore's HTTPS connection, to public addresses only."""

    private_ok = False

    def _new_conn(self) -> socket.socket:
        return _connect_checked(self, super()._new_conn)


class OutsideMetadataHTTPConnection(PublicHTTPConnection):
    """To any address but link-local and metadata ones (private endpoints allowed)."""

    private_ok = True


class OutsideMetadataHTTPSConnection(PublicHTTPSConnection):
    private_ok = True


class PublicHTTPConnectionPool(AWSHTTPConnectionPool):
    ConnectionCls = PublicHTTPConnection


class PublicHTTPSConnectionPool(AWSHTTPSConnectionPool):
    ConnectionCls = PublicHTTPSConnection


class OutsideMetadataHTTPConnectionPool(AWSHTTPConnectionPool):
    ConnectionCls = OutsideMetadataHTTPConnection


class OutsideMetadataHTTPSConnectionPool(AWSHTTPSConnectionPool):
    ConnectionCls = OutsideMetadataHTTPSConnection


# For a urllib3 PoolManager's pool_classes_by_scheme.
PUBLIC_POOLS: dict[str, type] = {
    "http": PublicHTTPConnectionPool,
    "https": PublicHTTPSConnectionPool,
}
OUTSIDE_METADATA_POOLS: dict[str, type] = {
    "http": OutsideMetadataHTTPConnectionPool,
    "https": OutsideMetadataHTTPSConnectionPool,
}


def checked_pools(private_ok: bool) -> dict[str, type]:
    """The pools whose connections go where :func:`public_addresses` allows."""
    return OUTSIDE_METADATA_POOLS if private_ok else PUBLIC_POOLS


class PublicOnlySession(URLLib3Session):
    """botocore's own HTTP session (TLS, proxies, timeouts, its errors), whose connections
    go to public addresses only (``private_ok``: to any but link-local and metadata ones).
    A client's ``before-send`` handler sends through it."""

    def __init__(self, *, private_ok: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # botocore hands this map to every pool manager it makes: its own (made above, so
        # given again) and one per proxy, made on first use.
        self._pool_classes_by_scheme = checked_pools(private_ok)
        self._manager.pool_classes_by_scheme = self._pool_classes_by_scheme
