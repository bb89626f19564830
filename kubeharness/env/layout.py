"""Where an environment lives: one run directory holds every file, socket and log of it.

Nothing is written outside the run directory except what containerd and the CNI plugins put in the
kernel (mounts, network namespaces, the bridge); ``down`` removes those by name. Each run directory
gets its own bridge, CNI network name and pod subnet (derived from its path), so environments do not
share anything.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_RUN_DIR = Path("/var/lib/kubeharness/env")
DEFAULT_REGISTRY_PORT = 5055


@dataclass
class EnvPaths:
    """Every path of one environment, below ``root``."""

    root: Path

    @property
    def _tag(self) -> int:
        """A number derived from the run directory, so that two environments get distinct networks."""
        return int(hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:8], 16)

    @property
    def bridge(self) -> str:
        return f"khbr{self._tag % 100000:05d}"

    @property
    def network(self) -> str:
        return f"kubeharness-{self._tag % 100000:05d}"

    @property
    def pod_subnet(self) -> str:
        """Exists only on the bridge and inside the network namespaces this environment's containerd creates."""
        return f"10.244.{20 + self._tag % 200}.0/24"

    @property
    def state_file(self) -> Path:
        return self.root / "env.json"

    @property
    def socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

    @property
    def containerd_dir(self) -> Path:
        return self.root / "containerd"

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd" / "config.toml"

    @property
    def containerd_log(self) -> Path:
        return self.root / "containerd" / "containerd.log"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni"

    @property
    def cni_bin_dir(self) -> Path:
        """containerd 1.6 takes one plugin directory: links to the Debian plugins and to kubeharness-cni."""
        return self.root / "cni-bin"

    @property
    def cni_data_dir(self) -> Path:
        """The IPAM leases of host-local or kubeharness-cni."""
        return self.root / "cni-ipam"

    @property
    def registry_dir(self) -> Path:
        return self.root / "registry"

    @property
    def registry_config(self) -> Path:
        return self.root / "registry" / "config.yml"

    @property
    def registry_log(self) -> Path:
        return self.root / "registry" / "registry.log"

    @property
    def build_dir(self) -> Path:
        return self.root / "build"


@dataclass
class EnvState:
    """What ``up`` started, saved in ``env.json`` so that ``up`` again and ``down`` find it."""

    registry_pid: int = 0
    registry_port: int = DEFAULT_REGISTRY_PORT
    containerd_pid: int = 0
    socket: str = ""
    images: list[str] = field(default_factory=list)
    cni: str = "bridge"

    def save(self, paths: EnvPaths) -> None:
        paths.root.mkdir(parents=True, exist_ok=True)
        tmp = paths.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(paths.state_file)

    @classmethod
    def load(cls, paths: EnvPaths) -> EnvState:
        try:
            raw: dict[str, Any] = json.loads(paths.state_file.read_text())
        except (OSError, ValueError):
            return cls()
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        return cls(**known)
