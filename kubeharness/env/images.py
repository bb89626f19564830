"""The images real containerd runs, built here from local sources (no registry on the internet is reachable).

- ``registry.k8s.io/pause:3.10``: ``images/pause/pause.c``, a static program that waits, reaps zombies
  and exits on SIGTERM;
- ``docker.io/library/busybox:1.36`` (and ``:latest``): Debian's busybox-static with a link per applet;
- ``kubeharness.test/khelper:1``: the busybox image plus ``/khelper`` (``images/khelper/khelper.c``),
  the static helper that does for real what the emulator's behaviour vocabulary simulates.

Each is assembled as an OCI layout with umoci and pushed with skopeo into the local registry, under the
path containerd asks the mirror for (``registry.k8s.io/pause:3.10`` -> ``/v2/pause/manifests/3.10``).
A stamp of the sources' hash skips the build when nothing changed.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kubeharness.env.tools import EnvError, run

SOURCES = Path(__file__).resolve().parents[2] / "images"
BUSYBOX = Path("/usr/bin/busybox")
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
    "nobody:x:65534:65534:nobody:/home:/bin/false\n"
)
GROUP = "root:x:0:\ndaemon:x:1:\nnobody:x:65534:\n"


@dataclass(frozen=True)
class Image:
    """One image: the references clients pull, the registry paths they map to, how to fill its rootfs."""

    name: str  # its tag in the OCI layout
    refs: tuple[str, ...]
    registry_paths: tuple[str, ...]
    kind: str  # pause | busybox | khelper
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    user: str = ""
    label: str = ""  # makes an image with the same files a distinct image (another config digest)


IMAGES = (
    Image("pause", ("registry.k8s.io/pause:3.10",), ("pause:3.10",), "pause", entrypoint=("/pause",),
          user="65535:65535"),
    Image("busybox", ("docker.io/library/busybox:1.36", "docker.io/library/busybox:latest"),
          ("library/busybox:1.36", "library/busybox:latest"), "busybox", cmd=("sh",)),
    Image("khelper", ("kubeharness.test/khelper:1",), ("khelper:1",), "khelper", entrypoint=("/khelper",)),
    # for specs that remove images on a shared runtime: two tags of an image no other spec uses
    Image("removable", ("kubeharness.test/removable:1", "kubeharness.test/removable:2"),
          ("removable:1", "removable:2"), "busybox", cmd=("sh",), label="kubeharness.image=removable"),
    # for the spec that removes an image a running container uses: its own image, so that a removal spec
    # running beside it on another worker cannot take the image away between its pull and its create
    Image("inuse", ("kubeharness.test/inuse:1",), ("inuse:1",), "busybox", cmd=("sh",),
          label="kubeharness.image=inuse"),
)
MIRRORED_REGISTRIES = ("docker.io", "registry.k8s.io", "kubeharness.test")


def compile_static(source: Path, output: Path) -> None:
    if not source.is_file():
        raise EnvError(f"missing source {source}: the images are built from the repository's images/ directory")
    output.parent.mkdir(parents=True, exist_ok=True)
    run(["gcc", "-static", "-O2", "-Wall", "-Wextra", "-o", str(output), str(source)], what=f"compiling {source.name}")


def _busybox_rootfs(rootfs: Path) -> None:
    if not BUSYBOX.is_file():
        raise EnvError(f"{BUSYBOX} is missing: install Debian's busybox-static")
    for sub in ("bin", "etc", "root", "home", "var", "usr/bin", "usr/sbin", "sbin", "proc", "dev", "sys"):
        (rootfs / sub).mkdir(parents=True, exist_ok=True)
    (rootfs / "tmp").mkdir(mode=0o1777, exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox" and not (rootfs / "bin" / applet).exists():
            (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc" / "passwd").write_text(PASSWD)
    (rootfs / "etc" / "group").write_text(GROUP)


def fill_rootfs(image: Image, rootfs: Path, binaries: Path) -> None:
    if rootfs.exists():
        shutil.rmtree(rootfs)
    rootfs.mkdir(parents=True)
    if image.kind == "pause":
        shutil.copy2(binaries / "pause", rootfs / "pause")
        return
    _busybox_rootfs(rootfs)
    if image.kind == "khelper":
        shutil.copy2(binaries / "khelper", rootfs / "khelper")
        (rootfs / "bin" / "khelper").symlink_to("/khelper")


def sources_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(SOURCES.rglob("*.c")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(BUSYBOX.read_bytes() if BUSYBOX.is_file() else b"")
    digest.update(repr(IMAGES).encode())
    return digest.hexdigest()


def build_and_push(build_dir: Path, registry: str) -> list[str]:
    """Build every image and push it to ``registry`` (host:port); returns the references now pullable."""
    stamp = build_dir / f"pushed-{registry.replace(':', '_')}"
    want = sources_digest()
    refs = [ref for image in IMAGES for ref in image.refs]
    if stamp.is_file() and stamp.read_text() == want:
        return refs
    binaries = build_dir / "bin"
    compile_static(SOURCES / "pause" / "pause.c", binaries / "pause")
    compile_static(SOURCES / "khelper" / "khelper.c", binaries / "khelper")
    layout = build_dir / "oci"
    if layout.exists():
        shutil.rmtree(layout)
    run(["umoci", "init", "--layout", str(layout)], what="creating the OCI layout")
    for image in IMAGES:
        tag = image.name
        rootfs = build_dir / "rootfs" / tag
        fill_rootfs(image, rootfs, binaries)
        target = f"{layout}:{tag}"
        run(["umoci", "new", "--image", target], what=f"creating image {tag}")
        run(["umoci", "insert", "--image", target, str(rootfs), "/"], what=f"adding the files of {tag}")
        config = ["umoci", "config", "--image", target, "--config.env", PATH_ENV]
        for arg in image.entrypoint:
            config += ["--config.entrypoint", arg]
        for arg in image.cmd:
            config += ["--config.cmd", arg]
        if image.user:
            config += ["--config.user", image.user]
        if image.label:
            config += ["--config.label", image.label]
        run(config, what=f"configuring image {tag}")
        for path in image.registry_paths:
            run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{target}", f"docker://{registry}/{path}"],
                what=f"pushing {path} to the registry at {registry}")
    stamp.write_text(want)
    return refs
