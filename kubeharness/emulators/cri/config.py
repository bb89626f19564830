"""The CRI emulator's configuration file (YAML), with defaults that work out of the box.

Every key is optional. An unknown key or a value of the wrong type is an error naming the key, so a
typo never silently falls back to a default. The image catalog may be inline (``images:``) or in a
file of its own (``image_catalog: path``), in the format of :mod:`kubeharness.emulators.cri.images`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from kubeharness.errors import InvalidArgument


@dataclass
class CriConfig:
    """Settings of one emulator instance."""

    # What Version reports; runtime_version defaults to kubeharness's own version.
    runtime_name: str = "kubeharness"
    runtime_version: str = ""
    # RuntimeConfig: "systemd" or "cgroupfs".
    cgroup_driver: str = "cgroupfs"
    # Addresses handed to pod sandboxes (until a CNI plugin is configured). Loopback by default, so
    # nothing ever routes a packet off this machine by accident.
    pod_cidr: str = "127.77.0.0/16"
    # The image every sandbox's pause container runs.
    pause_image: str = "registry.k8s.io/pause:3.10"
    # Exec/Attach/PortForward answer with URLs under this base.
    stream_url: str = "http://127.0.0.1:10010"
    # Images: the virtual registry and the local image filesystem.
    images: list[dict[str, Any]] = field(default_factory=list)
    image_catalog: str = ""
    preloaded_images: list[str] = field(default_factory=list)
    pull_bandwidth_bytes_per_second: int = 100 * 1024 * 1024
    image_fs_capacity_bytes: int = 20 * 1024**3
    # Conditions reported by Status (with a CNI conf dir, NetworkReady also needs a valid network config).
    network_ready: bool = True
    # Pod networking through CNI plugins, as containerd's CRI plugin does it: the first config file by
    # name in cni_conf_dir, plugins from cni_bin_dir. Empty cni_conf_dir: addresses come from pod_cidr.
    cni_conf_dir: str = ""
    cni_bin_dir: str = "/opt/cni/bin"
    # Sandbox network namespaces: "emulated" (a placeholder path) or "real" (`ip netns`, root only).
    netns: str = "emulated"
    # Serve --http-port/--tcp-port of running containers on their pod IP when it is a loopback address.
    serve_ports: bool = True
    # How many finished events GetContainerEvents buffers per slow subscriber before dropping it.
    event_buffer: int = 10_000
    # Compact the state journal once it holds this many lines (and four times the live records).
    journal_compact_lines: int = 10_000

    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: Path | None = None) -> CriConfig:
        known = {f.name: f for f in fields(cls)}
        config = cls()
        for key, value in data.items():
            if key not in known:
                raise InvalidArgument(f"unknown key {key!r} in CRI emulator config")
            default = getattr(config, key)
            expected = type(default)
            if (expected is int and isinstance(value, bool)) or not isinstance(value, expected):
                raise InvalidArgument(
                    f"config key {key!r} must be {expected.__name__}, not {type(value).__name__}"
                )
            setattr(config, key, value)
        if config.cgroup_driver not in ("systemd", "cgroupfs"):
            raise InvalidArgument("config key 'cgroup_driver' must be 'systemd' or 'cgroupfs'")
        try:
            ipaddress.ip_network(config.pod_cidr)
        except ValueError as err:
            raise InvalidArgument(f"config key 'pod_cidr': {err}") from None
        if config.netns not in ("emulated", "real"):
            raise InvalidArgument("config key 'netns' must be 'emulated' or 'real'")
        if config.pull_bandwidth_bytes_per_second <= 0:
            raise InvalidArgument("config key 'pull_bandwidth_bytes_per_second' must be positive")
        if config.image_catalog:
            path = Path(config.image_catalog)
            if base_dir is not None and not path.is_absolute():
                path = base_dir / path
            config.images = config.images + load_catalog_file(path)
        return config

    @classmethod
    def load(cls, path: Path) -> CriConfig:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise InvalidArgument(f"cannot read CRI emulator config {path}: {err}") from None
        if not isinstance(data, dict):
            raise InvalidArgument(f"CRI emulator config {path} must be a mapping")
        return cls.from_dict(data, base_dir=path.parent)


def load_catalog_file(path: Path) -> list[dict[str, Any]]:
    """The ``images:`` list of a catalog file."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise InvalidArgument(f"cannot read image catalog {path}: {err}") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise InvalidArgument(f"image catalog {path} needs a list under 'images'")
    return images
