"""The CSI emulator's settings: the driver's identity, its node, its capacity budget, where it may mount.

Every setting has a default that works without root: emulated mounts, paths under ``/var/lib/kubelet``
or the state directory. ``roots`` are the only directories under which a staging or target path may
be; kubelet's are ``/var/lib/kubelet/plugins/kubernetes.io/csi/...`` (staging) and
``/var/lib/kubelet/pods/<uid>/volumes/kubernetes.io~csi/<name>/mount`` (target).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from kubeharness.errors import InvalidArgument

GiB = 1024**3
DEFAULT_DRIVER = "csi.kubeharness.io"
TOPOLOGY_KEY = "topology.csi.kubeharness.io/node"
MODES = ("emulated", "real")
DRIVER_NAME = re.compile(r"(?=.{1,63}$)[a-z0-9]([a-z0-9.-]*[a-z0-9])?")


@dataclass
class CsiConfig:
    """One plugin instance."""

    driver_name: str = DEFAULT_DRIVER
    vendor_version: str = ""  # default: kubeharness's version
    node_id: str = "kubeharness-node"
    # What NodeGetInfo reports, and what ControllerPublishVolume enforces per node (0: no limit).
    max_volumes_per_node: int = 0
    # The controller's budget: the sum of all volumes' capacities may not exceed it.
    capacity_bytes: int = 100 * GiB
    # A volume created without a capacity range gets this much.
    default_volume_bytes: int = 1 * GiB
    # emulated: directories and a record of the mount; real: bind mounts and tmpfs (root only).
    mode: str = "emulated"
    # Staging and target paths must be below one of these (the state directory is always allowed).
    roots: list[str] = field(default_factory=lambda: ["/var/lib/kubelet"])
    # What NodeGetVolumeStats reports in emulated mode, per volume, until a fault says otherwise.
    used_bytes: int = 0
    inodes: int = 1_000_000
    used_inodes: int = 1
    # Probe answers ready=false while this is false (a switch for "the driver is starting").
    ready: bool = True
    # Compact the volume journal once it holds this many lines (and four times the live volumes).
    journal_compact_lines: int = 10_000

    @classmethod
    def load(cls, path: Path) -> CsiConfig:
        """Settings from a YAML file of the keys above; an unknown key or a wrong type names the key."""
        import yaml

        try:
            data: Any = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise InvalidArgument(f"{path}: {err}") from None
        if not isinstance(data, dict):
            raise InvalidArgument(f"{path}: expected a mapping of settings")
        config = cls()
        known = {f.name: f for f in fields(cls)}
        for key, value in data.items():
            if key not in known:
                raise InvalidArgument(f"{path}: unknown key {key!r}; known: {', '.join(sorted(known))}")
            default = getattr(config, key)
            if isinstance(default, bool) != isinstance(value, bool) or not isinstance(value, type(default)):
                raise InvalidArgument(f"{path}: key {key!r} must be a {type(default).__name__}")
            setattr(config, key, value)
        config.check()
        return config

    def check(self) -> None:
        if self.mode not in MODES:
            raise InvalidArgument(f"mode {self.mode!r}: expected one of {', '.join(MODES)}")
        if not DRIVER_NAME.fullmatch(self.driver_name):
            # the spec's rule; it also keeps the registration socket's name inside its directory
            raise InvalidArgument(f"driver name {self.driver_name!r}: at most 63 characters of lowercase "
                                  "letters, digits, '-' and '.', beginning and ending with a letter or digit")
        for root in self.roots:
            if not isinstance(root, str) or not root.startswith("/"):
                raise InvalidArgument(f"roots: {root!r} is not an absolute path")
        if not self.node_id:
            raise InvalidArgument("node id must not be empty")
        for name in ("capacity_bytes", "default_volume_bytes", "max_volumes_per_node", "used_bytes", "inodes",
                     "journal_compact_lines"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"{name} must not be negative")
