"""Pod networking through CNI plugins, as containerd's CRI plugin (go-cni over libcni) does it.

The networks of a sandbox are the first network list of the configuration directory on interface
``eth0`` and, with real network namespaces, containerd's own ``cni-loopback`` network (the ``loopback``
plugin on ``lo``, CNI 0.3.1) before it. go-cni attaches the networks concurrently; the emulator attaches
them one after the other, so the plugins' order is deterministic. Setup answers the pod IPs from the
``eth0`` interface's addresses (an IPv4 one first, as containerd's default ``ip_pref``); teardown runs
DEL for each network with the configuration found *now* (as containerd does), and, as go-cni, treats
a plugin error that says "not found" as already done.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

from kubeharness.emulators.cri.cniargs import CapabilityError, capability_args, cni_args
from kubeharness.emulators.cri.cniconf import NOT_INITIALIZED, ConfDir, NetworkList
from kubeharness.emulators.cri.cniexec import Invocation, PluginError
from kubeharness.emulators.cri.cnilib import ResultCache, add_network_list, del_network_list
from kubeharness.wire.cri import api_pb2 as cri

DEFAULT_IFNAME = "eth0"
LOOPBACK_SOURCE = b'{"cniVersion": "0.3.1", "name": "cni-loopback", "plugins": [{"type": "loopback"}]}'
LOOPBACK = NetworkList("cni-loopback", "0.3.1", ({"type": "loopback"},), LOOPBACK_SOURCE)


def eth0_addresses(result: dict[str, Any]) -> list[str]:
    """The addresses a CNI result gives the default interface, in the result's order."""
    if "ips" not in result and ("ip4" in result or "ip6" in result):  # a CNI 0.1.0/0.2.0 result
        return [str(result[k]["ip"]) for k in ("ip4", "ip6") if isinstance(result.get(k), dict) and "ip" in result[k]]
    interfaces = result.get("interfaces") or []
    found: list[str] = []
    for entry in result.get("ips") or []:
        if not isinstance(entry, dict) or "address" not in entry:
            continue
        index = entry.get("interface")
        if index is None:
            name = DEFAULT_IFNAME
        elif isinstance(index, int) and 0 <= index < len(interfaces):
            name = str(interfaces[index].get("name", ""))
        else:
            raise PluginError(
                f"invalid interface config: invalid IP configuration (interface number {index} is > number of "
                f"interfaces {len(interfaces)}): invalid result"
            )
        if name == DEFAULT_IFNAME:
            found.append(str(entry["address"]))
    return found


def select_pod_ips(addresses: list[str]) -> tuple[str, list[str]]:
    """containerd's choice with the default preference: the first IPv4 address, the others after it."""
    ips = [str(ipaddress.ip_interface(a).ip) for a in addresses]
    for i, ip in enumerate(ips):
        if ipaddress.ip_address(ip).version == 4:
            return ip, ips[:i] + ips[i + 1 :]
    return ips[0], ips[1:]


def emulated_netns_hint(message: str, netns: str) -> str:
    """Say why a plugin that wanted to enter the namespace could not, when it is only a placeholder."""
    lowered = message.lower()
    if netns and (netns in message or "netns" in lowered or "namespace" in lowered):
        return (f"{message} (the emulator runs with netns: emulated, so {netns} is a placeholder no plugin can "
                "enter; use netns: real for plugins that configure the kernel, such as bridge)")
    return message


class PodNetwork:
    """The CNI side of RunPodSandbox and StopPodSandbox."""

    def __init__(self, conf_dir: Path, bin_dir: str, cache_dir: Path, with_loopback: bool) -> None:
        self.conf = ConfDir(conf_dir)  # the configuration directory, re-read when it changes
        self.path = (bin_dir,)  # where plugins are found (CNI_PATH)
        self.cache = ResultCache(cache_dir)  # libcni's result cache
        self.with_loopback = with_loopback  # containerd's cni-loopback network (needs a real namespace)

    def not_ready(self) -> str | None:
        """None when a network is configured; otherwise go-cni's status error."""
        return None if self.conf.network() is not None else NOT_INITIALIZED

    def _networks(self) -> list[tuple[NetworkList, str]]:
        net = self.conf.network()
        if net is None:
            raise PluginError(NOT_INITIALIZED)
        return ([(LOOPBACK, "lo")] if self.with_loopback else []) + [(net, DEFAULT_IFNAME)]

    def _call(self, sandbox_id: str, cfg: cri.PodSandboxConfig, netns: str, ifname: str) -> Invocation:
        return Invocation(sandbox_id, netns, ifname, cni_args(sandbox_id, cfg), self.path)

    @staticmethod
    def _capabilities(cfg: cri.PodSandboxConfig) -> dict[str, Any]:
        try:
            return capability_args(cfg)
        except CapabilityError as err:
            raise PluginError(f"get cni namespace options: {err}") from None

    async def setup(self, sandbox_id: str, cfg: cri.PodSandboxConfig, netns: str) -> tuple[str, list[str]]:
        """ADD the sandbox to every network: its IP and additional IPs. Raises PluginError."""
        networks = self._networks()
        caps = self._capabilities(cfg)
        addresses: list[str] = []
        for net, ifname in networks:
            result = await add_network_list(net, self._call(sandbox_id, cfg, netns, ifname), caps, self.cache)
            if net is not LOOPBACK:  # go-cni ignores what the loopback network answers
                addresses += eth0_addresses(result)
        if not addresses:
            raise PluginError(f"failed to find network info for sandbox {json.dumps(sandbox_id)}")
        return select_pod_ips(addresses)

    async def teardown(self, sandbox_id: str, cfg: cri.PodSandboxConfig, netns: str) -> None:
        """DEL the sandbox from every network. Raises PluginError."""
        networks = self._networks()
        caps = self._capabilities(cfg)
        for net, ifname in networks:
            try:
                await del_network_list(net, self._call(sandbox_id, cfg, netns, ifname), caps, self.cache)
            except PluginError as err:
                text = str(err)
                if "not found" in text or (not netns and "no such file or directory" in text):
                    continue
                raise
