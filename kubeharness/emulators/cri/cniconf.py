"""Finding the pod network's CNI configuration in a directory, the way containerd's CRI plugin does.

containerd (through go-cni and libcni) lists the regular files ending in ``.conf``, ``.conflist`` or
``.json`` in its ``conf_dir``, sorts them by name and loads the first: a ``.conflist`` as a network
list, the others as a single plugin config wrapped into a list of one. If that first file is broken,
CNI stays uninitialized (containerd does not fall through to the next file), and so does an empty or
missing directory. :class:`ConfDir` re-reads the directory only when a file in it changed (a cheap
stat of each entry), so Status and RunPodSandbox may ask on every call, which stands in for
containerd's inotify watch of the directory.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXTENSIONS = (".conf", ".conflist", ".json")
MAX_FILE_BYTES = 2 * 1024 * 1024  # go-cni refuses larger config files
NOT_INITIALIZED = "cni plugin not initialized"  # go-cni's ErrCNINotInitialized


class CniConfigError(Exception):
    """Why there is no usable network configuration (what containerd logs when it loads the dir)."""


@dataclass(frozen=True)
class NetworkList:
    """One network: its plugins in chain order, with the name and CNI version every one of them gets."""

    name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    source: bytes  # the file's bytes (libcni keeps them in its result cache)
    path: str = ""
    disable_check: bool = False
    capabilities: frozenset[str] = field(default=frozenset())


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as err:
        raise CniConfigError(f"error parsing {what}: {err}") from None
    if not isinstance(value, dict):
        raise CniConfigError(f"error parsing {what}: not a JSON object")
    return value


def _text(obj: dict[str, Any], key: str, what: str) -> str:
    value = obj.get(key, "")
    if not isinstance(value, str):
        raise CniConfigError(f"error parsing {what}: {key!r} must be a string")
    return value


def conf_list_from_bytes(data: bytes, path: str = "") -> NetworkList:
    """A ``.conflist``: ``name``, ``cniVersion``, ``plugins`` (each with a ``type``)."""
    what = "configuration list"
    obj = _json_object(data, what)
    name = _text(obj, "name", what)
    if not name:
        raise CniConfigError(f"error parsing {what}: no name")
    version = _text(obj, "cniVersion", what)
    plugins = obj.get("plugins")
    if plugins is None:
        raise CniConfigError(f"error parsing {what}: no 'plugins' key")
    if not isinstance(plugins, list) or not all(isinstance(p, dict) for p in plugins):
        raise CniConfigError(f"error parsing {what}: invalid 'plugins' type {type(plugins).__name__}")
    for i, plugin in enumerate(plugins):
        if not isinstance(plugin.get("type"), str) or not plugin["type"]:
            raise CniConfigError(f"failed to parse plugin config {i} of {what}: missing 'type'")
    if not plugins:
        raise CniConfigError(f"CNI config list in config file {path} has no networks, skipping")
    return _network_list(name, version, plugins, data, path, bool(obj.get("disableCheck", False)))


def conf_from_bytes(data: bytes, path: str = "") -> NetworkList:
    """A single-plugin ``.conf``/``.json``, as a list of one (libcni's ConfListFromConf)."""
    obj = _json_object(data, "configuration")
    plugin_type = _text(obj, "type", "configuration")
    if not plugin_type:
        raise CniConfigError(f"network type not found in {path}")
    return _network_list(_text(obj, "name", "configuration"), _text(obj, "cniVersion", "configuration"),
                         [obj], data, path, False)


_NETWORK_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")  # libcni's ValidateNetworkName


def _network_list(name: str, version: str, plugins: list[dict[str, Any]], data: bytes, path: str,
                  disable_check: bool) -> NetworkList:
    if name and not _NETWORK_NAME.fullmatch(name):  # it names the result cache's files: no '/' nor '..'
        raise CniConfigError(f"error parsing configuration list: invalid network name {name!r}: "
                             "letters and digits first, then letters, digits, '_', '.' or '-'")
    capabilities: set[str] = set()
    for plugin in plugins:
        caps = plugin.get("capabilities")
        if isinstance(caps, dict):
            capabilities.update(k for k, on in caps.items() if on is True)
    return NetworkList(name, version, tuple(plugins), data, path, disable_check, frozenset(capabilities))


def config_files(conf_dir: Path) -> list[Path]:
    """The candidate files, sorted by name; a missing directory has none."""
    try:
        entries = list(os.scandir(conf_dir))
    except FileNotFoundError:
        return []
    except OSError as err:
        raise CniConfigError(f"failed to read config file: {err}") from None
    return sorted(
        (Path(e.path) for e in entries if e.name.endswith(EXTENSIONS) and e.is_file()), key=lambda p: p.name
    )


def load_conf_dir(conf_dir: Path) -> NetworkList:
    """The default network: the first config file by name, which must be valid."""
    files = config_files(conf_dir)
    if not files:
        raise CniConfigError(f"no network config found in {conf_dir}: {NOT_INITIALIZED}")
    first = files[0]
    try:
        if first.stat().st_size > MAX_FILE_BYTES:
            raise CniConfigError(f"CNI config in {first} exceeded max size of {MAX_FILE_BYTES}")
        data = first.read_bytes()
    except OSError as err:
        raise CniConfigError(f"failed to load CNI config file {first}: {err}") from None
    try:
        if first.name.endswith(".conflist"):
            return conf_list_from_bytes(data, str(first))
        return conf_from_bytes(data, str(first))
    except CniConfigError as err:
        kind = "config list file" if first.name.endswith(".conflist") else "config file"
        raise CniConfigError(f"failed to load CNI {kind} {first}: {err}: invalid cni config") from None


class ConfDir:
    """The configuration directory, re-read when its contents change."""

    def __init__(self, conf_dir: Path) -> None:
        self.path = conf_dir
        self._signature: tuple[object, ...] | None = None
        self._network: NetworkList | None = None
        self._error = f"no network config found in {conf_dir}: {NOT_INITIALIZED}"

    def _current_signature(self) -> tuple[object, ...]:
        try:
            entries = sorted(os.scandir(self.path), key=lambda e: e.name)
        except OSError:
            return ("missing",)
        signature: list[object] = []
        for entry in entries:
            if entry.name.endswith(EXTENSIONS):
                try:
                    st = entry.stat()
                except OSError:
                    continue
                signature.append((entry.name, st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(signature)

    def refresh(self) -> None:
        signature = self._current_signature()
        if signature == self._signature:
            return
        self._signature = signature
        try:
            self._network = load_conf_dir(self.path)
            self._error = ""
        except CniConfigError as err:
            self._network = None
            self._error = str(err)

    def network(self) -> NetworkList | None:
        """The network to use now, or None while CNI is not initialized."""
        self.refresh()
        return self._network

    @property
    def load_status(self) -> str:
        """containerd's ``lastCNILoadStatus``: "OK" or why the last load failed."""
        return "OK" if self._network is not None else self._error
