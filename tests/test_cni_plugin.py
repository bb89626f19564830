"""The ``kubeharness-cni`` executable against the CNI spec, run exactly as a runtime runs a plugin.

Every test executes the installed console script as a subprocess with the ``CNI_*`` environment and the
configuration on stdin, and reads the result or error JSON from stdout. Where the spec leaves room the
reference plugins from Debian (``/usr/lib/cni``) are run beside it with the same input.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

PLUGIN = str(Path(sys.executable).with_name("kubeharness-cni"))
REFERENCE = Path("/usr/lib/cni")
needs_reference = pytest.mark.skipif(not (REFERENCE / "host-local").exists(), reason="containernetworking-plugins")


class Answer:
    """What one invocation printed and returned."""

    def __init__(self, done: subprocess.CompletedProcess[bytes]) -> None:
        self.rc = done.returncode
        self.stdout = done.stdout.decode()
        self.stderr = done.stderr.decode()
        self.doc: Any = json.loads(self.stdout) if self.stdout.strip() else None

    def __repr__(self) -> str:
        return f"Answer(rc={self.rc}, stdout={self.stdout!r}, stderr={self.stderr[-500:]!r})"


def invoke(command: str | None, conf: dict[str, Any] | bytes | None, *, cid: str | None = "c1",
           ifname: str | None = "eth0", netns: str | None = "/var/run/netns/emulated", args: str = "",
           plugin: str = PLUGIN, timeout: float = 30, **extra: str) -> Answer:
    """Run a plugin as a runtime does: CNI_* variables, the configuration on stdin."""
    env = {"PATH": os.environ.get("PATH", ""), "CNI_PATH": str(REFERENCE)}
    for key, value in (("CNI_COMMAND", command), ("CNI_CONTAINERID", cid), ("CNI_IFNAME", ifname),
                       ("CNI_NETNS", netns)):
        if value is not None:
            env[key] = value
    if args:
        env["CNI_ARGS"] = args
    env.update(extra)
    data = conf if isinstance(conf, bytes) else b"" if conf is None else json.dumps(conf).encode()
    return Answer(subprocess.run([plugin], input=data, env=env, capture_output=True, timeout=timeout, check=False))


def netconf(data_dir: Path, version: str = "1.1.0", name: str = "testnet", **extra: Any) -> dict[str, Any]:
    ipam: dict[str, Any] = {"ranges": [[{"subnet": "10.30.0.0/24"}]], "dataDir": str(data_dir)}
    ipam.update(extra.pop("ipam", {}))
    return {"cniVersion": version, "name": name, "type": "kubeharness-cni", "ipam": ipam, **extra}


def host_local(conf: dict[str, Any]) -> dict[str, Any]:
    """The same configuration for the reference host-local plugin (run directly as a plugin)."""
    ipam = {**conf["ipam"], "type": "host-local", "dataDir": conf["ipam"]["dataDir"] + "-host-local"}
    return {**{k: v for k, v in conf.items() if k not in ("mode", "faults")}, "type": "host-local", "ipam": ipam}


def state(conf: dict[str, Any]) -> dict[str, Any]:
    path = Path(conf["ipam"]["dataDir"]) / conf["name"] / "state.json"
    return json.loads(path.read_text()) if path.exists() else {"attachments": {}}


def addresses(answer: Answer) -> list[str]:
    assert answer.rc == 0, answer
    return [ip["address"] for ip in answer.doc["ips"]]


def assert_error(answer: Answer, code: int, version: str = "1.1.0") -> dict[str, Any]:
    assert answer.rc != 0, answer
    doc: dict[str, Any] = answer.doc
    assert doc["code"] == code, answer
    assert doc["cniVersion"] == version and isinstance(doc["msg"], str) and doc["msg"]
    assert set(doc) <= {"cniVersion", "code", "msg", "details"}
    return doc


# --- VERSION and result shapes ---------------------------------------------------------------------------


def test_version_lists_the_supported_versions() -> None:
    answer = invoke("VERSION", {"cniVersion": "1.0.0"}, cid=None, ifname=None, netns=None)
    assert (answer.rc, answer.doc) == (0, {"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})
    assert invoke("VERSION", None, cid=None, ifname=None, netns=None).doc == answer.doc  # no stdin at all


@needs_reference
@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_add_result_has_the_shape_of_the_requested_version(tmp_path: Path, version: str) -> None:
    conf = netconf(tmp_path, version if version != "1.1.0" else "1.1.0")
    ours = invoke("ADD", conf)
    assert ours.rc == 0, ours
    assert ours.doc["cniVersion"] == version
    assert ours.doc["interfaces"] == [{"name": "eth0", "mac": ours.doc["interfaces"][0]["mac"],
                                       "sandbox": "/var/run/netns/emulated"}]
    assert ours.doc["ips"][0]["address"] == "10.30.0.2/24" and ours.doc["ips"][0]["gateway"] == "10.30.0.1"
    if version != "1.1.0":  # host-local 1.1.1 speaks up to 1.0.0
        theirs = invoke("ADD", host_local(conf), plugin=str(REFERENCE / "host-local"))
        assert theirs.rc == 0, theirs
        assert set(ours.doc["ips"][0]) == set(theirs.doc["ips"][0]) | {"interface"}
        assert ours.doc["ips"][0]["address"] == theirs.doc["ips"][0]["address"]
    assert ("version" in ours.doc["ips"][0]) == (version == "0.4.0")


@needs_reference
def test_allocation_order_release_and_exhaustion_follow_host_local(tmp_path: Path) -> None:
    conf = netconf(tmp_path, "1.0.0", ipam={"ranges": [[{"subnet": "10.31.0.0/24", "rangeStart": "10.31.0.10",
                                                         "rangeEnd": "10.31.0.12"}]]})
    reference = host_local(conf)
    steps = [("ADD", "a"), ("ADD", "b"), ("DEL", "a"), ("ADD", "c"), ("ADD", "d"), ("ADD", "e")]
    for command, cid in steps:
        ours = invoke(command, conf, cid=cid)
        theirs = invoke(command, reference, cid=cid, plugin=str(REFERENCE / "host-local"))
        assert (ours.rc == 0) == (theirs.rc == 0), (command, cid, ours, theirs)
        if command == "ADD" and ours.rc == 0:
            assert addresses(ours) == addresses(theirs), (cid, ours, theirs)
    assert_error(invoke("ADD", conf, cid="e"), 102, "1.0.0")  # the range is full: a, c, d hold it


def test_add_twice_for_one_attachment_fails_and_another_interface_succeeds(tmp_path: Path) -> None:
    conf = netconf(tmp_path)
    first = addresses(invoke("ADD", conf))
    assert_error(invoke("ADD", conf), 100)
    second = addresses(invoke("ADD", conf, ifname="net1"))
    assert first != second
    assert sorted(state(conf)["attachments"]) == ["c1/eth0", "c1/net1"]


def test_del_releases_and_is_repeatable_and_unknown_containers_succeed(tmp_path: Path) -> None:
    conf = netconf(tmp_path)
    invoke("ADD", conf)
    for _ in range(2):
        answer = invoke("DEL", conf, netns=None)  # CNI_NETNS is optional for DEL
        assert (answer.rc, answer.stdout) == (0, ""), answer
    assert state(conf)["attachments"] == {}
    assert invoke("DEL", conf, cid="never-added").rc == 0


# --- errors ----------------------------------------------------------------------------------------------

BAD_CASES: list[tuple[str, dict[str, Any], int]] = [
    ("no CNI_COMMAND", {"command": None}, 4),
    ("unknown CNI_COMMAND", {"command": "FROB"}, 4),
    ("no CNI_CONTAINERID", {"cid": None}, 4),
    ("no CNI_NETNS on ADD", {"netns": None}, 4),
    ("no CNI_IFNAME", {"ifname": None}, 4),
    ("bad container id", {"cid": "a b"}, 4),
    ("interface name too long", {"ifname": "a-very-long-ifname"}, 4),
    ("interface name with a slash", {"ifname": "eth/0"}, 4),
    ("bad CNI_ARGS", {"args": "K8S_POD_NAME"}, 4),
    ("malformed stdin", {"conf": b"{nope"}, 6),
    ("stdin not an object", {"conf": b"[1, 2]"}, 6),
    ("unsupported version", {"patch": {"cniVersion": "9.9.9"}}, 1),
    ("version 0.3.1", {"patch": {"cniVersion": "0.3.1"}}, 1),
    ("no cniVersion", {"patch": {"cniVersion": None}}, 7),
    ("no name", {"patch": {"name": None}}, 7),
    ("bad name", {"patch": {"name": "-x"}}, 7),
    ("unknown field", {"patch": {"bridge": "cni0"}}, 2),
    ("unknown ipam field", {"patch": {"ipam": {"subnets": []}}}, 2),
    ("no ranges", {"patch": {"ipam": {"ranges": []}}}, 7),
    ("bad subnet", {"patch": {"ipam": {"ranges": [[{"subnet": "10.0.0.0/99"}]]}}}, 7),
    ("range outside subnet", {"patch": {"ipam": {"ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.2.0.1"}]]}}},
     7),
    ("bad mode", {"patch": {"mode": "virtual"}}, 7),
]


@pytest.mark.parametrize(("case", "change", "code"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input_is_an_error_result_with_the_spec_code(tmp_path: Path, case: str, change: dict[str, Any],
                                                         code: int) -> None:
    conf: dict[str, Any] = netconf(tmp_path)
    for key, value in change.get("patch", {}).items():
        if key == "ipam":
            conf["ipam"] = {"dataDir": str(tmp_path), **value}
        elif value is None:
            del conf[key]
        else:
            conf[key] = value
    kwargs = {k: v for k, v in change.items() if k in ("cid", "ifname", "netns", "args")}
    answer = invoke(change.get("command", "ADD"), change.get("conf", conf), **kwargs)
    version = str(conf["cniVersion"]) if conf.get("cniVersion") in ("0.4.0", "1.0.0", "1.1.0") else "1.1.0"
    assert_error(answer, code, version if "conf" not in change else "1.1.0")
    assert state(netconf(tmp_path))["attachments"] == {}


@needs_reference
@pytest.mark.parametrize(("case", "code"), [("no CNI_CONTAINERID", 4), ("malformed stdin", 6),
                                            ("unsupported version", 1), ("no name", 7)])
def test_the_reference_plugin_answers_the_same_codes(tmp_path: Path, case: str, code: int) -> None:
    change = next(c[1] for c in BAD_CASES if c[0] == case)
    conf = host_local(netconf(tmp_path, "1.0.0"))
    for key, value in change.get("patch", {}).items():
        conf[key] = value
        if value is None:
            del conf[key]
    kwargs = {k: v for k, v in change.items() if k in ("cid",)}
    theirs = invoke("ADD", change.get("conf", conf), plugin=str(REFERENCE / "host-local"), **kwargs)
    assert (theirs.rc != 0, theirs.doc["code"]) == (True, code)


# --- CHECK, STATUS, GC -----------------------------------------------------------------------------------


def test_check_compares_with_prev_result(tmp_path: Path) -> None:
    conf = netconf(tmp_path)
    added = invoke("ADD", conf)
    answer = invoke("CHECK", {**conf, "prevResult": added.doc})
    assert (answer.rc, answer.stdout) == (0, ""), answer
    assert_error(invoke("CHECK", {**conf, "prevResult": added.doc}, cid="unknown"), 3)
    assert_error(invoke("CHECK", conf), 7)  # no prevResult
    assert_error(invoke("CHECK", {**conf, "prevResult": {**added.doc, "ips": []}}), 101)


def test_status_reports_availability(tmp_path: Path) -> None:
    conf = netconf(tmp_path, ipam={"ranges": [[{"subnet": "10.32.0.0/30"}]]})  # one address: .2
    answer = invoke("STATUS", conf, cid=None, ifname=None, netns=None)
    assert (answer.rc, answer.stdout) == (0, ""), answer
    invoke("ADD", conf)
    assert_error(invoke("STATUS", conf, cid=None, ifname=None, netns=None), 50)
    (tmp_path / "file").write_text("")
    broken = netconf(tmp_path / "file")
    assert_error(invoke("STATUS", broken, cid=None, ifname=None, netns=None), 50)
    assert_error(invoke("STATUS", netconf(tmp_path, "1.0.0"), cid=None, ifname=None, netns=None), 1, "1.0.0")


def test_gc_releases_what_is_not_valid(tmp_path: Path) -> None:
    conf = netconf(tmp_path)
    for cid in ("keep", "drop1", "drop2"):
        invoke("ADD", conf, cid=cid)
    invoke("ADD", conf, cid="keep", ifname="net1")
    valid = [{"containerID": "keep", "ifname": "eth0"}, {"containerID": "keep", "ifname": "net1"}]
    answer = invoke("GC", {**conf, "cni.dev/valid-attachments": valid}, cid=None, ifname=None, netns=None)
    assert (answer.rc, answer.stdout) == (0, ""), answer
    assert sorted(state(conf)["attachments"]) == ["keep/eth0", "keep/net1"]
    assert_error(invoke("GC", {**conf, "cni.dev/valid-attachments": {"keep": "eth0"}}, cid=None, ifname=None,
                        netns=None), 7)  # not a list
    assert sorted(state(conf)["attachments"]) == ["keep/eth0", "keep/net1"]
    no_path = invoke("GC", {**conf, "cni.dev/valid-attachments": []}, cid=None, ifname=None, netns=None,
                     CNI_PATH="")
    assert_error(no_path, 4)


def test_gc_without_valid_attachments_releases_everything(tmp_path: Path) -> None:
    """libcni sends no cni.dev/valid-attachments when the runtime has no attachments: an empty list (issue 18)."""
    conf = netconf(tmp_path)
    for cid in ("a", "b"):
        invoke("ADD", conf, cid=cid)
    answer = invoke("GC", conf, cid=None, ifname=None, netns=None)
    assert (answer.rc, answer.stdout) == (0, ""), answer
    assert state(conf)["attachments"] == {}
    assert addresses(invoke("ADD", conf, cid="c")) == ["10.30.0.4/24"]  # allocation goes on after the last one


# --- configuration variants, chaining, loopback ----------------------------------------------------------


def test_range_sets_runtime_ip_ranges_and_the_single_subnet_form(tmp_path: Path) -> None:
    dual = netconf(tmp_path, ipam={"ranges": [[{"subnet": "10.33.0.0/24", "gateway": "10.33.0.254"}],
                                              [{"subnet": "fd00:33::/64"}]]})
    answer = invoke("ADD", dual)
    assert addresses(answer) == ["10.33.0.1/24", "fd00:33::2/64"]
    assert [ip["gateway"] for ip in answer.doc["ips"]] == ["10.33.0.254", "fd00:33::1"]
    runtime = netconf(tmp_path, name="rt", capabilities={"ipRanges": True},
                      runtimeConfig={"ipRanges": [[{"subnet": "10.34.0.0/24"}]]})
    assert addresses(invoke("ADD", runtime)) == ["10.34.0.2/24"]
    legacy = netconf(tmp_path, name="legacy", ipam={"ranges": None})
    legacy["ipam"] = {"subnet": "10.35.0.0/16", "rangeStart": "10.35.1.1", "dataDir": str(tmp_path),
                      "routes": [{"dst": "0.0.0.0/0"}]}
    answer = invoke("ADD", legacy)
    assert addresses(answer) == ["10.35.1.1/16"]
    assert answer.doc["routes"] == [{"dst": "0.0.0.0/0"}]


@needs_reference
def test_chained_after_another_plugin_extends_its_result(tmp_path: Path) -> None:
    first = netconf(tmp_path, "1.0.0", ipam={"ranges": [[{"subnet": "10.36.0.0/24"}]]})
    prev = invoke("ADD", host_local(first), plugin=str(REFERENCE / "host-local"))
    assert prev.rc == 0, prev
    bridge_like = {**prev.doc, "interfaces": [{"name": "cni0", "mac": "00:11:22:33:44:55"}],
                   "dns": {"nameservers": ["10.36.0.1"]}}
    conf = netconf(tmp_path, "1.0.0", prevResult=bridge_like, dns={"nameservers": ["9.9.9.9"], "search": ["x"]})
    answer = invoke("ADD", conf)
    assert answer.rc == 0, answer
    assert [ip["address"] for ip in answer.doc["ips"]] == ["10.36.0.2/24", "10.30.0.2/24"]
    assert answer.doc["interfaces"][0] == {"name": "cni0", "mac": "00:11:22:33:44:55"}
    assert answer.doc["ips"][1]["interface"] == 1 and answer.doc["interfaces"][1]["name"] == "eth0"
    assert answer.doc["dns"] == {"nameservers": ["10.36.0.1"], "search": ["x"]}


def test_loopback_ranges_make_emulated_pods_reachable(tmp_path: Path) -> None:
    conf = netconf(tmp_path, ipam={"ranges": [[{"subnet": "127.81.0.0/16"}]]})
    address = addresses(invoke("ADD", conf, cid="pod", netns="any string at all"))[0].split("/")[0]
    with socket.socket() as server:
        server.bind((address, 0))
        server.listen()
        with socket.create_connection((address, server.getsockname()[1]), timeout=5) as client:
            peer, _ = server.accept()
            with peer:
                assert client.getsockname()[0] == "127.0.0.1" or client.getpeername()[0] == address


# --- many at once ----------------------------------------------------------------------------------------


def test_a_hundred_parallel_adds_get_distinct_addresses_and_dels_free_them(tmp_path: Path) -> None:
    conf = netconf(tmp_path, ipam={"ranges": [[{"subnet": "10.37.0.0/24"}]]})
    with ThreadPoolExecutor(max_workers=32) as pool:
        added = list(pool.map(lambda i: invoke("ADD", conf, cid=f"pod{i}"), range(100)))
        assert len({addresses(a)[0] for a in added}) == 100
        assert len(state(conf)["attachments"]) == 100
        deleted = list(pool.map(lambda i: invoke("DEL", conf, cid=f"pod{i}"), range(100)))
    assert all(d.rc == 0 for d in deleted), [d for d in deleted if d.rc]
    assert state(conf)["attachments"] == {}


@needs_reference
def test_bench_cni_prints_every_plugin(capsys: pytest.CaptureFixture[str]) -> None:
    from kubeharness.cli import main

    assert main(["bench", "cni", "--count", "2", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    rows = {line[:30].rstrip(): line for line in out.splitlines()}
    for command in ("VERSION", "ADD", "DEL"):
        assert f"{command:<8} host-local" in rows, out
        for plugin in ("kubeharness-cni", "kubeharness-cni fast"):  # the Python entry point, the shim's fast path
            assert rows[f"{command:<8} {plugin}"].endswith("x"), out
    assert "ADD p50 of kubeharness-cni fast (the C shim + fork server)" in out
    assert "DEL p50 of kubeharness-cni (the Python entry point)" in out and "floor of a Python plugin:" in out


def test_deep_or_misshapen_input_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    """Regressions found with tests/test_fuzz_cni.py: JSON nested 100,000 deep made json raise RecursionError
    (our INTERNAL with a traceback); a prevResult whose lists hold no objects crashed ADD's chaining."""
    conf = netconf(tmp_path)
    deep = invoke("ADD", b"[" * 100_000 + b"]" * 100_000)
    assert_error(deep, 6)
    assert "Traceback" not in deep.stderr
    misshapen: list[dict[str, Any]] = [{"ips": [5]}, {"interfaces": "x"}, {"ips": [{"address": 7}]}, {"dns": []},
                                       {"routes": {}}]
    for prev in misshapen:
        answer = invoke("ADD", {**conf, "prevResult": prev})
        assert_error(answer, 7)
        assert "Traceback" not in answer.stderr, answer
    assert state(conf)["attachments"] == {}
