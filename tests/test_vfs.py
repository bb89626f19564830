"""The container filesystem: image lower layer, overlay upper layer on disk, whiteouts and mounts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kubeharness.emulators.cri.shell.layout import ImageEntry, ImageLayout, busybox_layout
from kubeharness.emulators.cri.shell.vfs import Mount, Vfs, VfsError, normalize

LAYOUT = busybox_layout(["cat", "echo", "sleep"])
NOW = 1_800_000_000_000_000_000


def make(tmp_path: Path, mounts: list[Mount] | None = None, name: str = "upper", **kw: bool) -> Vfs:
    return Vfs(LAYOUT, tmp_path / name, mounts or [], now_ns=lambda: NOW, **kw)


def error_of(fn: object, *args: object, **kwargs: object) -> str:
    assert callable(fn)
    with pytest.raises(VfsError) as info:
        fn(*args, **kwargs)
    return str(info.value)


@pytest.mark.parametrize(
    ("path", "cwd", "expected"),
    [
        ("/a/b", "/", "/a/b"),
        ("a/./b/", "/x", "/x/a/b"),
        ("../../../etc/passwd", "/tmp", "/etc/passwd"),
        ("/..", "/", "/"),
        ("", "/tmp", "/tmp"),
        ("a//b/../c", "/", "/a/c"),
    ],
)
def test_normalize_stays_inside_the_root(path: str, cwd: str, expected: str) -> None:
    assert normalize(path, cwd) == expected


def test_busybox_layout_has_the_usual_files(tmp_path: Path) -> None:
    fs = make(tmp_path)
    assert fs.stat("/bin/sh").applet == "sh"
    assert fs.stat("/bin/cat").applet == "cat"
    assert fs.stat("/tmp").mode == 0o1777
    assert b"nobody:x:65534" in fs.read("/etc/passwd")
    assert fs.stat("/dev/null").device == "null"
    assert not fs.exists("/dev/termination-log")
    assert {"bin", "etc", "tmp", "root", "home", "var", "usr", "dev", "proc"} <= set(fs.listdir("/"))
    assert fs.read("/dev/null") == b""


def test_layout_from_a_plain_mapping_gets_parent_directories(tmp_path: Path) -> None:
    fs = Vfs({"/app/run": ImageEntry("exe", mode=0o755, target="echo")}, tmp_path / "u", [])
    assert fs.is_dir("/app")
    assert fs.listdir("/") == ["app"]
    assert isinstance(ImageLayout({}).get_entry("/"), ImageEntry)


def test_writes_copy_up_and_leave_the_image_untouched(tmp_path: Path) -> None:
    fs = make(tmp_path)
    fs.write("/etc/passwd", b"extra:x:5:5::/:/bin/sh\n", append=True)
    assert fs.read("/etc/passwd").endswith(b"extra:x:5:5::/:/bin/sh\n")
    assert fs.read("/etc/passwd").startswith(b"root:")
    assert (tmp_path / "upper/etc/passwd").exists()
    assert LAYOUT["/etc/passwd"].data.count(b"\n") == 3
    other = make(tmp_path, name="other")
    assert b"extra" not in other.read("/etc/passwd")


def test_write_truncate_append_and_mtime_from_the_clock(tmp_path: Path) -> None:
    fs = make(tmp_path)
    fs.write("/tmp/f", b"one\n")
    fs.write("/tmp/f", b"two\n", append=True)
    assert fs.read("/tmp/f") == b"one\ntwo\n"
    fs.write("/tmp/f", b"x")
    assert fs.read("/tmp/f") == b"x"
    assert fs.stat("/tmp/f").mtime_ns == NOW
    assert fs.stat("/tmp/f").size == 1


def test_deleting_an_image_file_records_a_hidden_whiteout(tmp_path: Path) -> None:
    fs = make(tmp_path)
    fs.remove("/etc/group")
    assert not fs.exists("/etc/group")
    assert (tmp_path / "upper/etc/.wh.group").exists()
    assert "group" not in fs.listdir("/etc")
    assert ".wh.group" not in fs.listdir("/etc")
    fs.write("/etc/group", b"new\n")
    assert fs.read("/etc/group") == b"new\n"
    assert not (tmp_path / "upper/etc/.wh.group").exists()
    # the state is on disk: a new Vfs over the same upper dir sees the same thing
    again = make(tmp_path)
    assert again.read("/etc/group") == b"new\n"


def test_recreated_directory_is_opaque(tmp_path: Path) -> None:
    fs = make(tmp_path)
    fs.remove("/bin", recursive=True)
    assert not fs.exists("/bin/cat")
    fs.mkdir("/bin")
    assert fs.listdir("/bin") == []
    assert not fs.exists("/bin/cat")
    assert make(tmp_path).listdir("/bin") == []


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        (lambda fs: fs.read("/nope"), "No such file or directory"),
        (lambda fs: fs.read("/etc"), "Is a directory"),
        (lambda fs: fs.read("/etc/passwd/x"), "Not a directory"),
        (lambda fs: fs.write("/nodir/f", b""), "No such file or directory"),
        (lambda fs: fs.write("/tmp", b""), "Is a directory"),
        (lambda fs: fs.mkdir("/tmp"), "File exists"),
        (lambda fs: fs.mkdir("/a/b"), "No such file or directory"),
        (lambda fs: fs.remove("/etc"), "Directory not empty"),
        (lambda fs: fs.remove("/nope"), "No such file or directory"),
        (lambda fs: fs.listdir("/etc/passwd"), "Not a directory"),
        (lambda fs: fs.mkdir("/etc/passwd/x", parents=True), "Not a directory"),
        (lambda fs: fs.write("/tmp/.wh.x", b""), "Operation not permitted"),
        (lambda fs: fs.remove("/"), "Device or resource busy"),
    ],
)
def test_errors_read_like_strerror(tmp_path: Path, op: object, expected: str) -> None:
    fs = make(tmp_path)
    assert error_of(op, fs) == expected


def test_mkdir_parents_listdir_touch_and_remove(tmp_path: Path) -> None:
    fs = make(tmp_path)
    fs.mkdir("/data/a/b", parents=True)
    fs.mkdir("/data/a/b", parents=True)
    fs.touch("/data/a/b/f")
    fs.touch("/etc/hostname-copy")
    assert fs.listdir("/data/a/b") == ["f"]
    assert fs.stat("/data/a/b/f").size == 0
    fs.touch("/etc/passwd")
    assert fs.stat("/etc/passwd").mtime_ns == NOW
    fs.remove("/data/a/b/f")
    fs.remove("/data/a/b")
    fs.remove("/data", recursive=True)
    assert not fs.exists("/data")
    fs.touch("/dev/null")


def test_dev_null_discards_writes(tmp_path: Path) -> None:
    fs = make(tmp_path)
    fs.write("/dev/null", b"gone")
    assert fs.read("/dev/null") == b""


def test_add_file_is_below_the_upper_layer(tmp_path: Path) -> None:
    fs = make(tmp_path)
    fs.add_file("/etc/hostname", b"pod-1\n")
    fs.add_file("/run/secrets/token", b"t")
    assert fs.read("/etc/hostname") == b"pod-1\n"
    assert "hostname" in fs.listdir("/etc")
    assert fs.listdir("/run/secrets") == ["token"]
    fs.write("/etc/hostname", b"changed\n")
    assert fs.read("/etc/hostname") == b"changed\n"


def test_mounts_are_shared_between_containers(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    a = make(tmp_path, [Mount("/data", str(shared))], name="a")
    b = make(tmp_path, [Mount("/cache/data", str(shared))], name="b")
    a.write("/data/x", b"from a\n")
    assert b.read("/cache/data/x") == b"from a\n"
    b.mkdir("/cache/data/sub")
    assert a.listdir("/data") == ["sub", "x"]
    assert "data" in a.listdir("/")
    assert b.is_dir("/cache")
    assert (shared / "x").read_bytes() == b"from a\n"
    assert error_of(a.remove, "/data", recursive=True) == "Device or resource busy"
    assert a.upper_bytes() == 0


def test_single_file_mount(tmp_path: Path) -> None:
    host = tmp_path / "termination-log"
    host.write_bytes(b"")
    fs = make(tmp_path, [Mount("/dev/termination-log", str(host))])
    fs.write("/dev/termination-log", b"bye\n")
    assert host.read_bytes() == b"bye\n"
    assert "termination-log" in fs.listdir("/dev")
    assert error_of(fs.read, "/dev/termination-log/x") == "Not a directory"


def test_readonly_mount_and_readonly_root(tmp_path: Path) -> None:
    host = tmp_path / "cfg"
    host.mkdir()
    (host / "key").write_bytes(b"value")
    fs = make(tmp_path, [Mount("/etc/config", str(host), readonly=True)])
    assert fs.read("/etc/config/key") == b"value"
    for op in (
        lambda: fs.write("/etc/config/key", b"x"),
        lambda: fs.write("/etc/config/new", b"x"),
        lambda: fs.remove("/etc/config/key"),
        lambda: fs.mkdir("/etc/config/d"),
        lambda: fs.touch("/etc/config/key"),
    ):
        assert error_of(op) == "Read-only file system"
    ro = make(tmp_path, [Mount("/scratch", str(host))], name="ro", readonly_root=True)
    assert error_of(ro.write, "/tmp/x", b"") == "Read-only file system"
    ro.write("/scratch/ok", b"fine")
    assert (host / "ok").read_bytes() == b"fine"


def test_dotdot_and_symlinks_never_escape(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"host secret")
    vol = tmp_path / "vol"
    vol.mkdir()
    os.symlink(str(secret), vol / "abs")  # absolute: resolved inside the container's root
    os.symlink("../../../../../../secret", vol / "rel")
    os.symlink("..data/key", vol / "key")  # a ConfigMap volume's layout
    (vol / "..data").mkdir()
    (vol / "..data/key").write_bytes(b"cm value")
    os.symlink("loop", vol / "loop")
    fs = make(tmp_path, [Mount("/vol", str(vol))])
    assert fs.read("/vol/key") == b"cm value"
    assert error_of(fs.read, "/vol/abs") == "No such file or directory"
    assert error_of(fs.read, "/vol/rel") == "No such file or directory"
    assert error_of(fs.read, "/vol/../../../secret") == "No such file or directory"
    assert error_of(fs.read, "/vol/loop") == "Too many levels of symbolic links"
    fs.write("/tmp/../../../../escape", b"x")
    assert (tmp_path / "upper/escape").exists()
    assert not (tmp_path / "escape").exists()
    # a symlink planted in the upper layer resolves inside the root as well
    os.symlink("/etc/passwd", tmp_path / "upper/tmp-link")
    assert fs.read("/tmp-link").startswith(b"root:")
    fs.remove("/tmp-link")
    assert secret.read_bytes() == b"host secret"


def test_upper_bytes_counts_the_writable_layer(tmp_path: Path) -> None:
    fs = make(tmp_path)
    assert fs.upper_bytes() == 0
    fs.write("/tmp/a", b"x" * 1000)
    fs.write("/etc/passwd", b"y" * 24)
    fs.remove("/etc/group")
    assert fs.upper_bytes() == 1024
    fs.remove("/tmp/a")
    assert fs.upper_bytes() == 24


def test_rename_and_chmod(tmp_path: Path) -> None:
    fs = make(tmp_path)
    fs.write("/tmp/a", b"data")
    fs.chmod("/tmp/a", 0o755)
    fs.rename("/tmp/a", "/tmp/b")
    assert not fs.exists("/tmp/a")
    assert fs.read("/tmp/b") == b"data"
    assert fs.stat("/tmp/b").mode == 0o755
    fs.chmod("/etc/passwd", 0o600)
    assert fs.stat("/etc/passwd").mode == 0o600
    assert fs.resolve("/tmp/../tmp/b") == "/tmp/b"
