"""Real mode: a veth pair per attachment, made with iproute2 (``ip``) and util-linux (``nsenter``).

The container end is created directly inside ``CNI_NETNS`` under the name ``CNI_IFNAME`` (creation fails
if that name is taken there, as the spec demands), gets the attachment's addresses without a prefix
route, a link route to each gateway, the subnet and the configured routes via the gateway. The host end,
``kh`` plus a hash of the attachment, is up, carries each gateway address as a /32 (as the ptp plugin
does) and a /32 route to each pod address: the host reaches the pod and the pod reaches the host, with no
bridge, NAT or forwarding involved. IPv4 only. Deleting the host end deletes the pair.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import zlib

from kubeharness.emulators.cni.errors import CHECK_MISMATCH, KERNEL_FAILURE, UNKNOWN_CONTAINER, PluginError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def host_ifname(key: str) -> str:
    """The host end's name for an attachment: ``kh`` and 12 hex digits (within Linux's 15 bytes)."""
    data = key.encode()
    return f"kh{zlib.crc32(data):08x}{zlib.adler32(data) & 0xFFFF:04x}"


def _run(argv: list[str], script: str = "", what: str = "") -> str:
    try:
        done = subprocess.run(argv, input=script, capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise PluginError(KERNEL_FAILURE, f"{what or argv[0]} failed", str(err)) from None
    if done.returncode != 0:
        raise PluginError(KERNEL_FAILURE, f"{what or argv[0]} failed", done.stderr.strip())
    return done.stdout


def _in_netns(netns: str, argv: list[str], script: str = "", what: str = "") -> str:
    return _run(["nsenter", f"--net={netns}", *argv], script, what)


def _need(netns: str) -> None:
    if os.geteuid() != 0:
        raise PluginError(KERNEL_FAILURE, "real mode needs root (CAP_NET_ADMIN)")
    if not netns or not os.path.exists(netns):
        raise PluginError(UNKNOWN_CONTAINER, f"network namespace {netns!r} does not exist")


def _mac(text: str) -> str:
    words = text.split()
    return words[words.index("link/ether") + 1] if "link/ether" in words else ""


def attach(netns: str, ifname: str, host_if: str, ips: list[str], gateways: list[str],
           routes: list[dict[str, str]], mtu: int) -> tuple[str, str]:
    """Make the veth pair and configure both ends; returns the MAC addresses (host end, container end)."""
    _need(netns)
    for ip in ips:
        if ":" in ip:
            raise PluginError(KERNEL_FAILURE, "real mode is IPv4 only", f"cannot configure {ip}")
    mtu_args = ["mtu", str(mtu)] if mtu else []
    _run(["ip", "link", "add", host_if, *mtu_args, "type", "veth", "peer", "name", ifname, *mtu_args,
          "netns", netns], what=f"creating the veth pair {host_if}/{ifname}")
    try:
        host = [f"link set {host_if} up"]
        inside = [f"addr add {ip} dev {ifname} noprefixroute" for ip in ips] + [f"link set {ifname} up"]
        for ip, gateway in zip(ips, gateways, strict=True):
            address = ip.split("/", 1)[0]
            subnet = ipaddress.ip_interface(ip).network
            host += [f"addr add {gateway}/32 dev {host_if} noprefixroute",
                     f"route add {address}/32 dev {host_if} src {gateway}"]
            inside += [f"route add {gateway}/32 dev {ifname} scope link src {address}",
                       f"route add {subnet} via {gateway} dev {ifname} src {address}"]
        for route in routes:
            gateway = route.get("gw") or gateways[0]
            inside.append(f"route replace {route['dst']} via {gateway} dev {ifname}")
        _run(["ip", "-batch", "-"], "\n".join(host) + "\n", f"configuring {host_if}")
        inside.append(f"link show dev {ifname}")
        shown = _in_netns(netns, ["ip", "-o", "-batch", "-"], "\n".join(inside) + "\n",
                          f"configuring {ifname} in {netns}")
        with open(f"/sys/class/net/{host_if}/address") as file:
            host_mac = file.read().strip()
    except (PluginError, OSError) as err:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)
        if isinstance(err, PluginError):
            raise
        raise PluginError(KERNEL_FAILURE, f"reading {host_if}", str(err)) from None
    return host_mac, _mac(shown)


def detach(netns: str, ifname: str, host_if: str) -> None:
    """Remove the pair: by its host end if that exists, else by its container end; gone already is fine."""
    if os.path.exists(f"/sys/class/net/{host_if}"):
        done = subprocess.run(["ip", "link", "del", host_if], capture_output=True, text=True, check=False)
        if done.returncode != 0 and os.path.exists(f"/sys/class/net/{host_if}"):
            raise PluginError(KERNEL_FAILURE, f"deleting {host_if} failed", done.stderr.strip())
        return
    if netns and os.path.exists(netns):
        done = subprocess.run(["nsenter", f"--net={netns}", "ip", "link", "del", ifname], capture_output=True,
                              text=True, check=False)
        if done.returncode != 0 and "Cannot find device" not in done.stderr:
            raise PluginError(KERNEL_FAILURE, f"deleting {ifname} in {netns} failed", done.stderr.strip())


def check(netns: str, ifname: str, ips: list[str]) -> None:
    """The container end exists in ``netns``, is up and holds every address of the attachment."""
    _need(netns)
    try:
        shown = _in_netns(netns, ["ip", "-j", "addr", "show", "dev", ifname])
    except PluginError as err:
        raise PluginError(CHECK_MISMATCH, f"interface {ifname} is missing in {netns}", err.details) from None
    links: list[dict[str, Any]] = json.loads(shown or "[]")
    have = {f"{a.get('local')}/{a.get('prefixlen')}" for link in links for a in link.get("addr_info", [])}
    for ip in ips:
        if ip not in have:
            raise PluginError(CHECK_MISMATCH, f"address {ip} is missing on {ifname} in {netns}")
    if links and "UP" not in links[0].get("flags", []):
        raise PluginError(CHECK_MISMATCH, f"interface {ifname} in {netns} is down")
