"""Ordinary pod manifests on the emulator: busybox one-liners run by the shell subset, through the CRI socket.

Each test is a pattern people already have in their manifests (a liveness probe on a file, a crash
loop, a log loop, a shared emptyDir, a TERM trap, a typo in a command), run exactly as the kubelet
would run it: CreateContainer with command and args, ExecSync for probes, StopContainer with the grace
period, and the log file read back in the CRI format.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from kubeharness.emulators.cri.logs import format_timestamp
from kubeharness.wire.cri import api_pb2 as api
from tests.conftest import CriHarness

NS = 1_000_000_000
BUSYBOX = "busybox:1.36"


async def start_busybox(
    cri: CriHarness,
    script: str | None = None,
    *,
    command: list[str] | None = None,
    name: str = "pod",
    container: str = "c",
    sandbox: tuple[str, api.PodSandboxConfig] | None = None,
    envs: dict[str, str] | None = None,
    mounts: list[api.Mount] | None = None,
    working_dir: str = "",
    run_as_user: int | None = None,
    attempt: int = 0,
    pid_namespace: api.NamespaceMode = api.CONTAINER,
) -> tuple[str, str, api.PodSandboxConfig]:
    """(sandbox id, container id, sandbox config) of a started busybox container running ``sh -c script``."""
    if sandbox is None:
        cfg = cri.sandbox_config(name=name)
        cfg.hostname = name
        cfg.dns_config.servers.append("10.96.0.10")
        cfg.dns_config.searches.extend(["default.svc.cluster.local", "svc.cluster.local"])
        cfg.dns_config.options.append("ndots:5")
        sid = await cri.run_sandbox(cfg)
        await cri.pull(BUSYBOX)
    else:
        sid, cfg = sandbox
    config = api.ContainerConfig(
        metadata=api.ContainerMetadata(name=container, attempt=attempt),
        image=api.ImageSpec(image=BUSYBOX),
        command=command if command is not None else ["sh", "-c", script or ""],
        envs=[api.KeyValue(key=k, value=v) for k, v in (envs or {}).items()],
        mounts=mounts or [],
        working_dir=working_dir,
        log_path=f"{container}/{attempt}.log",
    )
    config.linux.security_context.namespace_options.pid = pid_namespace
    if run_as_user is not None:
        config.linux.security_context.run_as_user.value = run_as_user
    request = api.CreateContainerRequest(pod_sandbox_id=sid, config=config, sandbox_config=cfg)
    cid = (await cri.runtime.CreateContainer(request)).container_id
    await cri.start_container(cid)
    return sid, cid, cfg


def log_entries(status: api.ContainerStatus) -> list[tuple[str, str, str, str]]:
    """(timestamp, stream, tag, text) of every CRI log line of the container."""
    out = []
    for line in Path(status.log_path).read_text().splitlines():
        stamp, stream, tag, text = line.split(" ", 3) if line.count(" ") >= 3 else (*line.split(" "), "")
        out.append((stamp, stream, tag, text))
    return out


async def stop(cri: CriHarness, cid: str, grace_s: int) -> None:
    """StopContainer, moving the virtual clock only once the emulator has sent SIGTERM (so times are exact)."""
    call = asyncio.ensure_future(
        cri.runtime.StopContainer(api.StopContainerRequest(container_id=cid, timeout=grace_s))
    )
    assert cri.server is not None
    container = cri.server.runtime.containers.get(cid)  # read only to synchronise with the server
    for _ in range(5000):
        if call.done() or container.term_ns:
            break
        await asyncio.sleep(0.001)
    await cri.drive(call)


async def exec_sync(cri: CriHarness, cid: str, cmd: list[str], timeout_s: int = 0) -> api.ExecSyncResponse:
    return await cri.runtime.ExecSync(api.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=timeout_s))


async def test_echo_then_sleep_logs_and_keeps_running(cri: CriHarness) -> None:
    _, cid, _ = await start_busybox(cri, "echo hello; sleep 3600")
    started = (await cri.status(cid)).started_at
    await cri.clock.advance(60)
    status = await cri.status(cid)
    assert status.state == api.CONTAINER_RUNNING
    assert log_entries(status) == [(format_timestamp(started), "stdout", "F", "hello")]
    await cri.clock.advance(3540)
    status = await cri.status(cid)
    assert (status.state, status.exit_code, status.reason) == (api.CONTAINER_EXITED, 0, "Completed")
    assert status.finished_at == started + 3600 * NS


async def test_the_liveness_probe_pattern_fails_when_the_file_is_gone(cri: CriHarness) -> None:
    _, cid, _ = await start_busybox(cri, "touch /tmp/healthy; sleep 30; rm -f /tmp/healthy; sleep 600")
    await cri.clock.advance(10)
    probe = await exec_sync(cri, cid, ["cat", "/tmp/healthy"], timeout_s=1)
    assert (probe.exit_code, probe.stdout, probe.stderr) == (0, b"", b"")
    await cri.clock.advance(25)
    probe = await exec_sync(cri, cid, ["cat", "/tmp/healthy"], timeout_s=1)
    assert probe.exit_code == 1
    assert probe.stderr == b"cat: can't open '/tmp/healthy': No such file or directory\n"
    assert (await cri.status(cid)).state == api.CONTAINER_RUNNING


async def test_exit_1_is_a_crash_and_a_recreated_attempt_crashes_again(cri: CriHarness) -> None:
    sid, cid, cfg = await start_busybox(cri, "echo starting; exit 1")
    status = await cri.status(cid)
    assert (status.state, status.exit_code, status.reason) == (api.CONTAINER_EXITED, 1, "Error")
    assert status.finished_at == status.started_at
    assert [text for _, _, _, text in log_entries(status)] == ["starting"]
    await cri.clock.advance(10)  # the kubelet's back-off, then attempt 1 of the same container
    _, again, _ = await start_busybox(cri, "echo starting; exit 1", sandbox=(sid, cfg), attempt=1)
    status = await cri.status(again)
    assert (status.state, status.exit_code, status.metadata.attempt) == (api.CONTAINER_EXITED, 1, 1)


async def test_a_log_loop_writes_one_stamped_line_per_second(cri: CriHarness) -> None:
    _, cid, _ = await start_busybox(cri, "i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done")
    started = (await cri.status(cid)).started_at
    await cri.clock.advance(5)
    entries = log_entries(await cri.status(cid))
    assert entries == [(format_timestamp(started + n * NS), "stdout", "F", f"tick {n + 1}") for n in range(6)]


async def test_a_date_loop_prints_the_clock(cri: CriHarness) -> None:
    _, cid, _ = await start_busybox(cri, "while true; do echo $(date -u +%H:%M:%S); sleep 1; done")
    started = (await cri.status(cid)).started_at
    await cri.clock.advance(2)
    texts = [text for _, _, _, text in log_entries(await cri.status(cid))]
    expected = [format_timestamp(started + n * NS)[11:19] for n in range(3)]
    assert texts == expected


async def test_two_containers_share_a_volume_through_its_host_path(cri: CriHarness, tmp_path: Path) -> None:
    volume = tmp_path / "volumes" / "shared"
    volume.mkdir(parents=True)
    mount = api.Mount(container_path="/data", host_path=str(volume))
    sid, writer, cfg = await start_busybox(cri, "echo hello from writer > /data/msg; sleep 3600", mounts=[mount])
    _, reader, _ = await start_busybox(cri, "sleep 3600", sandbox=(sid, cfg), container="reader", mounts=[mount])
    answer = await exec_sync(cri, reader, ["cat", "/data/msg"])
    assert (answer.exit_code, answer.stdout) == (0, b"hello from writer\n")
    assert (volume / "msg").read_text() == "hello from writer\n"  # a real file on the host
    await exec_sync(cri, reader, ["sh", "-c", "echo reply > /data/reply"])
    answer = await exec_sync(cri, writer, ["cat", "/data/reply"])
    assert answer.stdout == b"reply\n"
    # the writable layers stay apart
    await exec_sync(cri, writer, ["touch", "/tmp/mine"])
    assert (await exec_sync(cri, reader, ["ls", "/tmp/mine"])).exit_code == 1


async def test_a_term_trap_with_wait_ends_the_container_at_once(cri: CriHarness) -> None:
    _, cid, _ = await start_busybox(cri, "trap 'echo bye; exit 0' TERM; sleep 3600 & wait")
    await cri.clock.advance(5)
    stop_at = cri.clock.now_ns()
    await stop(cri, cid, 30)
    status = await cri.status(cid)
    assert (status.state, status.exit_code, status.finished_at) == (api.CONTAINER_EXITED, 0, stop_at)
    assert log_entries(status)[-1][1:] == ("stdout", "F", "bye")


async def test_a_term_trap_waits_for_a_foreground_sleep_so_the_stop_ends_in_sigkill(cri: CriHarness) -> None:
    # the classic mistake: the trap only runs when the foreground sleep returns, so the grace period runs out
    _, cid, _ = await start_busybox(cri, "trap 'exit 0' TERM; sleep 3600")
    await cri.clock.advance(5)
    stop_at = cri.clock.now_ns()
    await stop(cri, cid, 30)
    status = await cri.status(cid)
    assert (status.state, status.exit_code, status.finished_at) == (api.CONTAINER_EXITED, 137, stop_at + 30 * NS)


async def test_pid_1_without_a_trap_ignores_sigterm(cri: CriHarness) -> None:
    _, cid, _ = await start_busybox(cri, "while true; do sleep 1; done")
    stop_at = cri.clock.now_ns()
    await stop(cri, cid, 10)
    status = await cri.status(cid)
    assert (status.exit_code, status.finished_at) == (137, stop_at + 10 * NS)


async def test_a_shell_that_is_not_pid_1_dies_of_sigterm_with_143(cri: CriHarness) -> None:
    # sharing the pod's PID namespace, the pause process is PID 1 and the shell gets default signal actions
    _, cid, _ = await start_busybox(cri, "while true; do sleep 1; done", pid_namespace=api.POD)
    await cri.clock.advance(3)
    stop_at = cri.clock.now_ns()
    await stop(cri, cid, 30)
    status = await cri.status(cid)
    assert (status.exit_code, status.reason, status.finished_at) == (143, "Error", stop_at)


async def test_an_unknown_command_in_a_script_exits_127(cri: CriHarness, caplog: pytest.LogCaptureFixture) -> None:
    _, cid, _ = await start_busybox(cri, "echo before; frobnicate --now; echo after $?; exit 127")
    # the gap is visible in the emulator's own log, naming the container and what was missing
    assert any("frobnicate" in r.getMessage() and "lacks" in r.getMessage() for r in caplog.records)
    status = await cri.status(cid)
    assert (status.state, status.exit_code, status.reason) == (api.CONTAINER_EXITED, 127, "Error")
    entries = [(stream, text) for _, stream, _, text in log_entries(status)]
    assert entries == [("stdout", "before"), ("stderr", "sh: frobnicate: not found"), ("stdout", "after 127")]


async def test_a_missing_program_fails_to_start_as_containerd_reports_it(cri: CriHarness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await start_busybox(cri, command=["/usr/local/bin/server", "--port=80"])
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert '"/usr/local/bin/server": executable file not found' in (info.value.details() or "")
    containers = (await cri.runtime.ListContainers(api.ListContainersRequest())).containers
    status = await cri.status(containers[0].id)
    assert (status.state, status.exit_code, status.reason) == (api.CONTAINER_EXITED, 128, "StartError")
    assert status.started_at == 0


async def test_identity_environment_and_kubelet_files(cri: CriHarness) -> None:
    _, cid, _ = await start_busybox(
        cri, "sleep 3600", name="web", envs={"GREETING": "hi there"}, working_dir="/tmp", run_as_user=1000
    )
    answer = await exec_sync(cri, cid, ["sh", "-c", 'echo "$GREETING"; pwd; id -u; hostname'])
    assert answer.stdout == b"hi there\n/tmp\n1000\nweb\n"
    resolv = await exec_sync(cri, cid, ["cat", "/etc/resolv.conf"])
    assert resolv.stdout == (
        b"search default.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    )
    assert (await exec_sync(cri, cid, ["cat", "/etc/hostname"])).stdout == b"web\n"


async def test_files_written_count_toward_the_writable_layer_and_survive_a_restart(cri: CriHarness) -> None:
    _, cid, _ = await start_busybox(cri, "seq 1 10000 > /tmp/numbers; sleep 3600")
    stats = (await cri.runtime.ContainerStats(api.ContainerStatsRequest(container_id=cid))).stats
    size = len("".join(f"{n}\n" for n in range(1, 10001)))
    assert stats.writable_layer.used_bytes.value == size
    await cri.restart()
    answer = await exec_sync(cri, cid, ["wc", "-l", "/tmp/numbers"])
    assert answer.stdout.split()[0] == b"10000"


async def test_an_exec_that_outlives_its_timeout_is_deadline_exceeded(cri: CriHarness) -> None:
    _, cid, _ = await start_busybox(cri, "sleep 3600")
    call = asyncio.ensure_future(exec_sync(cri, cid, ["sh", "-c", "sleep 5; echo late"], timeout_s=2))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await cri.drive(call)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def ps_table(out: bytes) -> list[tuple[int, str]]:
    """(pid, command) rows of busybox ``ps`` output."""
    rows = []
    for line in out.decode().splitlines()[1:]:
        pid, _user, _time, command = line.split(None, 3)
        rows.append((int(pid), command))
    return rows


async def test_ps_shows_what_sh_c_execs_and_the_pause_process_of_a_shared_namespace(cri: CriHarness) -> None:
    # own PID namespace: busybox sh -c execs its last simple command, which becomes PID 1
    _, own, _ = await start_busybox(cri, "echo hi; sleep 3600", name="own")
    assert ps_table((await exec_sync(cri, own, ["ps"])).stdout) == [(1, "sleep 3600"), (101, "ps")]
    # a trap keeps the shell (busybox does not exec then): PID 1 stays sh
    _, trapped, _ = await start_busybox(cri, "trap 'exit 0' TERM; sleep 3600", name="trapped")
    rows = ps_table((await exec_sync(cri, trapped, ["sh", "-c", "ps"])).stdout)
    assert rows[0] == (1, "sh -c trap 'exit 0' TERM; sleep 3600") and rows[-1][1] == "ps"
    # the pod's PID namespace: the pause process is PID 1 and the shell (now sleep) is another
    _, shared, _ = await start_busybox(cri, "echo hi; sleep 3600", name="shared", pid_namespace=api.POD)
    rows = ps_table((await exec_sync(cri, shared, ["ps"])).stdout)
    assert rows[0] == (1, "/pause") and [c for _, c in rows[1:]] == ["sleep 3600", "ps"]
