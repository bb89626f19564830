"""What a scripted container sees: its filesystem and its process identity, built from the CRI requests.

The filesystem (:class:`~.shell.vfs.Vfs`) stacks, as containerd's would: the image's files (images of
kind ``busybox`` have the busybox layout, every applet under ``/bin``), the files the runtime itself
provides (``/etc/hostname`` and ``/etc/resolv.conf`` from the sandbox config, ``/etc/hosts`` unless
the kubelet mounts its own), the CreateContainer mounts (real host paths, so containers of a pod that
mount the same volume share its files) and a writable layer, a real directory under the emulator's
state directory that survives a restart and counts toward the container's filesystem stats.

Identity: environment, working directory, user and groups, hostname and PID namespace come from the
container and sandbox configs. A container in its own PID namespace (``CONTAINER``, what the kubelet
asks for unless the pod shares its process namespace) runs as PID 1, with PID 1's signal rules; one
that shares the pod's namespace (``POD``) runs under the pause process.
"""

from __future__ import annotations

import functools
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

from kubeharness.emulators.cri.images import LocalImage
from kubeharness.emulators.cri.model import Container, Sandbox
from kubeharness.emulators.cri.shell.interp import APPLET_NAMES, Machine
from kubeharness.emulators.cri.shell.layout import ImageLayout, busybox_layout
from kubeharness.emulators.cri.shell.vfs import Mount, Vfs
from kubeharness.wire.cri import api_pb2 as cri

SHELL_IMAGE_KINDS = frozenset({"busybox"})
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_HOSTS = b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
HOST_RESOLV_CONF = Path("/etc/resolv.conf")
HOST_HOSTS = Path("/etc/hosts")
# PIDs of a container that shares the pod's PID namespace (the pause process is PID 1 there).
SHARED_NAMESPACE_FIRST_PID = 7


@functools.cache
def busybox() -> ImageLayout:
    """The busybox image layout, built once and shared by every container."""
    return busybox_layout(APPLET_NAMES)


def has_shell(image: LocalImage | None) -> bool:
    return image is not None and image.kind in SHELL_IMAGE_KINDS


def resolv_conf(dns: cri.DNSConfig) -> bytes:
    """``/etc/resolv.conf`` as containerd writes it from the sandbox's DNS config (else the host's)."""
    if not (dns.servers or dns.searches or dns.options):
        try:
            return HOST_RESOLV_CONF.read_bytes()
        except OSError:
            return b""
    lines = []
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    lines.extend(f"nameserver {server}" for server in dns.servers)
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return ("\n".join(lines) + "\n").encode()


def hostname_of(sb: Sandbox) -> str:
    """The sandbox config's hostname; without one, the node's (containerd shares the host's UTS name)."""
    return sb.config.hostname or socket.gethostname()


def node_hosts() -> bytes:
    """What containerd copies into a container without a kubelet-managed /etc/hosts: the node's file."""
    try:
        return HOST_HOSTS.read_bytes()
    except OSError:
        return DEFAULT_HOSTS


def upper_dir(state_dir: Path, container_id: str) -> Path:
    return state_dir / "containers" / container_id / "upper"


def remove_layer(state_dir: Path, container_id: str) -> None:
    """Delete a removed container's writable layer."""
    shutil.rmtree(state_dir / "containers" / container_id, ignore_errors=True)


def filesystem(state_dir: Path, c: Container, sb: Sandbox, now_ns: Callable[[], int]) -> Vfs:
    mounts = [Mount(m.container_path, m.host_path, m.readonly) for m in c.config.mounts if m.host_path]
    fs = Vfs(
        busybox(),
        upper_dir(state_dir, c.id),
        mounts,
        now_ns=now_ns,
        readonly_root=c.config.linux.security_context.readonly_rootfs,
    )
    mounted = {m.container_path.rstrip("/") for m in c.config.mounts}
    fs.add_file("/etc/hostname", (hostname_of(sb) + "\n").encode())
    if "/etc/resolv.conf" not in mounted:
        fs.add_file("/etc/resolv.conf", resolv_conf(sb.config.dns_config))
    if "/etc/hosts" not in mounted:
        fs.add_file("/etc/hosts", node_hosts())
    return fs


def main_pid(c: Container, siblings_started: int) -> int:
    """1 in the container's own PID namespace; under the pause process when the pod's is shared."""
    mode = c.config.linux.security_context.namespace_options.pid
    if mode == cri.CONTAINER:
        return 1
    if mode == cri.NODE:
        return 4000 + siblings_started
    return SHARED_NAMESPACE_FIRST_PID + siblings_started


def machine(
    c: Container,
    sb: Sandbox,
    image: LocalImage | None,
    fs: Vfs,
    pid: int,
    now_ns: Callable[[], int],
    stdout: Callable[[bytes], None],
    stderr: Callable[[bytes], None],
    missing: Callable[[str], None],
) -> Machine:
    cfg = c.config
    security = cfg.linux.security_context
    image_user = image.user if image is not None else ""
    if security.HasField("run_as_user"):
        uid = security.run_as_user.value
    elif image_user.isdigit():
        uid = int(image_user)
    else:
        uid = 0  # a named image user would need the image's /etc/passwd: root, as for busybox
    gid = security.run_as_group.value if security.HasField("run_as_group") else 0
    hostname = hostname_of(sb)
    env = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname, "HOME": "/root" if uid == 0 else "/"}
    env.update((kv.key, kv.value) for kv in cfg.envs)
    return Machine(
        fs=fs,
        env=env,
        cwd=cfg.working_dir or "/",
        uid=uid,
        gid=gid,
        groups=[gid, *(g for g in security.supplemental_groups if g != gid)],
        hostname=hostname,
        pid=pid,
        now_ns=now_ns,
        stdout=stdout,
        stderr=stderr,
        missing=missing,
    )
