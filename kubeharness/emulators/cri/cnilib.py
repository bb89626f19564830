"""Running a network list's plugins in a chain, with libcni's result cache.

ADD runs the plugins in order; each gets the list's ``name`` and ``cniVersion``, the previous plugin's
result as ``prevResult`` and a ``runtimeConfig`` with the capability arguments it declares. The last
result is cached in ``cache_dir/results/<network>-<container id>-<ifname>`` in libcni's format
(``kind: cniCacheV1``), so DEL, even after an emulator restart, hands it to the plugins as
``prevResult`` (CNI 0.4.0 and later) while running them in reverse order; the cache entry goes when
DEL succeeds. Errors name the plugin as libcni does: ``plugin type="bridge" name="net" failed (add): ...``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from pathlib import Path
from typing import Any

from kubeharness.emulators.cri.cniargs import runtime_config
from kubeharness.emulators.cri.cniconf import NetworkList
from kubeharness.emulators.cri.cniexec import Invocation, PluginError, find_plugin, parse_result, run_plugin

CACHE_KIND = "cniCacheV1"


def version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (0,)


def describe(plugin: dict[str, Any]) -> str:
    """libcni's plugin description: ``type="x"`` and, when the plugin config has one, `` name="y"``."""
    out = f"type={json.dumps(str(plugin.get('type', '')))}"
    name = plugin.get("name")
    if isinstance(name, str) and name:
        out += f" name={json.dumps(name)}"
    return out


def plugin_config(net: NetworkList, plugin: dict[str, Any], prev: dict[str, Any] | None,
                  capability_args: dict[str, Any]) -> dict[str, Any]:
    config = dict(plugin)
    config["name"] = net.name
    config["cniVersion"] = net.cni_version
    if prev is not None:
        config["prevResult"] = prev
    runtime = runtime_config(plugin, capability_args)
    if runtime:
        config["runtimeConfig"] = runtime
    return config


class ResultCache:
    """libcni's cache of ADD results, one file per attachment."""

    def __init__(self, cache_dir: Path) -> None:
        self.dir = cache_dir / "results"

    def path(self, network: str, call: Invocation) -> Path:
        return self.dir / f"{network}-{call.container_id}-{call.ifname}"

    def put(self, net: NetworkList, call: Invocation, capability_args: dict[str, Any],
            result: dict[str, Any]) -> None:
        record: dict[str, Any] = {
            "kind": CACHE_KIND,
            "containerId": call.container_id,
            "config": base64.b64encode(net.source).decode(),  # Go encodes []byte as base64
            "ifName": call.ifname,
            "networkName": net.name,
            "netns": call.netns,
            "cniArgs": [list(kv) for kv in call.args],
            "capabilityArgs": capability_args,
            "result": result,
        }
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = self.path(net.name, call)
        tmp = target.with_name(target.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(record).encode())
        finally:
            os.close(fd)
        os.replace(tmp, target)

    def get(self, network: str, call: Invocation) -> dict[str, Any] | None:
        """The cached result, or None when there is none or it cannot be read."""
        try:
            record = json.loads(self.path(network, call).read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("kind") != CACHE_KIND:
            return None
        result = record.get("result")
        return result if isinstance(result, dict) else None

    def delete(self, network: str, call: Invocation) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(network, call).unlink()


async def add_network_list(net: NetworkList, call: Invocation, capability_args: dict[str, Any],
                           cache: ResultCache) -> dict[str, Any]:
    """ADD every plugin of ``net`` in order; the last plugin's result, also cached."""
    result: dict[str, Any] | None = None
    for plugin in net.plugins:
        try:
            executable = find_plugin(str(plugin["type"]), call.path)
            config = plugin_config(net, plugin, result, capability_args)
            result = parse_result(await run_plugin(executable, "ADD", config, call))
        except PluginError as err:
            raise PluginError(f"plugin {describe(plugin)} failed (add): {err}") from None
    assert result is not None  # a network list has at least one plugin
    try:
        cache.put(net, call, capability_args, result)
    except OSError as err:
        raise PluginError(f"failed to set network {json.dumps(net.name)} cached result: {err}") from None
    return result


async def del_network_list(net: NetworkList, call: Invocation, capability_args: dict[str, Any],
                           cache: ResultCache) -> None:
    """DEL every plugin of ``net`` in reverse order, with the cached result as ``prevResult``."""
    cached = cache.get(net.name, call) if version_tuple(net.cni_version) >= (0, 4, 0) else None
    for plugin in reversed(net.plugins):
        try:
            executable = find_plugin(str(plugin["type"]), call.path)
            await run_plugin(executable, "DEL", plugin_config(net, plugin, cached, capability_args), call)
        except PluginError as err:
            raise PluginError(f"plugin {describe(plugin)} failed (delete): {err}") from None
    cache.delete(net.name, call)
