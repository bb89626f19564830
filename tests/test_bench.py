"""The CRI benchmark: its pure statistics helpers, and one short end-to-end run against a spawned emulator."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kubeharness.bench.cycle import CYCLE_RPCS
from kubeharness.bench.procstat import parse_stat_cpu_s, parse_status_kib
from kubeharness.bench.report import ordered_rpcs
from kubeharness.bench.stats import merge_samples, nearest_rank, percentile, rate_per_second, summarize
from kubeharness.cli import build_parser
from kubeharness.cli import main as cli_main


def test_percentile_is_nearest_rank() -> None:
    samples = list(range(100, 0, -1))  # 1..100, unsorted
    assert percentile(samples, 50) == 50
    assert percentile(samples, 99) == 99
    assert percentile(samples, 100) == 100
    assert percentile(samples, 0.1) == 1
    assert percentile([7], 99) == 7
    assert percentile([1, 2, 3], 50) == 2  # always a measured value, never interpolated
    assert nearest_rank([1.0, 2.0, 3.0, 4.0], 50) == 2.0


@pytest.mark.parametrize("q", [0, -1, 100.5])
def test_percentile_rejects_out_of_range(q: float) -> None:
    with pytest.raises(ValueError):
        percentile([1, 2], q)


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summary_in_milliseconds() -> None:
    s = summarize([3_000_000, 1_000_000, 2_000_000, 10_000_000])
    assert (s.count, s.p50_ms, s.p99_ms, s.max_ms, s.mean_ms) == (4, 2.0, 10.0, 10.0, 4.0)
    assert summarize([]).count == 0


def test_merge_and_rate() -> None:
    assert merge_samples([{"A": [1], "B": [2]}, {"A": [3]}]) == {"A": [1, 3], "B": [2]}
    assert rate_per_second(300, 2_000_000_000) == 150.0
    assert rate_per_second(5, 0) == 0.0


def test_proc_parsers() -> None:
    assert parse_status_kib("Name:\tx\nVmRSS:\t  2048 kB\n", "VmRSS") == 2 * 1024 * 1024
    assert parse_status_kib("Name:\tx\n", "VmRSS") is None
    fields = " ".join(["S"] + ["0"] * 10 + ["250", "50"] + ["0"] * 30)
    assert parse_stat_cpu_s(f"42 (a (weird) name) {fields}") == pytest.approx(300 / 100)


def test_rpcs_are_reported_in_cycle_order() -> None:
    assert ordered_rpcs(["ListPodSandbox", "StopContainer", "RunPodSandbox"]) == [
        "RunPodSandbox", "StopContainer", "ListPodSandbox"]


def test_bench_cri_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json = tmp_path / "bench.json"
    argv = ["bench", "cri", "--cycles", "5", "--concurrency", "2", "--warmup", "1",
            "--live-pods", "4", "--list-repeats", "3", "--json", str(out_json)]
    assert build_parser().parse_args(argv).endpoint is None  # no endpoint: the bench spawns an emulator
    assert cli_main(argv) == 0
    out = capsys.readouterr().out

    for phase in ("phase 1: serial pod cycles", "phase 2: concurrent pod cycles"):
        block = out.split(phase, 1)[1].split("\n\n", 1)[0]
        head = re.match(r": 5 cycles \(0 failed\) with \d+ clients? in [\d.]+ s = ([\d.]+) cycles/s", block)
        assert head is not None, block
        assert float(head.group(1)) > 0
        for rpc in CYCLE_RPCS:
            assert re.search(rf"^  {rpc} +5 ", block, re.MULTILINE), f"{rpc} row missing in {phase}"
    assert re.search(r"^  ListContainers +3 .* 4 +[\d.]+$", out, re.MULTILINE)
    assert re.search(r"^  ListPodSandbox +3 .* 4 +[\d.]+$", out, re.MULTILINE)
    assert "clean-up: removed 4 pods (0 failed)" in out
    for target in ("p99 of every RPC", "pod cycles/s", "List* p99", "emulator RSS"):
        assert re.search(rf"^  (MET|NOT MET|NOT MEASURED) +.*{re.escape(target)}", out, re.MULTILINE), target

    figures = json.loads(out_json.read_text())
    assert figures["phases"]["serial"]["ok"] == 5
    assert set(figures["phases"]["concurrent"]["rpcs"]) == set(CYCLE_RPCS)
    assert figures["live"]["lists"]["ListContainers"]["items"] == 4
    assert figures["live"]["lists"]["ListContainers"]["first_ms"] > 0
    assert figures["memory"]["end"]["rss_mib"] > 0


def test_bench_shell_prints_the_cpu_cost_of_interpreting(capsys: pytest.CaptureFixture[str]) -> None:
    from kubeharness.cli import main

    assert main(["bench", "shell", "--containers", "5", "--seconds", "3"]) == 0
    out = capsys.readouterr().out
    assert "5 containers running" in out
    assert "20 log lines written" in out  # each writes a line at 0, 1, 2 and 3 s


def test_bench_proxy_against_an_emulator_it_starts(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["bench", "proxy", "--calls", "10", "--cycles", "3", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    for round_name, rpcs in (("calls", ("Version", "PodSandboxStatus", "ContainerStatus", "ListContainers",
                                        "ImageStatus")), ("pod cycles", CYCLE_RPCS)):
        for rules in ("no rules", "rules watching"):
            table = out.split(f"\n{round_name}, {rules}:\n", 1)[1].split("\n\n", 1)[0]
            for rpc in rpcs:
                row = re.search(rf"^  {rpc} +([\d.]+) +([\d.]+) +([+-][\d.]+) +([\d.]+) +([\d.]+)$", table,
                                re.MULTILINE)
                assert row is not None, f"{rpc} missing in {round_name}, {rules}"
                direct, proxied, added = (float(row.group(i)) for i in (1, 2, 3))
                assert direct > 0 and proxied > 0 and abs(proxied - direct - added) < 0.002
    assert re.search(r"^target: at most 1 ms added at p50 for every RPC \(calls\): (met|NOT met) \(largest added "
                     r"p50 -?[\d.]+ ms\)$", out, re.MULTILINE)


def test_bench_csi_against_a_plugin_it_starts(capsys: pytest.CaptureFixture[str]) -> None:
    from kubeharness.bench.csi import CYCLE_RPCS as CSI_RPCS

    argv = ["bench", "csi", "--volumes", "3", "--cycles", "6", "--concurrency", "2"]
    assert build_parser().parse_args(argv).endpoint is None  # no endpoint: the bench spawns a plugin
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    for phase, clients in (("phase 1: serial", "1 client"), ("phase 2: 2 concurrent volumes", "2 clients")):
        block = out.split(f"\n{phase}: ", 1)[1].split("\n\n", 1)[0]
        head = re.match(rf"6 cycles \(0 failed\) with {clients} in [\d.]+ s = [\d.]+ cycles/s, ([\d.]+) calls/s",
                        block)
        assert head is not None and float(head.group(1)) > 0, block
        for rpc in (*CSI_RPCS, "every call"):
            row = re.search(rf"^  {rpc} +(\d+) +([\d.]+) +([\d.]+) +([\d.]+)$", block, re.MULTILINE)
            assert row is not None, f"{rpc} row missing in {phase}"
            count, p50, p99, most = int(row.group(1)), *(float(row.group(i)) for i in (2, 3, 4))
            assert count == (24 if rpc == "every call" else 6) and 0 < p50 <= p99 <= most
    assert re.search(r"^target p99 <= 5 ms per call: (met|NOT met) \(worst Node\w+ p99 [\d.]+ ms in phase [12]; ",
                     out, re.MULTILINE)
    assert "failed calls" not in out


def test_agent_bench_helpers_parse_what_the_agent_serves() -> None:
    from kubeharness.agent.pod.defaults import rfc3339_nano
    from kubeharness.bench.agentnode import is_running, parse_histogram, parse_rfc3339_ns, runtime_calls_in_flight

    for ns in (1_714_557_600_123_456_789, 1_714_557_600_000_000_000, 1_714_557_600_500_000_000):
        assert parse_rfc3339_ns(rfc3339_nano(ns)) == ns
    running = {"spec": {"containers": [{"name": "a"}]},
               "status": {"phase": "Running", "containerStatuses": [{"state": {"running": {}}}]}}
    assert is_running(running)
    waiting = {"phase": "Running", "containerStatuses": [{"state": {"waiting": {}}}]}
    assert not is_running({**running, "status": waiting})
    assert not is_running({**running, "status": {"phase": "Pending"}})
    text = ('x_bucket{le="0.5"} 3\nx_bucket{le="1"} 4\nx_bucket{le="+Inf"} 5\nx_sum 2.5\nx_count 5\n'
            'y_count 9\n')
    hist = parse_histogram(text, "x")
    assert (hist.count, hist.sum, hist.mean, hist.buckets[0.5], hist.buckets[float("inf")]) == (5, 2.5, 0.5, 3, 5)
    assert parse_histogram(text, "z").count == 0
    metrics = ('kubelet_runtime_operations_total{operation_type="run_podsandbox"} 5\n'
               'kubelet_runtime_operations_total{operation_type="get_container_events"} 1\n'
               'kubelet_runtime_operations_total{operation_type="start_container"} 3\n'
               'kubelet_runtime_operations_duration_seconds_count{operation_type="run_podsandbox"} 4\n'
               'kubelet_runtime_operations_duration_seconds_count{operation_type="start_container"} 3\n')
    assert runtime_calls_in_flight(metrics) == 1  # one RunPodSandbox under way; the event stream does not count


def test_bench_agent_against_an_emulator_it_starts(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "agent", "--pods", "5", "--idle-pods", "6", "--idle-seconds", "1", "--probe-pods", "4",
            "--probe-kill-pods", "2", "--probe-seconds", "12", "--resource-pods", "0"]
    assert build_parser().parse_args(argv).endpoint is None  # no endpoint: the bench spawns an emulator
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    head = re.search(r"^phase 1: 5 pods written at once: 5/5 Running [\d.]+ s after the writes .*= ([\d.]+) pods/s$",
                     out, re.MULTILINE)
    assert head is not None and float(head.group(1)) > 0, out
    latency = re.search(r"^  startup latency \(config.seen to Running in /pods\): p50 ([\d.]+) ms, p99 ([\d.]+) ms, "
                        r"max ([\d.]+) ms, mean [\d.]+ ms$", out, re.MULTILINE)
    assert latency is not None, out
    p50, p99, most = (float(latency.group(i)) for i in (1, 2, 3))
    assert 0 < p50 <= p99 <= most
    assert "bounds the resolution" in out
    assert re.search(r"^  the agent's own kubelet_pod_start_duration_seconds: 5 pods, mean [\d.]+ ms", out,
                     re.MULTILINE)
    assert re.search(r"^phase 2: 1 pods added: 1/1 Running ", out, re.MULTILINE)
    idle = re.search(r"^phase 2: 6 pods idle \(6 Running after\): agent CPU ([\d.]+) s in ([\d.]+) s = ([\d.]+)% "
                     r"of one core; the runtime [\d.]+ s = [\d.]+%$", out, re.MULTILINE)
    assert idle is not None and float(idle.group(2)) >= 1.0, out
    assert re.search(r"^clean-up: 6 manifests deleted; out of /pods after [\d.]+ s, sandboxes removed by the agent "
                     r"after [\d.]+ s; 0 swept through CRI, 0 left$", out, re.MULTILINE), out
    probes = re.search(r"^phase 3: 4 pods probed \(.*2 with liveness httpGet turned to 500\), all Ready [\d.]+ s "
                       r"after the manifests: agent CPU [\d.]+ s in ([\d.]+) s = [\d.]+% of one core", out,
                       re.MULTILINE)
    assert probes is not None and float(probes.group(1)) >= 12, out
    jitter = re.search(r"^  probe period jitter over (\d+) intervals \((\d+) readiness probes\)", out, re.MULTILINE)
    assert jitter is not None and int(jitter.group(1)) >= 2 * 8, out  # two steady pods, a probe a second
    assert re.search(r"^  third failed liveness answer to the container's stop \(2 kills\): p50 [\d.]+ ms", out,
                     re.MULTILINE), out
    assert re.search(r"^target \(emulator\) startup p99 <= 200 ms: (met|NOT met) \(p99 [\d.]+ ms\)$", out, re.MULTILINE)
    assert re.search(r"^target \(emulator\) idle agent CPU <= 5% of one core: (met|NOT met) \([\d.]+%\)$", out,
                     re.MULTILINE)
    assert "FAILED" not in out


def test_bench_agent_resources_phase_loses_no_line_and_times_the_eviction(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "agent", "--pods", "1", "--idle-pods", "1", "--idle-seconds", "1", "--probe-pods", "0",
            "--probe-kill-pods", "0", "--resource-pods", "3", "--resource-seconds", "10", "--log-max-size", "64Ki",
            "--log-monitor-interval", "3s"]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    head = re.search(r"^phase 4: 3 pods logging 200 lines/s each \(256 bytes a line; containerLogMaxSize 64Ki, "
                     r"maxFiles 5, monitor every 3s\), all Running [\d.]+ s after the manifests: agent CPU [\d.]+ s "
                     r"in ([\d.]+) s = [\d.]+% of one core \(target <= 15%\)$", out, re.MULTILINE)
    assert head is not None and float(head.group(1)) >= 10, out
    lines = re.search(r"^  lines: (\d+) due by the cut-off, (\d+) found, (\d+) lost \(target 0\), (\d+) retired by "
                      r"maxFiles, (\d+) duplicates, (\d+) not numbered; rotated files per container: min (\d+), "
                      r"max (\d+)$", out, re.MULTILINE)
    assert lines is not None, out
    due, found, lost, retired, duplicates, foreign, fewest, most = (int(g) for g in lines.groups())
    assert due >= 3 * 200 * 10 and found + retired >= due, out  # 10 s of three pods at 200 lines/s at least
    assert (lost, duplicates, foreign) == (0, 0, 0), out
    assert 1 <= fewest <= most <= 4, out  # 64Ki fills in about 1.3 s: every pass of the 3 s monitor rotates
    delay = re.search(r"^  eviction: hog at 512 MiB/s, memory.available under 2Gi to the hog's stop (-?[\d.]+) s "
                      r"\(target <= 11 s: monitoring period 10 s \+ 1 s\)$", out, re.MULTILINE)
    assert delay is not None and -0.5 < float(delay.group(1)) < 25, out  # never before the crossing
    assert re.search(r"^target \(emulator\) log lines lost 0: met \(0\)$", out, re.MULTILINE), out
    assert re.search(r"^target \(emulator\) resources phase agent CPU <= 15% of one core: (met|NOT met) "
                     r"\([\d.]+%\)$", out, re.MULTILINE), out
    assert "FAILED" not in out


def test_resources_phase_counts_lines_lost_retired_and_late(tmp_path: Path) -> None:
    import gzip

    from kubeharness.bench.agentresources import count_lines, due_by, read_log_files
    from kubeharness.emulators.cri.logs import encode_line

    start, rate = 1_000_000_000_000, 200.0
    assert due_by(start, rate, start - 1) == 0
    assert due_by(start, rate, start) == 1  # line 1 is due at the start
    assert due_by(start, rate, start + 4_999_999) == 1 and due_by(start, rate, start + 5_000_000) == 2
    assert due_by(start, 3.0, start + 1_000_000_000) == 4  # at 0, 1/3, 2/3 and 1 s (int() of 333333333.3)

    def lines(numbers: range | list[int], pod: str = "p") -> bytes:
        return b"".join(encode_line(start + (n - 1) * 5_000_000, "stdout", f"{pod} {n} xx".encode()) for n in numbers)

    log = tmp_path / "0.log"
    (tmp_path / "0.log.20260101-000000.gz").write_bytes(gzip.compress(lines(range(1, 11))))
    (tmp_path / "0.log.20260101-000010").write_bytes(lines(range(11, 21)))
    (tmp_path / "0.log.20260101-000010.gz").write_bytes(gzip.compress(lines(range(11, 21))))  # compressed, not gone
    (tmp_path / "0.log.20260101-000020.tmp").write_bytes(b"half")
    log.write_bytes(lines(range(21, 31)) + lines([5], "other"))
    contents, files, rotated = read_log_files(str(log))
    assert (files, rotated) == (3, 2)  # the plain file beside its .gz and the .tmp are not read
    cutoff = start + 29 * 5_000_000  # line 30 due
    whole = count_lines("p", contents, start, rate, cutoff, 5, files, rotated)
    assert (whole.due, whole.found, whole.lost, whole.duplicates, whole.foreign) == (30, 30, 0, 0, 1)
    late = count_lines("p", contents, start, rate, cutoff + 10 * 5_000_000, 5, files, rotated)
    assert (late.tail, late.lost) == (10, 10)  # due by the cut-off and not there: lost
    gap = count_lines("p", [lines([*range(3, 8), *range(10, 31)])], start, rate, cutoff, 5, 5, 4)
    assert (gap.gaps, gap.head, gap.retired, gap.lost) == (2, 2, True, 2)  # the head went with maxFiles
    mid = count_lines("p", [lines(range(3, 31))], start, rate, cutoff, 5, 4, 3)
    assert (mid.retired, mid.lost) == (True, 0)  # read inside a pass: excess removed, live file not yet renamed
    head = count_lines("p", [lines(range(3, 31))], start, rate, cutoff, 5, 3, 2)
    assert (head.head, head.retired, head.lost) == (2, False, 2)  # fewer than maxFiles files: nothing retired
    twice = count_lines("p", [lines(range(1, 31)), lines([30])], start, rate, cutoff, 5, 1, 0)
    assert (twice.duplicates, twice.lost) == (1, 0)
