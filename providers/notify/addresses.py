"""Where a caller may make this server connect: never into the host's own network, unless the deployment allows it.

Webhook receivers and a caller's own mail server (``send_credentials``) are both chosen by the caller. Every
address such a name resolves to must be public (or inside the allowed networks, or loopback where loopback is
allowed); names are resolved once per attempt and the connection goes to an address that was checked, so a name
that resolves differently a moment later (DNS rebinding) changes nothing. The deployment's own mail server
(``APTK_SMTP_URL``) is trusted and not checked.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from typing import Any, Mapping

from toolkit import ActionFailed, BadActionRequest, ConfigurationError
from toolkit.settings import flag, string_list

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Transient(Exception):
    """A failure worth another attempt (the mail server or webhook receiver may answer later)."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code, self.description = code, description


@dataclasses.dataclass(frozen=True)
class Policy:
    """What one kind of destination may reach beyond public addresses; ``what`` names it in refusals."""

    what: str
    loopback: bool
    networks: tuple[Network, ...]


def policy(config: Mapping[str, Any], what: str, loopback_setting: str, networks_setting: str) -> Policy:
    """The policy from a pair of settings; a wrong value is a ConfigurationError naming the setting."""
    networks = []
    for part in string_list(config, networks_setting):
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError as exc:
            raise ConfigurationError(f"{networks_setting} must be a comma-separated list of networks "
                                     f"(e.g. 10.0.0.0/8): {exc}") from None
    return Policy(what, flag(config, loopback_setting, False), tuple(networks))


def literal(host: str) -> Address | None:
    """The address ``host`` is written as, or None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check(address: Address, policy: Policy, field: str) -> None:
    """A 400 naming ``field`` unless ``policy`` lets connections go to ``address``."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address.version == n.version and address in n for n in policy.networks):
        return
    if address.is_loopback:
        if policy.loopback:
            return
        raise BadActionRequest(f"{field}: {address} is a loopback address; this server sends no {policy.what} "
                               "there.")
    if not address.is_global or address.is_multicast:
        kind = "link-local" if address.is_link_local else "private or reserved"
        raise BadActionRequest(f"{field}: {address} is a {kind} address; this server sends no {policy.what} into "
                               "private networks.")


def resolve(host: str, port: int, policy: Policy, field: str) -> list[Address]:
    """The addresses to connect to: every address ``host`` has must be allowed (checked once, then used).

    A name that does not resolve is :class:`Transient` (``NameNotResolved``); one with a refused address ends
    the action (``AddressRefused``).
    """
    address = literal(host)
    if address is not None:
        check(address, policy, field)
        return [address]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Transient("NameNotResolved", f"{host} could not be resolved ({exc.strerror}).") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    for address in addresses:
        try:
            check(address, policy, field)
        except BadActionRequest as exc:
            raise ActionFailed("AddressRefused", f"{host} resolves to a refused address: "
                                                 f"{exc.description.removeprefix(field + ': ')}") from None
    return list(dict.fromkeys(addresses))


def connect(addresses: list[Address], port: int, timeout: float | None) -> socket.socket:
    """A TCP connection to the first of the checked ``addresses`` that answers (the last one's error if none)."""
    for i, address in enumerate(addresses):
        try:
            return socket.create_connection((str(address), port), timeout)
        except OSError:
            if i == len(addresses) - 1:
                raise
    raise OSError("no address to connect to")
