"""Generated CNI invocations of the real ``kubeharness-cni`` executable, interleaved with valid lifecycles.

Every step execs the installed plugin as a runtime does (``CNI_*`` environment, configuration on stdin):
every command (ADD, DEL, CHECK, STATUS, GC, VERSION and unknown ones), a missing, empty, huge or odd
environment (``..`` in CNI_IFNAME, CNI_NETNS and CNI_CONTAINERID, bad CNI_ARGS) and stdin that is
malformed JSON, has wrong types, odd versions, nested junk, huge values, bad ranges and prevResult junk.

After every step: the plugin answered without a traceback; a failure is a spec error JSON (a spec code
or ours from 100, never our INTERNAL) on stdout with a non-zero exit status; the store changed only as
the command allows (a failed step leaves it byte for byte as it was, ADD adds exactly its attachment, DEL
removes only its own, GC only removes); no address is held twice; every address a valid ADD got is
stored until its DEL or a GC that did not list it; nothing is written outside the data directory.
Each example is a handful of invocations (about 40 ms each), so the module stays well under a minute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

PLUGIN = str(Path(sys.executable).with_name("kubeharness-cni"))
NETWORK = "fuzznet"
SUBNET = "10.44.0.0/28"  # 13 addresses to hand out: small enough to run out now and then
SPEC_CODES = frozenset({1, 2, 3, 4, 5, 6, 7, 11, 50, 51})
OUR_INTERNAL = 104
CONTAINERS = ("c1", "c2", "c3")
IFNAMES = ("eth0", "net1")

# --- what the environment may hold -------------------------------------------------------------------------

env_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40)
odd_value = st.one_of(
    st.sampled_from(["", "..", ".", "../..", "../../etc/passwd", "a/../b", "/", " ", "-", "é" * 8, "\t\n",
                     "c1;rm -rf /", "$(id)", "x" * 5000]),
    env_text)
commands = st.one_of(st.sampled_from(["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"]),
                     st.sampled_from(["add", "", "FOO", "ADD ", "DELETE", "GC\n"]))
cni_args = st.one_of(st.just(""), st.sampled_from(["IgnoreUnknown=1;K8S_POD_NAME=p", "novalue", ";;", "=x",
                                                   "a=b=c", "K8S_POD_NAME", ";" * 300, "a=" + "v" * 3000]),
                     env_text)
maybe = st.none()  # a variable left out


@st.composite
def environment(draw: st.DrawFn) -> dict[str, str | None]:
    return {
        "CNI_COMMAND": draw(st.one_of(maybe, commands)),
        "CNI_CONTAINERID": draw(st.one_of(maybe, st.sampled_from(CONTAINERS), odd_value)),
        "CNI_IFNAME": draw(st.one_of(maybe, st.sampled_from(IFNAMES), odd_value)),
        "CNI_NETNS": draw(st.one_of(maybe, st.just("/var/run/netns/fuzz"), odd_value)),
        "CNI_ARGS": draw(st.one_of(maybe, cni_args)),
        "CNI_PATH": draw(st.one_of(maybe, st.just("/usr/lib/cni"), odd_value)),
    }


# --- what stdin may hold -----------------------------------------------------------------------------------

json_junk = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
              st.floats(allow_nan=False, allow_infinity=False), env_text, st.just("x" * 20000)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(env_text, inner, max_size=4)),
    max_leaves=12)
odd_versions = st.sampled_from(["", "1.1", "9.9.9", "0.3.1", "1.1.0 ", "v1.1.0", "1.1.0.0", "0.1.0", "1.0.0",
                                "0.4.0", "1.1.0"])
bad_ranges = st.sampled_from([
    {"subnet": "10.0.0.0/33"}, {"subnet": "garbage"}, {"subnet": "10.0.0.0/31"}, {"subnet": "::/0"},
    {"subnet": 5}, {"subnet": "10.44.0.0/28", "rangeStart": "10.45.0.1"},
    {"subnet": "10.44.0.0/28", "rangeStart": "10.44.0.9", "rangeEnd": "10.44.0.3"},
    {"subnet": "10.44.0.0/28", "gateway": "1.2.3.4"}, {"subnet": "10.44.0.0/28", "gateway": 7},
    {"subnet": "10.44.0.0/28", "unknown": 1}, {"subnet": "fd00::/127"}, {}, "10.44.0.0/28", [],
])
prev_junk = st.one_of(
    st.sampled_from([[], "result", 5, {"ips": 5}, {"ips": [5]}, {"ips": [{"address": 7}]}, {"interfaces": "x"},
                     {"interfaces": 5}, {"interfaces": [None]}, {"dns": "x"}, {"dns": []}, {"routes": {}},
                     {"routes": [1]}, {"ips": "abc"}, {"cniVersion": "1.1.0", "ips": [{"interface": "x"}]}]),
    json_junk)
RAW_JUNK = [b"", b"{", b"\xff\xfe", b"[]", b"null", b"1e999999", b'"text"', b"{" * 5000, b"[" * 100000,
            b'{"cniVersion": "1.1.0", "name": "fuzznet", "name": "x"}', b"\x00" * 10, b" " * 10000]


def valid_conf(data_dir: str, version: str = "1.1.0") -> dict[str, Any]:
    return {"cniVersion": version, "name": NETWORK, "type": "kubeharness-cni",
            "ipam": {"ranges": [[{"subnet": SUBNET}]], "dataDir": data_dir}}


@st.composite
def junk_stdin(draw: st.DrawFn, data_dir: str) -> bytes:
    """A configuration that is wrong somewhere (or raw bytes that are no configuration at all)."""
    conf = valid_conf(data_dir, draw(st.sampled_from(["1.1.0", "1.0.0", "0.4.0"])))
    kind = draw(st.sampled_from(["raw", "version", "top", "drop", "ipam", "range", "prev", "nested", "huge",
                                 "valid_attachments"]))
    if kind == "raw":
        return draw(st.sampled_from(RAW_JUNK))
    if kind == "version":
        conf["cniVersion"] = draw(st.one_of(odd_versions, json_junk))
    elif kind == "top":
        key = draw(st.sampled_from(["name", "type", "args", "dns", "ipam", "capabilities", "runtimeConfig", "mtu",
                                    "mode", "faults", "unknownKey", "cni.dev/x", "disableGC"]))
        value = draw(json_junk)
        if key == "mode" and value == "real":
            value = "imaginary"  # real mode would touch the kernel
        if key == "ipam" and isinstance(value, dict):
            value["dataDir"] = data_dir  # never the default data directory outside the test's
        conf[key] = value
    elif kind == "drop":
        for key in draw(st.lists(st.sampled_from(["cniVersion", "name", "ipam"]), min_size=1, unique=True)):
            del conf[key]
    elif kind == "ipam":
        key = draw(st.sampled_from(["ranges", "subnet", "rangeStart", "routes", "dataDir", "type", "bogus"]))
        value = draw(json_junk)
        if key == "dataDir" and isinstance(value, str) and value.startswith("/"):
            value = value.lstrip("/")  # a relative path: refused, never a directory outside the test's
        conf["ipam"][key] = value
    elif kind == "range":
        conf["ipam"]["ranges"] = draw(st.sampled_from([[[draw(bad_ranges)]], [draw(bad_ranges)], [[]],
                                                      [[{"subnet": SUBNET}], [{"subnet": "10.44.0.0/24"}]]]))
    elif kind == "prev":
        conf["prevResult"] = draw(prev_junk)
    elif kind == "nested":
        deep: Any = draw(json_junk)
        for _ in range(draw(st.integers(min_value=1, max_value=300))):
            deep = {"a": deep} if draw(st.booleans()) else [deep]
        conf[draw(st.sampled_from(["args", "runtimeConfig", "dns", "prevResult", "capabilities"]))] = deep
    elif kind == "huge":
        conf[draw(st.sampled_from(["name", "type", "cniVersion"]))] = "n" * draw(st.sampled_from([300, 100_000]))
    else:
        conf["cni.dev/valid-attachments"] = draw(st.one_of(
            json_junk, st.lists(st.fixed_dictionaries({"containerID": json_junk, "ifname": json_junk}), max_size=3)))
    return json.dumps(conf).encode()


# --- running the plugin and judging its answer --------------------------------------------------------------


@dataclass
class Answer:
    rc: int
    stdout: str
    stderr: str
    doc: Any


def invoke(env: dict[str, str | None], stdin: bytes, cwd: str) -> Answer:
    full = {"PATH": os.environ.get("PATH", "")}
    full.update({k: v for k, v in env.items() if v is not None})
    done = subprocess.run([PLUGIN], input=stdin, env=full, capture_output=True, timeout=60, check=False, cwd=cwd)
    stdout = done.stdout.decode()
    stderr = done.stderr.decode(errors="replace")
    assert "Traceback" not in stderr, stderr[-3000:]
    try:
        doc = json.loads(stdout) if stdout.strip() else None
    except ValueError:
        raise AssertionError(f"stdout is not JSON: {stdout[:500]!r}") from None
    answer = Answer(done.returncode, stdout, stderr, doc)
    if answer.rc == 0:
        assert doc is None or (isinstance(doc, dict) and "code" not in doc), answer
    else:
        assert isinstance(doc, dict), answer  # an error is always a document on stdout
        code = doc.get("code")
        assert isinstance(code, int) and (code in SPEC_CODES or code >= 100) and code != OUR_INTERNAL, answer
        assert isinstance(doc.get("msg"), str) and doc["msg"], answer
    return answer


@dataclass
class World:
    """The test's directories and what the valid steps expect to be stored."""

    root: str
    expected: dict[str, list[str]] = field(default_factory=dict)  # attachment key -> addresses ADD returned
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # attachment key -> ADD result

    @property
    def data_dir(self) -> str:
        return os.path.join(self.root, "data")

    @property
    def cwd(self) -> str:
        return os.path.join(self.root, "cwd")

    def state_bytes(self) -> bytes | None:
        try:
            return Path(self.data_dir, NETWORK, "state.json").read_bytes()
        except FileNotFoundError:
            return None

    def attachments(self) -> dict[str, Any]:
        data = self.state_bytes()
        if data is None:
            return {}
        state = json.loads(data)
        assert state["version"] == 1, state
        result: dict[str, Any] = state["attachments"]
        return result


def key_of(env: dict[str, str | None]) -> str:
    return f"{env.get('CNI_CONTAINERID')}/{env.get('CNI_IFNAME')}"


def step(world: World, env: dict[str, str | None], stdin: bytes) -> Answer:
    """One invocation, and every invariant about what it may have changed."""
    before_bytes, before = world.state_bytes(), world.attachments()
    answer = invoke(env, stdin, world.cwd)
    after = world.attachments()
    command = env.get("CNI_COMMAND")
    if answer.rc != 0:
        assert world.state_bytes() == before_bytes, ("a failed step changed the store", answer)
    elif command == "ADD":
        key = key_of(env)
        assert set(after) == set(before) | {key} and key not in before, (before, after, answer)
        assert {k: after[k] for k in before} == before
        own = [ip["address"] for ip in answer.doc["ips"]][-len(after[key]["ips"]):]
        assert own == after[key]["ips"], (answer.doc, after[key])
    elif command == "DEL":
        assert after == {k: v for k, v in before.items() if k != key_of(env)}, (before, after)
    elif command == "GC":
        assert set(after) <= set(before) and all(after[k] == before[k] for k in after), (before, after)
    else:
        assert after == before, (command, before, after)
    held = [ip.split("/")[0] for att in after.values() for ip in att["ips"]]
    assert len(held) == len(set(held)), ("an address is allocated twice", after)
    for key, ips in world.expected.items():
        if key in after:
            assert after[key]["ips"] == ips, (key, after[key], ips)
    world.expected = {k: v for k, v in world.expected.items() if k in after}
    assert os.listdir(world.cwd) == [], os.listdir(world.cwd)
    assert sorted(os.listdir(world.root)) == (["cwd", "data"] if os.path.exists(world.data_dir) else ["cwd"])
    if os.path.exists(world.data_dir):
        assert os.listdir(world.data_dir) == [NETWORK], os.listdir(world.data_dir)
        assert set(os.listdir(os.path.join(world.data_dir, NETWORK))) <= {"state.json", "lock"}
    return answer


# --- the steps ---------------------------------------------------------------------------------------------

Step = tuple[str, Any]
valid_steps = st.tuples(st.sampled_from(["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"]),
                        st.tuples(st.sampled_from(CONTAINERS), st.sampled_from(IFNAMES)))


def run_valid(world: World, command: str, container: str, ifname: str) -> None:
    env: dict[str, str | None] = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_IFNAME": ifname,
                                  "CNI_NETNS": "/var/run/netns/fuzz", "CNI_PATH": "/usr/lib/cni"}
    conf = valid_conf(world.data_dir)
    key = f"{container}/{ifname}"
    if command in ("STATUS", "GC", "VERSION"):
        env = {"CNI_COMMAND": command, "CNI_PATH": "/usr/lib/cni"}
    if command == "GC":
        # keep one container's attachments (by container id alone) and the attachment named in the step
        conf["cni.dev/valid-attachments"] = [{"containerID": container, "ifname": ifname}, {"containerID": "c1"}]
    if command == "CHECK" and key in world.results:
        conf["prevResult"] = world.results[key]
    answer = step(world, env, json.dumps(conf).encode())
    if command == "ADD":
        if key in world.expected:
            assert answer.rc != 0 and answer.doc["code"] == 100, answer  # the spec: no second ADD without a DEL
        elif len(world.attachments()) == 13 and answer.rc != 0:
            assert answer.doc["code"] == 102, answer  # the range is used up
        else:
            assert answer.rc == 0, answer
            world.expected[key] = [ip["address"] for ip in answer.doc["ips"]]
            world.results[key] = answer.doc
    elif command == "DEL":
        assert answer.rc == 0, answer  # DEL is repeatable
        world.expected.pop(key, None)
        world.results.pop(key, None)
    elif command == "CHECK":
        assert answer.rc == 0 if key in world.expected else answer.rc != 0, answer
    elif command == "GC":
        assert answer.rc == 0, answer
        kept = {k for k in world.attachments()}
        assert kept == {k for k in world.expected if k == key or k.startswith("c1/")}, (kept, world.expected)
    else:
        assert answer.rc == 0, answer
        if command == "VERSION":
            assert "1.1.0" in answer.doc["supportedVersions"], answer


@st.composite
def steps(draw: st.DrawFn) -> list[Step]:
    out: list[Step] = []
    for _ in range(draw(st.integers(min_value=2, max_value=4))):
        if draw(st.booleans()):
            out.append(("valid", draw(valid_steps)))
        else:
            out.append(("junk", (draw(environment()), draw(st.sampled_from(["valid", "junk", "raw"])),
                                 draw(junk_stdin("{DATA}")))))
    return out


def run_steps(plan: list[Step]) -> None:
    with tempfile.TemporaryDirectory(prefix="khfuzzcni-") as root:
        world = World(root)
        os.mkdir(world.cwd)
        for kind, what in plan:
            if kind == "valid":
                command, (container, ifname) = what
                run_valid(world, command, container, ifname)
                continue
            env, which, junk = what
            if which == "valid":
                stdin = json.dumps(valid_conf(world.data_dir)).encode()
            else:
                stdin = junk.replace(b"{DATA}", world.data_dir.encode())
            step(world, env, stdin)


JUNK_ENV_VALID_CONF = [
    ("junk", ({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "..", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"}, "valid", b"")),
    ("junk", ({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "..", "CNI_NETNS": "../.."}, "valid",
              b"")),
    ("junk", ({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "../../etc",
               "CNI_ARGS": "novalue"}, "valid", b"")),
]


@example(plan=[("valid", ("ADD", ("c1", "eth0"))), *JUNK_ENV_VALID_CONF, ("valid", ("DEL", ("c1", "eth0")))])
@example(plan=[("valid", ("ADD", ("c2", "eth0"))),
               ("junk", ({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c3", "CNI_IFNAME": "eth0", "CNI_NETNS": "/n"},
                         "junk", b"[" * 100000)),
               ("valid", ("GC", ("c3", "net1")))])
@given(plan=steps())
def test_generated_invocations_keep_the_plugin_and_its_store_sound(plan: list[Step]) -> None:
    run_steps(plan)


def test_the_invariants_can_fail() -> None:
    """The judge is not blind: a store with an address held twice is caught."""
    with tempfile.TemporaryDirectory(prefix="khfuzzcni-") as root:
        world = World(root)
        os.mkdir(world.cwd)
        run_valid(world, "ADD", "c1", "eth0")
        path = Path(world.data_dir, NETWORK, "state.json")
        state = json.loads(path.read_text())
        state["attachments"]["c2/eth0"] = {**state["attachments"]["c1/eth0"], "containerID": "c2"}
        path.write_text(json.dumps(state))
        try:
            step(world, {"CNI_COMMAND": "VERSION"}, b"")
        except AssertionError as err:
            assert "allocated twice" in str(err)
        else:
            raise AssertionError("a doubly allocated address went unnoticed")
