"""Building and installing the C shim (``cnishim.c``) that makes ``kubeharness-cni`` fast.

``kubeharness cni install --bin-dir DIR [--socket PATH]`` compiles the shim with gcc, with the fork
server's socket and the fallback (the Python ``kubeharness-cni`` entry point beside this interpreter)
baked in as ``-D`` string defines, and puts it in ``DIR/kubeharness-cni`` by an atomic rename, so a
runtime executing the old file is never disturbed. The shim is only fast while ``kubeharness cni serve``
runs on that socket; without it the shim execs the fallback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).with_name("cnishim.c")
DEFAULT_SOCKET = "/run/kubeharness/cni.sock"
NAME = "kubeharness-cni"
_SUN_PATH_MAX = 107


class ShimError(Exception):
    """The shim cannot be built or installed; the message says why."""


def default_fallback() -> Path:
    """The Python entry point installed beside the running interpreter."""
    return Path(sys.executable).with_name(NAME)


def c_string(text: str) -> str:
    """``text`` as a C string literal: printable ASCII as is, every other byte as an octal escape."""
    out = []
    for byte in os.fsencode(text):
        char = chr(byte)
        out.append(char if 0x20 <= byte < 0x7F and char not in '"\\?' else f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def build(output: Path, socket_path: str, fallback: Path) -> Path:
    """Compile the shim to ``output`` (written in place; see :func:`install` for the atomic way)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise ShimError("gcc is not installed: the shim is C (apt-get install gcc libc6-dev)")
    socket_path = os.path.abspath(socket_path)
    if len(os.fsencode(socket_path)) > _SUN_PATH_MAX:
        raise ShimError(f"the socket path {socket_path} is longer than a unix socket address allows")
    argv = [gcc, "-O2", "-Wall", "-Wextra", "-Werror", f"-DKH_SOCKET={c_string(socket_path)}",
            f"-DKH_FALLBACK={c_string(str(fallback))}", "-o", str(output), str(SOURCE)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ShimError(f"compiling {SOURCE.name} failed:\n{done.stderr.strip()}")
    return output


def install(bin_dir: Path, socket_path: str = DEFAULT_SOCKET, fallback: Path | None = None) -> Path:
    """Build the shim and rename it to ``bin_dir/kubeharness-cni``; returns that path."""
    fallback = (fallback or default_fallback()).absolute()
    target = bin_dir / NAME
    if not fallback.is_file():
        raise ShimError(f"the fallback {fallback} does not exist (is kubeharness installed in this Python?)")
    if target.exists() and target.resolve() == fallback.resolve():
        raise ShimError(f"{target} is the Python entry point itself: install the shim into another directory")
    bin_dir.mkdir(parents=True, exist_ok=True)
    tmp = bin_dir / f".{NAME}.tmp.{os.getpid()}"
    try:
        build(tmp, socket_path, fallback)
        tmp.chmod(0o755)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
