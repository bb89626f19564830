"""The API for users' test suites: CriEmulator, the blocking fault control, and the pytest fixtures.

The fixtures are tested as a user meets them: a test file of the user's own, run by a separate pytest
process that finds the plugin through the installed entry point.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
import pytest

from kubeharness.errors import InvalidArgument
from kubeharness.faults import PlanError
from kubeharness.testing import CriEmulator, EmulatorError
from kubeharness.testing.processes import is_gone, wait_gone
from kubeharness.wire.cri import api_pb2 as api
from kubeharness.wire.cri import api_pb2_grpc as api_grpc

pytest_plugins = ["pytester"]

USER_TESTS = '''
import grpc
import pytest

from kubeharness.wire.cri import api_pb2 as api
from kubeharness.wire.cri import api_pb2_grpc as api_grpc


def run_pod(endpoint, name):
    config = api.PodSandboxConfig(metadata=api.PodSandboxMetadata(name=name, namespace="default", uid=name))
    with grpc.insecure_channel(endpoint) as channel:
        try:
            api_grpc.RuntimeServiceStub(channel).RunPodSandbox(api.RunPodSandboxRequest(config=config), timeout=10)
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


def test_one_pod_cannot_get_a_sandbox(cri_emulator, cri_faults):
    cri_faults.load({"rules": [{"name": "no-web", "where": "cri", "method": "RunPodSandbox",
                                "match": {"pod_name": "web"},
                                "action": {"error": {"code": "UNAVAILABLE", "message": "try later"}}}]})
    assert run_pod(cri_emulator.endpoint, "web") == grpc.StatusCode.UNAVAILABLE
    assert run_pod(cri_emulator.endpoint, "db") == grpc.StatusCode.OK
    fired = cri_faults.fired()
    assert [(f["rule"], f["method"], f["pod"]) for f in fired] == [("no-web", "RunPodSandbox", "default/web")]


class TestAPlanFromTheStart:
    @pytest.fixture
    def cri_emulator_options(self):
        return {"plan": "rules:\\n  - {name: slow, where: cri, method: Version, action: {delay: {seconds: 0.1}}}\\n"}

    def test_it_is_in_force(self, cri_faults):
        assert [rule["name"] for rule in cri_faults.rules()] == ["slow"]
'''


def test_the_pytest_fixtures_make_one_pods_sandbox_fail(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_the_plugin_is_registered_by_the_installed_package() -> None:
    from importlib.metadata import entry_points

    plugins = {entry.name: entry.value for entry in entry_points(group="pytest11")}
    assert plugins.get("kubeharness") == "kubeharness.testing.pytest_plugin"


# --- the Python API itself ------------------------------------------------------------------------------------

NO_VERSION = """
rules:
  - name: no-version
    where: cri
    method: Version
    action: {error: {code: UNAVAILABLE, message: try later}}
"""


def version_code(endpoint: str) -> grpc.StatusCode:
    with grpc.insecure_channel(endpoint) as channel:
        try:
            api_grpc.RuntimeServiceStub(channel).Version(api.VersionRequest(), timeout=10)
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


def run_sandbox(endpoint: str, name: str) -> str:
    config = api.PodSandboxConfig(metadata=api.PodSandboxMetadata(name=name, namespace="default", uid=name))
    with grpc.insecure_channel(endpoint) as channel:
        stub = api_grpc.RuntimeServiceStub(channel)
        return stub.RunPodSandbox(api.RunPodSandboxRequest(config=config), timeout=10).pod_sandbox_id


def sandbox_ids(endpoint: str) -> list[str]:
    with grpc.insecure_channel(endpoint) as channel:
        listed = api_grpc.RuntimeServiceStub(channel).ListPodSandbox(api.ListPodSandboxRequest(), timeout=10)
    return [item.id for item in listed.items]


def test_the_blocking_control_lists_loads_replaces_clears_and_reads_the_fired_log(tmp_path: Path) -> None:
    with CriEmulator(tmp_path) as cri:
        control = cri.control
        assert control.rules() == []
        assert [rule["name"] for rule in control.load(NO_VERSION)] == ["no-version"]
        assert version_code(cri.endpoint) == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(InvalidArgument, match="already loaded"):
            control.load(NO_VERSION)
        replaced = control.replace({"rules": [{"name": "slow-list", "where": "cri", "method": "ListPodSandbox",
                                               "action": {"delay": {"seconds": 0.01}}}]})
        assert [rule["name"] for rule in replaced] == ["slow-list"]
        assert version_code(cri.endpoint) == grpc.StatusCode.OK
        assert [(f["rule"], f["method"]) for f in control.fired()] == [("no-version", "Version")]
        control.clear()
        assert control.rules() == []
        assert len(control.fired()) == 1  # the log stays
        assert [f["rule"] for f in cri.fired_log()] == ["no-version"]  # and is in fired.jsonl


def test_a_bad_plan_is_refused_naming_the_line_and_the_rules_stay(tmp_path: Path) -> None:
    with CriEmulator(tmp_path, plan=NO_VERSION) as cri:
        bad = "rules:\n  - name: x\n    where: cri\n    method: RunPodSandbx\n    action: hang\n"
        with pytest.raises(InvalidArgument, match=r"^more\.yaml: line 4: .*RunPodSandbx"):
            cri.control.replace(bad, source="more.yaml")
        # Python data is checked before it is sent: the error names the path in the data
        with pytest.raises(PlanError, match=r"rules\[0\]\.method"):
            cri.control.load({"rules": [{"name": "x", "where": "cri", "method": "RunPodSandbx", "action": "hang"}]})
        assert [rule["name"] for rule in cri.control.rules()] == ["no-version"]


def test_a_plan_that_does_not_load_fails_the_start_with_the_emulators_words(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("rules:\n  - {name: x, where: cri, method: Versio}\n")
    with pytest.raises(EmulatorError, match=r"exited with status 2 before it answered(.|\n)*plan.yaml: line 2"):
        CriEmulator(tmp_path / "cri", plan=plan).start()


def test_kill_and_restart_keep_the_state(tmp_path: Path) -> None:
    with CriEmulator(tmp_path) as cri:
        sid = run_sandbox(cri.endpoint, "kept")
        pid = cri.kill()
        assert is_gone(pid) and not cri.running
        assert version_code(cri.endpoint) == grpc.StatusCode.UNAVAILABLE
        cri.restart()
        assert cri.pid != pid
        assert sandbox_ids(cri.endpoint) == [sid]


def test_with_restart_on_crash_a_killed_emulator_comes_back_by_itself(tmp_path: Path) -> None:
    with CriEmulator(tmp_path, restart_on_crash=True) as cri:
        supervisor = cri.supervisor_pid
        assert supervisor is not None
        sid = run_sandbox(cri.endpoint, "kept")
        pid = cri.kill()
        cri.wait_ready()
        assert cri.pid != pid and cri.supervisor_pid == supervisor
        assert sandbox_ids(cri.endpoint) == [sid]
        last = cri.pid
    assert wait_gone(last, 10) and wait_gone(supervisor, 10)
    assert "was killed by SIGKILL" in cri.log_text()


def test_sockets_move_to_a_short_directory_when_the_root_is_too_deep(tmp_path: Path) -> None:
    root = tmp_path / ("deep" * 25)
    with CriEmulator(root) as cri:
        assert cri.socket.parent != root and len(str(cri.control_socket)) <= 107
        assert version_code(cri.endpoint) == grpc.StatusCode.OK
        assert (root / "state").is_dir()
    assert not cri.socket_dir.exists()


async def test_the_async_context_manager_and_control(tmp_path: Path) -> None:
    async with CriEmulator(tmp_path) as cri:
        await cri.async_control.load(NO_VERSION)
        async with grpc.aio.insecure_channel(cri.endpoint) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await api_grpc.RuntimeServiceStub(channel).Version(api.VersionRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert [f["rule"] for f in await cri.async_control.fired()] == ["no-version"]
    assert not cri.running


def test_the_command_line_is_kubeharness_cri_serve(tmp_path: Path) -> None:
    cri = CriEmulator(tmp_path, seed=9, restart_on_crash=True, max_restarts=3)
    command = cri.command()
    assert command[:5] == [sys.executable, "-m", "kubeharness.cli", "cri", "serve"]
    assert command[command.index("--fault-seed") + 1] == "9"
    assert command[-3:] == ["--restart-on-crash", "--max-restarts", "3"]
