"""A sandbox's network: its namespace and IP at RunPodSandbox, their teardown at StopPodSandbox.

Without a CNI configuration directory the IP comes from the emulator's pool. With one, as in
containerd's CRI plugin::

    RunPodSandbox:  not initialized? -> fail "failed to setup network for sandbox ..: cni plugin not initialized"
                    create the namespace -> CNI ADD (every network, plugins in order) -> IPs
                    ADD failed -> CNI DEL (plugins in reverse), remove the namespace, fail with
                    "failed to setup network for sandbox "<id>": plugin type=".." failed (add): .."
    StopPodSandbox: CNI DEL (while attached) -> remove a real namespace; a failed DEL fails the call
                    ("failed to destroy network for sandbox ..") and the next stop or remove retries.

Repeated stops do not run DEL again once it succeeded (containerd 1.6 runs it again with an empty
namespace path, which plugins must accept; the only difference is fewer plugin calls).
"""

from __future__ import annotations

import asyncio
import json
import logging

from kubeharness.emulators.cri.cniexec import PluginError
from kubeharness.emulators.cri.model import Sandbox
from kubeharness.emulators.cri.netns import NetnsError
from kubeharness.emulators.cri.podnet import emulated_netns_hint
from kubeharness.emulators.cri.runtime import Runtime
from kubeharness.errors import KubeharnessError

log = logging.getLogger(__name__)


def _quoted(sandbox_id: str) -> str:
    return json.dumps(sandbox_id)


async def _create_netns(rt: Runtime, sb: Sandbox) -> None:
    try:
        sb.netns_path = await rt.netns.create()
    except NetnsError as err:
        raise KubeharnessError(f"failed to create network namespace for sandbox {_quoted(sb.id)}: {err}") from None


async def _remove_netns_quietly(rt: Runtime, sb: Sandbox) -> None:
    try:
        await rt.netns.remove(sb.netns_path)
    except NetnsError as err:
        log.warning("failed to remove network namespace %s of sandbox %s: %s", sb.netns_path, sb.id, err)


async def set_up(rt: Runtime, sb: Sandbox) -> None:
    """Give a new, not-host-network sandbox its namespace and IPs; on failure nothing stays behind.

    A setup record in the journal (:meth:`Runtime.begin_setup`) covers the time from the namespace to the
    saved sandbox: a crash in between leaves it, and the next start undoes the setup (:func:`undo_setup`).
    """
    if rt.cni is None:
        sb.ip = rt.ips.allocate()
        try:
            await _create_netns(rt, sb)
        except BaseException:
            rt.ips.release(sb.ip)
            raise
        if rt.netns.is_real(sb.netns_path):
            rt.begin_setup(sb)
        return
    problem = rt.cni.not_ready()
    if problem is not None:
        raise KubeharnessError(f"failed to setup network for sandbox {_quoted(sb.id)}: {problem}")
    await _create_netns(rt, sb)
    sb.cni_attached = True  # in the setup record: DEL is due if a crash cuts the ADD
    rt.begin_setup(sb)
    sb.cni_attached = False
    try:
        sb.ip, sb.additional_ips = await rt.cni.setup(sb.id, sb.config, sb.netns_path)
    except BaseException as err:
        # as containerd: the plugins may have set up part of it, so DEL runs before the namespace goes
        try:
            await rt.cni.teardown(sb.id, sb.config, sb.netns_path)
        except PluginError as cleanup:
            log.warning("failed to destroy network for sandbox %s after a failed setup: %s", sb.id, cleanup)
        await _remove_netns_quietly(rt, sb)
        rt.end_setup(sb)
        if isinstance(err, PluginError):
            message = str(err) if rt.netns.real else emulated_netns_hint(str(err), sb.netns_path)
            raise KubeharnessError(f"failed to setup network for sandbox {_quoted(sb.id)}: {message}") from None
        raise
    sb.cni_attached = True


async def undo_setup(rt: Runtime, sb: Sandbox) -> bool:
    """Undo a setup that a crash cut (CNI DEL if it may have run ADD, then the namespace); whether it is done."""
    if sb.cni_attached:
        if rt.cni is None:
            log.warning("sandbox %s: a crash cut its network setup, and without a CNI configuration it cannot "
                        "be undone yet", sb.id)
            return False
        netns = sb.netns_path if not rt.netns.is_real(sb.netns_path) or rt.netns.exists(sb.netns_path) else ""
        try:
            await rt.cni.teardown(sb.id, sb.config, netns)
        except PluginError as err:
            log.warning("sandbox %s: undoing the network setup a crash cut failed (retried at the next start): %s",
                        sb.id, err)
            return False
    if rt.netns.is_real(sb.netns_path) and rt.netns.exists(sb.netns_path):
        await _remove_netns_quietly(rt, sb)
    log.info("sandbox %s: undid the network setup of a RunPodSandbox that a crash cut", sb.id)
    return True


async def tear_down(rt: Runtime, sb: Sandbox) -> None:
    """Detach a stopped sandbox from its networks and remove a real namespace; idempotent."""
    lock = rt.network_locks.setdefault(sb.id, asyncio.Lock())
    async with lock:  # concurrent stops must not DEL twice
        if sb.cni_attached:
            if rt.cni is None:  # the emulator was restarted without its CNI configuration
                raise KubeharnessError(f"failed to destroy network for sandbox {_quoted(sb.id)}: "
                                       "cni config not initialized")
            netns = sb.netns_path if not rt.netns.is_real(sb.netns_path) or rt.netns.exists(sb.netns_path) else ""
            try:
                await rt.cni.teardown(sb.id, sb.config, netns)
            except PluginError as err:
                raise KubeharnessError(f"failed to destroy network for sandbox {_quoted(sb.id)}: {err}") from None
            sb.cni_attached = False
            if rt.sandboxes.find(sb.id) is sb:
                rt.save_sandbox(sb)
        if rt.netns.is_real(sb.netns_path) and rt.netns.exists(sb.netns_path):
            try:
                await rt.netns.remove(sb.netns_path)
            except NetnsError as err:
                raise KubeharnessError(
                    f"failed to remove network namespace for sandbox {_quoted(sb.id)}: {err}"
                ) from None
