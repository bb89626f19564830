"""The network configuration on stdin: parsed, checked, with the spec versions the plugin speaks.

Besides the spec's well-known keys (``cniVersion``, ``name``, ``type``, ``args``, ``dns``, ``ipam``,
``capabilities``, ``runtimeConfig``, ``prevResult``, ``cni.dev/...``) the plugin takes ``mode``
(``emulated`` or ``real``), ``mtu`` (real mode) and ``faults`` (``{plan, seed, log}``). Any other key is
an error (code 2), so that a typo does not pass silently. The ``ipam`` section follows host-local:
``ranges`` (a list of range sets), or ``subnet``/``rangeStart``/``rangeEnd``/``gateway`` for one range,
``routes`` and ``dataDir``; the ``ipRanges`` runtime config, when given, replaces the ranges.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from kubeharness.emulators.cni.errors import (
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    UNSUPPORTED_FIELD,
    PluginError,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from kubeharness.emulators.cni.ranges import RangeSet

SUPPORTED_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = "1.1.0"
DEFAULT_DATA_DIR = "/var/lib/cni/kubeharness"
MODES = ("emulated", "real")

_TOP_KEYS = frozenset({
    "cniVersion", "cniVersions", "name", "type", "args", "dns", "ipam", "capabilities", "runtimeConfig",
    "prevResult", "mode", "mtu", "faults", "disableCheck", "disableGC",
})
_IPAM_KEYS = ("type", "ranges", "subnet", "rangeStart", "rangeEnd", "gateway", "routes", "dataDir")
_FAULT_KEYS = ("plan", "seed", "log")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def version_key(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (0,)


def decode(data: bytes) -> dict[str, Any]:
    """The JSON object on stdin; anything else is error code 6."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise PluginError(DECODE_FAILURE, "failed to decode the network configuration", str(err)) from None
    except RecursionError:  # json gives up on very deep nesting this way, not with a ValueError
        raise PluginError(DECODE_FAILURE, "failed to decode the network configuration",
                          "it is nested too deeply") from None
    if not isinstance(doc, dict):
        raise PluginError(DECODE_FAILURE, "the network configuration must be a JSON object",
                          f"got {type(doc).__name__}")
    return doc


def _mapping(doc: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PluginError(INVALID_CONFIG, f"{key} must be an object, got {value!r}")
    return value


def _unknown(doc: Mapping[str, Any], allowed: tuple[str, ...] | frozenset[str], where: str) -> None:
    for key in doc:
        if key not in allowed and not key.startswith("cni.dev/"):
            raise PluginError(UNSUPPORTED_FIELD, f"unknown field {key!r} in {where}",
                              f"{where} takes {', '.join(sorted(allowed))}")


def _prev_result(prev: object) -> dict[str, Any] | None:
    """``prevResult`` in the shape a result has (lists of objects, a DNS object), or error code 7."""
    if prev is None:
        return None
    if not isinstance(prev, dict):
        raise PluginError(INVALID_CONFIG, f"prevResult must be an object, got {type(prev).__name__}")
    for key in ("interfaces", "ips", "routes"):
        items = prev.get(key)
        if items is not None and (not isinstance(items, list) or not all(isinstance(i, dict) for i in items)):
            raise PluginError(INVALID_CONFIG, f"prevResult.{key} must be a list of objects")
    for index, ip in enumerate(prev.get("ips") or ()):
        if not isinstance(ip.get("address"), str):
            raise PluginError(INVALID_CONFIG, f"prevResult.ips[{index}] needs an address (a CIDR string)")
    if prev.get("dns") is not None and not isinstance(prev["dns"], dict):
        raise PluginError(INVALID_CONFIG, "prevResult.dns must be an object")
    return prev


class NetConf:
    """One plugin's configuration as the runtime passed it."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        version = doc.get("cniVersion")
        if not isinstance(version, str) or not version:
            raise PluginError(INVALID_CONFIG, "cniVersion missing from the network configuration")
        if version not in SUPPORTED_VERSIONS:
            raise PluginError(INCOMPATIBLE_VERSION, "incompatible CNI versions",
                              f"config is {version!r}, plugin supports {', '.join(SUPPORTED_VERSIONS)}")
        self.version = version
        name = doc.get("name")
        if not isinstance(name, str) or not name:
            raise PluginError(INVALID_CONFIG, "missing network name")
        if not name[0].isalnum() or not set(name) <= _NAME_CHARS:
            raise PluginError(INVALID_CONFIG, f"invalid network name {name!r}",
                              "letters and digits first, then letters, digits, '_', '.' or '-'")
        self.name = name
        _unknown(doc, _TOP_KEYS, "the network configuration")
        mode = doc.get("mode", "emulated")
        if mode not in MODES:
            raise PluginError(INVALID_CONFIG, f"mode must be emulated or real, got {mode!r}")
        self.mode: str = mode
        mtu = doc.get("mtu", 0)
        if isinstance(mtu, bool) or not isinstance(mtu, int) or not (mtu == 0 or 68 <= mtu <= 65535):
            raise PluginError(INVALID_CONFIG, f"mtu must be an integer from 68 to 65535, got {mtu!r}")
        self.mtu: int = mtu
        self.ipam = _mapping(doc, "ipam")
        _unknown(self.ipam, _IPAM_KEYS, "ipam")
        self.runtime_config = _mapping(doc, "runtimeConfig")
        self.args = _mapping(doc, "args")
        self.dns = _mapping(doc, "dns")
        self.faults = _mapping(doc, "faults")
        _unknown(self.faults, _FAULT_KEYS, "faults")
        self.prev_result: dict[str, Any] | None = _prev_result(doc.get("prevResult"))
        data_dir = self.ipam.get("dataDir", DEFAULT_DATA_DIR)
        if not isinstance(data_dir, str) or not data_dir.startswith("/"):
            raise PluginError(INVALID_CONFIG, f"ipam.dataDir must be an absolute path, got {data_dir!r}")
        self.network_dir = f"{data_dir.rstrip('/')}/{name}"
        self._range_sets: list[RangeSet] | None = None

    def range_sets(self) -> list[RangeSet]:
        """The range sets to allocate from: the ``ipRanges`` runtime config, ``ipam.ranges`` or the one range."""
        if self._range_sets is None:
            from kubeharness.emulators.cni.ranges import parse_range_sets

            runtime = self.runtime_config.get("ipRanges")
            if runtime:
                self._range_sets = parse_range_sets(runtime, "runtimeConfig.ipRanges")
            elif "ranges" in self.ipam:
                if "subnet" in self.ipam:
                    raise PluginError(INVALID_CONFIG, "ipam takes ranges or subnet, not both")
                self._range_sets = parse_range_sets(self.ipam["ranges"], "ipam.ranges")
            elif "subnet" in self.ipam:
                one = {k: self.ipam[k] for k in ("subnet", "rangeStart", "rangeEnd", "gateway") if k in self.ipam}
                self._range_sets = parse_range_sets([[one]], "ipam")
            else:
                raise PluginError(INVALID_CONFIG, "ipam needs ranges (or a subnet), or runtimeConfig.ipRanges")
        return self._range_sets

    def routes(self) -> list[dict[str, str]]:
        routes = self.ipam.get("routes", [])
        if not isinstance(routes, list):
            raise PluginError(INVALID_CONFIG, f"ipam.routes must be a list, got {routes!r}")
        out = []
        for index, route in enumerate(routes):
            if not isinstance(route, dict) or not isinstance(route.get("dst"), str):
                raise PluginError(INVALID_CONFIG, f"ipam.routes[{index}] needs a dst (a CIDR)")
            out.append({k: v for k, v in route.items() if k in ("dst", "gw") and isinstance(v, str)})
        return out

    def valid_attachments(self) -> set[tuple[str, str]]:
        """GC's ``cni.dev/valid-attachments`` as (container id, interface) pairs.

        Absent means none: libcni leaves the key out when the runtime has no attachments, and host-local
        then releases everything."""
        listing = self.doc.get("cni.dev/valid-attachments")
        if listing is None:
            return set()
        if not isinstance(listing, list):
            raise PluginError(INVALID_CONFIG, f"cni.dev/valid-attachments must be a list, got {listing!r}"[:300])
        out = set()
        for index, item in enumerate(listing):
            if not isinstance(item, dict) or not isinstance(item.get("containerID"), str):
                raise PluginError(INVALID_CONFIG, f"cni.dev/valid-attachments[{index}] needs a containerID")
            ifname = item.get("ifname", "")
            if not isinstance(ifname, str):
                raise PluginError(INVALID_CONFIG, f"cni.dev/valid-attachments[{index}].ifname must be a string")
            out.add((item["containerID"], ifname))
        return out
