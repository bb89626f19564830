"""Fast unit tests of the CRI emulator's pure modules: no server, no socket."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kubeharness.clock import NS_PER_SECOND
from kubeharness.emulators.cri.behaviour import (
    Behaviour,
    BehaviourError,
    behaviour_for,
    command_line,
    parse_duration_ns,
)
from kubeharness.emulators.cri.images import normalize_ref
from kubeharness.emulators.cri.logs import ContainerLog, encode_line, format_timestamp
from kubeharness.emulators.cri.network import IpPool
from kubeharness.emulators.cri.store import NameIndex, Store
from kubeharness.errors import AlreadyExists, InvalidArgument, KubeharnessError, NotFound, ResourceExhausted
from kubeharness.persist import Journal

T0 = 1_767_225_600 * NS_PER_SECOND  # the virtual clock's default start, 2026-01-01T00:00:00Z
S = NS_PER_SECOND


# -- behaviour --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ns"),
    [("500ms", 500_000_000), ("2s", 2 * S), ("1m", 60 * S), ("1h", 3600 * S), ("1.5s", 1_500_000_000),
     ("3", 3 * S), ("0", 0), ("100us", 100_000), ("7ns", 7), ("0.25m", 15 * S)],
)
def test_parse_duration_accepts_the_documented_forms(text: str, ns: int) -> None:
    assert parse_duration_ns(text) == ns


@pytest.mark.parametrize("text", ["", "-1s", "1d", "inf", "infinity", "abc", "1.s", "s", "1 s s", "1e3s", "nan"])
def test_parse_duration_rejects_everything_else(text: str) -> None:
    with pytest.raises(BehaviourError):
        parse_duration_ns(text)


def test_command_line_follows_kubernetes_rules() -> None:
    ep, cmd = ["/khelper"], ["--log-rate=1"]
    assert command_line([], [], ep, cmd) == ["/khelper", "--log-rate=1"]
    assert command_line([], ["--exit-after=1s"], ep, cmd) == ["/khelper", "--exit-after=1s"]  # args replace cmd
    assert command_line(["sleep"], [], ep, cmd) == ["sleep"]  # command drops the image's cmd too
    assert command_line(["sleep"], ["5"], ep, cmd) == ["sleep", "5"]
    assert command_line([], [], [], ["sh"]) == ["sh"]


def test_helper_flags_become_a_behaviour() -> None:
    b = behaviour_for(
        ["/usr/bin/khelper", "--exit-after=1m", "--exit-code", "3", "--log-rate=0.5", "--log-count=7",
         "--log-stream=both", "--ignore-sigterm", "--sigterm-delay", "250ms", "--memory-mib=1.5"]
    )
    assert b == Behaviour(
        kind="helper", exit_after_ns=60 * S, exit_code=3, log_rate=0.5, log_count=7, log_stream="both",
        ignore_sigterm=True, sigterm_delay_ns=250_000_000, memory_mib=1.5,
    )


@pytest.mark.parametrize(
    "flags",
    [["--bogus"], ["--exit-code=256"], ["--exit-code=-1"], ["--log-rate=nan"], ["--log-rate=inf"],
     ["--log-stream=stdin"], ["--http-port=0"], ["--tcp-port=65536"], ["--exit-after"], ["--ignore-sigterm=yes"],
     ["--exit-after=soon"]],
)
def test_malformed_helper_flags_make_an_exit_2_container_with_usage_on_stderr(flags: list[str]) -> None:
    b = behaviour_for(["khelper", *flags])
    assert (b.kind, b.exit_after_ns, b.exit_code) == ("invalid", 0, 2)
    assert len(b.startup_stderr) == 2 and b.startup_stderr[0].startswith("khelper: ")
    assert b.startup_stderr[1].startswith("usage: khelper [--exit-after=D]")


def test_plain_commands_and_pause() -> None:
    assert behaviour_for(["sleep", "5"]) == Behaviour(kind="sleep", exit_after_ns=5 * S, ignore_sigterm=True)
    assert behaviour_for(["/bin/sleep", "infinity"]) == Behaviour(kind="sleep", ignore_sigterm=True)
    bad_sleep = behaviour_for(["sleep", "forever"])
    assert (bad_sleep.kind, bad_sleep.exit_code, bad_sleep.startup_stderr) == (
        "invalid", 1, ("sleep: invalid number 'forever'",)
    )
    assert behaviour_for(["true"]) == Behaviour(kind="sleep", exit_after_ns=0, exit_code=0)
    assert behaviour_for(["false"]) == Behaviour(kind="sleep", exit_after_ns=0, exit_code=1)
    assert behaviour_for(["/pause"]).kind == "pause"
    assert behaviour_for(["anything"], image_kind="pause").kind == "pause"
    assert behaviour_for([]) == Behaviour(kind="idle")
    assert behaviour_for(["nginx", "-g", "daemon off;"]) == Behaviour(kind="idle")


# -- logs -------------------------------------------------------------------------------------------


def test_log_line_format() -> None:
    assert format_timestamp(T0) == "2026-01-01T00:00:00.000000000Z"
    assert format_timestamp(T0 + 61 * S + 123_456_789) == "2026-01-01T00:01:01.123456789Z"
    assert encode_line(T0 + 5, "stderr", b"hello world") == b"2026-01-01T00:00:00.000000005Z stderr F hello world\n"
    assert encode_line(T0, "stdout", b"") == b"2026-01-01T00:00:00.000000000Z stdout F \n"


def test_long_lines_split_into_16_kib_partial_chunks() -> None:
    stamp = b"2026-01-01T00:00:00.000000000Z stdout "
    exact = b"a" * 16384
    assert encode_line(T0, "stdout", exact) == stamp + b"F " + exact + b"\n"
    over = b"b" * 16384 + b"c"
    assert encode_line(T0, "stdout", over) == stamp + b"P " + b"b" * 16384 + b"\n" + stamp + b"F c\n"
    text = bytes(range(97, 123)) * 2000  # 52,000 bytes
    lines = encode_line(T0, "stdout", text).split(b"\n")[:-1]
    assert [line[len(stamp) : len(stamp) + 1] for line in lines] == [b"P", b"P", b"P", b"F"]
    assert b"".join(line[len(stamp) + 2 :] for line in lines) == text
    assert [len(line) - len(stamp) - 2 for line in lines] == [16384, 16384, 16384, 52000 - 3 * 16384]


def test_container_log_appends_follows_a_rename_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "pods" / "c" / "0.log"
    log = ContainerLog(str(path))
    log.open()
    log.write(b"one\n")
    rotated = tmp_path / "pods" / "c" / "0.log.20260101"
    os.rename(path, rotated)
    log.write(b"two\n")  # the open file follows the rename, as with containerd
    assert not path.exists()
    log.reopen()
    log.write(b"three\n")
    log.close()
    assert rotated.read_bytes() == b"one\ntwo\n"
    assert path.read_bytes() == b"three\n"
    # reopening later appends, never truncates
    again = ContainerLog(str(path))
    again.write(b"four\n")
    again.close()
    assert path.read_bytes() == b"three\nfour\n"


def test_container_log_without_a_path_writes_nothing(tmp_path: Path) -> None:
    log = ContainerLog("")
    log.open()
    log.write(b"lost\n")
    log.touch()
    log.reopen()
    log.close()
    assert list(tmp_path.iterdir()) == []


# -- images.normalize_ref ---------------------------------------------------------------------------


DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("ref", "canonical"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("docker.io/library/busybox:1.36", "docker.io/library/busybox:1.36"),
        ("myuser/app:v1", "docker.io/myuser/app:v1"),
        ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
        ("localhost:5000/app", "localhost:5000/app:latest"),
        ("localhost/app:dev", "localhost/app:dev"),
        ("quay.io/org/sub/app:1.0-rc_1", "quay.io/org/sub/app:1.0-rc_1"),
        (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
        (f"registry.k8s.io/pause:3.10@{DIGEST}", f"registry.k8s.io/pause@{DIGEST}"),
    ],
)
def test_normalize_ref(ref: str, canonical: str) -> None:
    assert normalize_ref(ref) == canonical


@pytest.mark.parametrize(
    "ref",
    ["", " busybox", "busy box", "BusyBox", "busybox:", "busybox:-tag", "busybox@sha256:abc", "busybox@md5:" + "a" * 32,
     "a" * 5000, "docker.io//busybox", "-bad.io/app", "busybox:tag:extra/x", "reg.io/app:" + "t" * 129],
)
def test_normalize_ref_rejects_invalid_refs(ref: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        normalize_ref(ref)
    assert len(info.value.message) < 400  # a huge ref is not echoed in full


# -- network.IpPool ---------------------------------------------------------------------------------


def test_ip_pool_allocates_unique_lowest_free_addresses_and_reuses_released_ones() -> None:
    pool = IpPool("10.1.0.0/24")
    got = [pool.allocate() for _ in range(4)]
    assert got == ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5"]
    pool.release("10.1.0.4")
    pool.release("10.1.0.3")
    pool.release("10.1.0.3")  # twice: still freed once
    pool.release("not an ip")
    assert [pool.allocate() for _ in range(3)] == ["10.1.0.3", "10.1.0.4", "10.1.0.6"]


def test_ip_pool_exhaustion_and_reserved_addresses() -> None:
    pool = IpPool("10.2.0.0/29")  # .0 network, .1 gateway, .7 broadcast: .2 to .6 usable
    pool.reserve("10.2.0.4")
    pool.reserve("10.9.9.9")  # outside the range: ignored
    got = [pool.allocate() for _ in range(4)]
    assert got == ["10.2.0.2", "10.2.0.3", "10.2.0.5", "10.2.0.6"]
    with pytest.raises(ResourceExhausted):
        pool.allocate()
    pool.release("10.2.0.4")
    assert pool.allocate() == "10.2.0.4"
    with pytest.raises(ResourceExhausted):
        pool.allocate()


# -- store.Store and NameIndex ----------------------------------------------------------------------


def test_store_finds_by_full_id_and_unique_prefix() -> None:
    store: Store[str] = Store("container")
    store.add("abc123", "first")
    store.add("abd456", "second")
    store.add("abc", "short")  # an id that is also a prefix of another: exact match wins
    assert store.find("abc123") == "first"
    assert store.find("abd") == "second"
    assert store.find("abc") == "short"
    assert store.find("abc1") == "first"
    assert store.find("zzz") is None
    assert store.find("") is None
    assert store.get("abd4") == "second"
    with pytest.raises(NotFound):
        store.get("nope")
    with pytest.raises(AlreadyExists):
        store.add("abc123", "again")
    store.delete("abc123")
    store.delete("abc123")
    assert store.find("abc1") is None and len(store) == 2


def test_store_ambiguous_prefix() -> None:
    store: Store[int] = Store("sandbox")
    store.add("ff01", 1)
    store.add("ff02", 2)
    with pytest.raises(InvalidArgument) as info:
        store.find("ff")
    assert "ambiguous" in info.value.message
    with pytest.raises(InvalidArgument):
        store.get("f")
    assert store.find("ff", strict=False) is None


def test_name_index_reserve_and_release() -> None:
    names = NameIndex()
    names.reserve("web_default_uid_0", "id-1")
    names.reserve("web_default_uid_0", "id-1")  # the holder may reserve again
    with pytest.raises(KubeharnessError) as info:  # UNKNOWN, in containerd's words
        names.reserve("web_default_uid_0", "id-2")
    assert info.value.message == (
        'failed to reserve sandbox name "web_default_uid_0": name "web_default_uid_0" is reserved for "id-1"'
    )
    assert names.holder("web_default_uid_0") == "id-1"
    names.release("web_default_uid_0")
    names.release("web_default_uid_0")
    assert names.holder("web_default_uid_0") is None
    names.reserve("web_default_uid_0", "id-2")
    assert names.holder("web_default_uid_0") == "id-2"


# -- persist.Journal --------------------------------------------------------------------------------


def test_journal_put_delete_and_reload(tmp_path: Path) -> None:
    path = tmp_path / "state" / "state.journal"
    j = Journal(path)
    assert j.load() == {}
    j.put("sandbox", "s1", {"n": 1})
    j.put("sandbox", "s2", {"n": 2})
    j.put("container", "c1", {"n": 3})
    j.put("sandbox", "s1", {"n": 10})  # a later put replaces
    j.delete("sandbox", "s2")
    j.delete("image", "never-there")
    j.close()
    assert Journal(path).load() == {"sandbox": {"s1": {"n": 10}}, "container": {"c1": {"n": 3}}}
    assert len(path.read_bytes().splitlines()) == 6


def test_journal_refuses_writes_before_load(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j")
    with pytest.raises(RuntimeError):
        j.put("k", "x", {})


def test_journal_torn_tail_is_dropped_and_truncated(tmp_path: Path) -> None:
    path = tmp_path / "state.journal"
    j = Journal(path)
    j.load()
    j.put("sandbox", "s1", {"n": 1})
    j.close()
    good = path.read_bytes()
    path.write_bytes(good + b'{"k":"sandbox","id":"s2","r":{"n"')
    j2 = Journal(path)
    assert j2.load() == {"sandbox": {"s1": {"n": 1}}}
    assert path.read_bytes() == good
    j2.put("sandbox", "s3", {"n": 3})  # lands on its own line after the truncation
    j2.close()
    assert Journal(path).load() == {"sandbox": {"s1": {"n": 1}, "s3": {"n": 3}}}


def test_journal_skips_an_unreadable_whole_line(tmp_path: Path) -> None:
    path = tmp_path / "state.journal"
    lines = [
        json.dumps({"k": "sandbox", "id": "s1", "r": {"n": 1}}),
        "this is not json",
        json.dumps({"id": "no-kind"}),
        json.dumps({"k": "sandbox", "id": "s2", "r": {"n": 2}}),
    ]
    path.write_text("\n".join(lines) + "\n")
    assert Journal(path).load() == {"sandbox": {"s1": {"n": 1}, "s2": {"n": 2}}}
    assert path.read_text() == "\n".join(lines) + "\n"  # whole lines are never cut


def test_journal_compaction_keeps_the_latest_values(tmp_path: Path) -> None:
    path = tmp_path / "state.journal"
    j = Journal(path, min_compact_lines=10)
    j.load()
    for i in range(20):
        j.put("container", "c1", {"gen": i})
        j.put("container", f"tmp{i}", {"gen": i})
        j.delete("container", f"tmp{i}")
    j.put("image", "i1", {"tag": "x"})
    assert j.wants_compaction(2)
    assert not Journal(tmp_path / "other", min_compact_lines=10).wants_compaction(0)
    j.compact([("container", "c1", {"gen": 19}), ("image", "i1", {"tag": "x"})])
    assert not j.wants_compaction(2)
    assert not (tmp_path / "state.journal.tmp").exists()
    assert len(path.read_bytes().splitlines()) == 2
    j.put("image", "i2", {"tag": "y"})  # appends continue on the compacted file
    j.close()
    assert Journal(path).load() == {"container": {"c1": {"gen": 19}}, "image": {"i1": {"tag": "x"}, "i2": {"tag": "y"}}}



def test_list_index_answers_reflect_every_change() -> None:
    from kubeharness.emulators.cri.listing import ListIndex
    from kubeharness.wire.cri import api_pb2 as api

    index: ListIndex[str] = ListIndex(lambda name: api.Image(id=name))

    def ids(raw: bytes) -> list[str]:  # the entries are framed as field 1, as ListImagesResponse.images is
        return [image.id for image in api.ListImagesResponse.FromString(raw).images]

    assert index.everything() == b""
    index.update("a", "one")
    index.update("b", "two")
    assert ids(index.everything()) == ["one", "two"]
    index.update("a", "uno")  # a changed entry keeps its place
    assert ids(index.everything()) == ["uno", "two"]
    index.drop("b")
    index.update("c", "three")
    assert ids(index.everything()) == ["uno", "three"]
    assert ids(index.of(["c", "a"])) == ["three", "uno"]
    assert [ids(batch) for batch in index.batches(["a", "c"], 1)] == [["uno"], ["three"]]
    index.drop("missing")
    assert len(index) == 2
