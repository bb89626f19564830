"""A stand-in kind node: an unprivileged container of our own making, for machines that cannot run kind.

A kind node needs a privileged container, which these machines refuse. So that the kind target's Docker
transport and the CRI bridge are tested on a real Docker engine all the same, this makes a container that
looks like a kind node from outside: static pods in ``/etc/kubernetes/manifests``, a kubelet's read-only
port on 10255 (inside the container's own network namespace), container logs in ``/var/log/pods``, a CRI
socket at ``/run/containerd/containerd.sock``, its hostname as its node name. Inside, a CRI emulator
stands where kind has containerd, and ``kubeharness agent`` where it has a kubelet.

The image is made with ``docker import`` from a rootfs of a few directories and the usual top-level
links into ``/usr``; the host's ``/usr``, its Python and this checkout (with its virtualenv) are mounted
read-only, so the container runs this project's code without an image registry or a build inside it.
"""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path
from typing import Any

import docker
import docker.errors
import yaml

from kubeharness.kind.layout import CONTAINERD_SOCKET, MANIFESTS, POD_LOGS, READ_ONLY_PORT
from kubeharness.kind.transport import DockerError, tar_of

IMAGE = "kubeharness.test/standin-node"
TAG = "1"
ENTRY = "/kubeharness-node.sh"
CHECKOUT = Path(__file__).resolve().parents[2]
TOP_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
DIRS = ("etc/kubernetes/manifests", "etc/kubeharness", "run/containerd", "var/log/pods", "var/lib/kubelet",
        "var/lib/kubeharness-cri", "root", "proc", "sys", "dev", "usr")


def kubelet_config() -> dict[str, Any]:
    """The stand-in's KubeletConfiguration: as kind's kubelet, with the read-only port on."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}", "staticPodPath": MANIFESTS,
        "fileCheckFrequency": "1s", "syncFrequency": "2s", "readOnlyPort": READ_ONLY_PORT, "address": "127.0.0.1",
        "healthzPort": 0, "podLogsDir": POD_LOGS, "clusterDNS": ["10.96.0.10"], "clusterDomain": "cluster.local",
    }


def entry_script(python: str) -> str:
    """The node's first process: the CRI emulator, then the agent unless ``KUBEHARNESS_NO_AGENT`` is set
    (a node of a runtime alone: a kubelet, and so our agent, removes the sandboxes of pods it does not
    know, which a CRI-level suite through the bridge is made of)."""
    return (
        "#!/bin/sh\n"
        "# the stand-in node: a CRI emulator where kind has containerd, our agent where it has a kubelet\n"
        f"{python} -m kubeharness.cli cri serve --socket {CONTAINERD_SOCKET} "
        "--state-dir /var/lib/kubeharness-cri >/var/log/cri.log 2>&1 &\n"
        'if [ -n "$KUBEHARNESS_NO_AGENT" ]; then wait; exit; fi\n'
        f'exec {python} -m kubeharness.cli agent --config /etc/kubeharness/kubelet.yaml '
        '--hostname-override "$(hostname)" --root-dir /var/lib/kubelet >/var/log/kubelet.log 2>&1\n'
    )


def rootfs() -> bytes:
    """The image's files: the directories, the host's top-level links into /usr, the configuration."""
    files = tar_of({
        "etc/passwd": (b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n", 0o644),
        "etc/group": (b"root:x:0:\nnogroup:x:65534:\n", 0o644),
        "etc/kubeharness/kubelet.yaml": (yaml.safe_dump(kubelet_config()).encode(), 0o644),
        ENTRY.lstrip("/"): (entry_script(sys.executable).encode(), 0o755),
    })
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar, tarfile.open(fileobj=io.BytesIO(files)) as given:
        for name in (*DIRS, "tmp"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
            tar.addfile(info)
        for name in TOP_LINKS:
            host = Path("/") / name
            if host.is_symlink():  # merged /usr (Debian 12): /bin -> usr/bin and so on
                info = tarfile.TarInfo(name)
                info.type, info.linkname = tarfile.SYMTYPE, str(host.readlink())
                tar.addfile(info)
        for member in given.getmembers():
            tar.addfile(member, given.extractfile(member))
    return buffer.getvalue()


def mounts() -> dict[str, dict[str, str]]:
    """Read-only binds: /usr, the top-level directories that are not links, Python, the checkout."""
    paths = {Path("/usr"), Path(sys.base_prefix), Path(sys.prefix), CHECKOUT}
    paths |= {Path("/") / name for name in TOP_LINKS if (Path("/") / name).is_dir()
              and not (Path("/") / name).is_symlink()}
    kept = sorted(p for p in paths if not any(p != q and p.is_relative_to(q) for q in paths))
    return {str(p): {"bind": str(p), "mode": "ro"} for p in kept}


def build_image(client: docker.DockerClient) -> str:
    """Import the stand-in's image (again: it is a few kilobytes); its reference."""
    try:
        client.api.import_image_from_data(rootfs(), repository=IMAGE, tag=TAG)
    except docker.errors.DockerException as err:
        raise DockerError(f"importing the stand-in node image: {err}") from None
    return f"{IMAGE}:{TAG}"


def run_node(client: docker.DockerClient, name: str, agent: bool = True) -> str:
    """Start a stand-in node named ``name`` (its hostname too), without a network; its container id.
    Without ``agent``, the node has its runtime alone (see :func:`entry_script`)."""
    image = build_image(client)
    try:
        container = client.containers.run(
            image, [ENTRY], name=name, hostname=name, detach=True, network_mode="none", volumes=mounts(),
            environment={"PYTHONDONTWRITEBYTECODE": "1", "GRPC_VERBOSITY": "ERROR",
                         **({} if agent else {"KUBEHARNESS_NO_AGENT": "1"})},
            labels={"io.kubeharness.standin-node": "1"})
    except docker.errors.DockerException as err:
        raise DockerError(f"starting the stand-in node {name}: {err}") from None
    return str(container.id)


def remove_node(client: docker.DockerClient, name: str) -> None:
    """Stop and remove a stand-in node (of ours: it must carry our label)."""
    try:
        container = client.containers.get(name)
    except docker.errors.NotFound:
        return
    if container.labels.get("io.kubeharness.standin-node") != "1":
        raise DockerError(f"{name} is not a stand-in node of ours; leaving it alone")
    container.remove(force=True)
