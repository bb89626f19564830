"""Running the tools an environment needs, with errors that say what failed and why."""

from __future__ import annotations

import shutil
import subprocess

from kubeharness.errors import KubeharnessError

REQUIRED = {
    "containerd": "containerd",
    "runc": "runc",
    "docker-registry": "docker-registry",
    "skopeo": "skopeo",
    "umoci": "umoci",
    "busybox": "busybox-static",
    "gcc": "gcc",
    "ip": "iproute2",
}


class EnvError(KubeharnessError):
    """The environment could not be brought up or down; the message says why."""


def missing_tools() -> list[str]:
    """Debian packages whose commands are not on PATH."""
    return sorted({package for command, package in REQUIRED.items() if shutil.which(command) is None})


def run(argv: list[str], what: str, timeout_s: float = 300) -> str:
    """Run a command to completion; on failure an EnvError naming ``what`` and the command's stderr."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except FileNotFoundError:
        raise EnvError(f"{what}: {argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise EnvError(f"{what}: {argv[0]} did not finish within {timeout_s:g} s") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise EnvError(f"{what} failed (exit {done.returncode}): {' / '.join(detail)}")
    return done.stdout
