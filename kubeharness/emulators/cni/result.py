"""Result documents: what ADD prints, in the shape of the configuration's spec version, chained onto ``prevResult``.

Version 1.0.0 and later list ``ips`` as ``{address, gateway, interface}``; 0.4.0 adds ``version``
(``"4"`` or ``"6"``). A chained plugin keeps the previous result: its interfaces, addresses and routes
come first, this plugin's are appended (their ``interface`` indexes shifted past the previous ones), and
DNS settings the previous result lacks are filled in.
"""

from __future__ import annotations

import copy
import zlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def emulated_mac(key: str) -> str:
    """A stable, locally administered MAC address for an emulated interface."""
    data = key.encode()
    value = (zlib.crc32(data) << 8 | zlib.adler32(data) & 0xFF) & 0xFF_FFFF_FFFF
    return ":".join(f"{b:02x}" for b in (0x02, *value.to_bytes(5, "big")))


def shape_ips(ips: list[dict[str, Any]], version: str) -> list[dict[str, Any]]:
    out = []
    for ip in ips:
        one = {k: v for k, v in ip.items() if k != "version"}
        if version == "0.4.0":
            one = {"version": "6" if ":" in str(ip.get("address", "")) else "4", **one}
        out.append(one)
    return out


def build(
    version: str,
    prev: dict[str, Any] | None,
    interfaces: list[dict[str, Any]],
    ips: list[dict[str, Any]],
    routes: list[dict[str, Any]],
    dns: dict[str, Any],
) -> dict[str, Any]:
    """The result of ADD: ``prev`` extended by this plugin's interfaces, addresses, routes and DNS.

    The ``interface`` field of each of ``ips`` indexes ``interfaces`` (this plugin's own list)."""
    base = copy.deepcopy(prev) if prev else {}
    all_interfaces = list(base.get("interfaces") or [])
    offset = len(all_interfaces)
    all_interfaces += interfaces
    own = [{**ip, "interface": ip["interface"] + offset} if "interface" in ip else ip for ip in ips]
    all_dns = dict(base.get("dns") or {})
    for key, value in dns.items():
        all_dns.setdefault(key, value)
    out: dict[str, Any] = {"cniVersion": version}
    if all_interfaces:
        out["interfaces"] = all_interfaces
    out["ips"] = shape_ips([*(base.get("ips") or []), *own], version)
    all_routes = [*(base.get("routes") or []), *routes]
    if all_routes:
        out["routes"] = all_routes
    out["dns"] = all_dns
    return out


def addresses(result: dict[str, Any] | None) -> set[str]:
    """The ``address`` of every entry in a result's ``ips``."""
    if not result:
        return set()
    return {str(ip.get("address")) for ip in result.get("ips") or [] if isinstance(ip, dict)}
