"""ADD, DEL, CHECK, STATUS and GC: the IPAM bookkeeping in the store, and in real mode the kernel work.

ADD reserves one address per range set under the store's lock and commits before it touches the kernel;
if the kernel work fails the reservation is released again. DEL of an attachment the store does not know
succeeds (the spec asks DEL to be repeatable). GC releases every attachment that is not listed in
``cni.dev/valid-attachments`` (an entry without ``ifname`` keeps all of its container's interfaces); without
the key it releases everything, as host-local does (libcni omits it when the runtime has no attachments).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from kubeharness.emulators.cni import result
from kubeharness.emulators.cni.errors import (
    ALREADY_ATTACHED,
    CHECK_MISMATCH,
    INVALID_CONFIG,
    IO_FAILURE,
    KERNEL_FAILURE,
    NO_ADDRESSES,
    NOT_AVAILABLE,
    UNKNOWN_CONTAINER,
    PluginError,
)
from kubeharness.emulators.cni.invocation import Invocation
from kubeharness.emulators.cni.netconf import NetConf
from kubeharness.emulators.cni.store import Store, taken

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

Hook = Callable[[], None] | None


def _reserve(store: Store, inv: Invocation, conf: NetConf) -> dict[str, Any]:
    state = store.state
    if inv.key in state["attachments"]:
        raise PluginError(ALREADY_ATTACHED, f"container {inv.container_id} already has interface {inv.ifname}",
                          "the spec forbids a second ADD for the same container and interface without a DEL")
    used = taken(state)
    ips, gateways, sets = [], [], []
    for index, range_set in enumerate(conf.range_sets()):
        free = next((c for c in range_set.candidates(state["last"].get(str(index))) if c[1] not in used), None)
        if free is None:
            raise PluginError(NO_ADDRESSES, f"no free address in range set {index}",
                              f"all {range_set.size()} addresses are taken")
        one, address = free
        used.add(address)
        state["last"][str(index)] = address
        ips.append(f"{address}/{one.network.prefixlen}")
        gateways.append(one.address(one.gateway))
        sets.append(index)
    record = {"containerID": inv.container_id, "ifname": inv.ifname, "netns": inv.netns, "ips": ips,
              "gateways": gateways, "sets": sets, "mode": conf.mode}
    state["attachments"][inv.key] = record
    return record


def add(inv: Invocation, conf: NetConf, before_rename: Hook = None) -> dict[str, Any]:
    conf.range_sets()  # a bad configuration fails before the store is touched
    routes = conf.routes()
    with Store(conf.network_dir, before_rename) as store:
        record = _reserve(store, inv, conf)
        store.commit()
    container_if: dict[str, Any] = {"name": inv.ifname, "mac": result.emulated_mac(inv.key), "sandbox": inv.netns}
    interfaces = [container_if]
    if conf.mode == "real":
        from kubeharness.emulators.cni import kernel

        host_if = kernel.host_ifname(inv.key)
        try:
            host_mac, container_mac = kernel.attach(inv.netns, inv.ifname, host_if, record["ips"],
                                                    record["gateways"], routes, conf.mtu)
        except PluginError:
            with Store(conf.network_dir) as store:
                store.state["attachments"].pop(inv.key, None)
                store.commit()
            raise
        container_if["mac"] = container_mac
        interfaces = [{"name": host_if, "mac": host_mac}, container_if]
    if conf.mtu:
        container_if["mtu"] = conf.mtu
    index = len(interfaces) - 1
    ips = [{"address": ip, "gateway": gw, "interface": index} for ip, gw in zip(record["ips"], record["gateways"],
                                                                                 strict=True)]
    return result.build(conf.version, conf.prev_result, interfaces, ips, routes, conf.dns)


def delete(inv: Invocation, conf: NetConf, before_rename: Hook = None) -> None:
    with Store(conf.network_dir, before_rename) as store:
        record = store.state["attachments"].get(inv.key)
        if conf.mode == "real" or (record and record.get("mode") == "real"):
            from kubeharness.emulators.cni import kernel

            netns = inv.netns or (record or {}).get("netns", "")
            kernel.detach(netns, inv.ifname, kernel.host_ifname(inv.key))
        if record is not None:
            del store.state["attachments"][inv.key]
            store.commit()


def check(inv: Invocation, conf: NetConf) -> None:
    if conf.prev_result is None:
        raise PluginError(INVALID_CONFIG, "CHECK needs prevResult (the result of the ADD)")
    with Store(conf.network_dir) as store:
        record = store.state["attachments"].get(inv.key)
    if record is None:
        raise PluginError(UNKNOWN_CONTAINER, f"no attachment for container {inv.container_id} interface {inv.ifname}")
    listed = result.addresses(conf.prev_result)
    for ip in record["ips"]:
        if ip not in listed:
            raise PluginError(CHECK_MISMATCH, f"address {ip} of {inv.container_id} is missing from prevResult")
    if record.get("mode") == "real":
        from kubeharness.emulators.cni import kernel

        kernel.check(inv.netns, inv.ifname, record["ips"])


def status(inv: Invocation, conf: NetConf) -> None:
    try:
        sets = conf.range_sets()
        with Store(conf.network_dir) as store:
            used = taken(store.state)
    except PluginError as err:
        if err.code != IO_FAILURE:
            raise
        raise PluginError(NOT_AVAILABLE, "the plugin cannot use its store", f"{err.msg}: {err.details}") from None
    for index, range_set in enumerate(sets):
        held = sum(1 for address in used if range_set.find(address) is not None)
        if held >= range_set.size():
            raise PluginError(NOT_AVAILABLE, f"no free address in range set {index}",
                              f"all {range_set.size()} addresses are taken")
    if conf.mode == "real" and os.geteuid() != 0:
        raise PluginError(NOT_AVAILABLE, "real mode needs root (CAP_NET_ADMIN)")


def gc(inv: Invocation, conf: NetConf, before_rename: Hook = None) -> None:
    valid = conf.valid_attachments()
    keep_all = {cid for cid, ifname in valid if not ifname}
    failures: list[str] = []
    with Store(conf.network_dir, before_rename) as store:
        attachments = store.state["attachments"]
        stale = [key for key, att in attachments.items()
                 if (att["containerID"], att["ifname"]) not in valid and att["containerID"] not in keep_all]
        for key in stale:
            att = attachments[key]
            if att.get("mode") == "real":
                from kubeharness.emulators.cni import kernel

                try:
                    kernel.detach(att.get("netns", ""), att["ifname"], kernel.host_ifname(key))
                except PluginError as err:
                    failures.append(f"{key}: {err.msg} {err.details}".strip())
                    continue
            del attachments[key]
        if stale:
            store.commit()
    if failures:
        raise PluginError(KERNEL_FAILURE, "GC could not remove every stale attachment", "; ".join(failures))
