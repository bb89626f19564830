"""The main job: ``kubeharness demo`` runs the emulator as a daemon and its pods end as the script says."""

from __future__ import annotations

import subprocess
import sys


def test_the_demo_runs_every_step_and_cleans_up() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kubeharness.cli", "demo"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "job/task#0           exited   exit 0 (Completed)" in out
    assert "hog/leak#0           exited   exit 137 (OOMKilled)" in out
    assert "job/stubborn#0       exited   exit 137 (Error)" in out
    assert "cat /tmp/healthy -> exit 1 cat: can't open '/tmp/healthy': No such file or directory" in out
    assert "sandboxes left: 0" in out
    assert "emulator stopped (exit 0)" in out


def test_the_fault_demo_shows_the_example_plan_at_work() -> None:
    import json
    import re
    from pathlib import Path

    plan = Path(__file__).resolve().parents[1] / "examples" / "faults" / "one-pod-flaky-sandbox.yaml"
    done = subprocess.run([sys.executable, "-m", "kubeharness.cli", "demo", "--faults", str(plan)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    flaky, calm = done.stdout.split("\n  pod flaky", 1)[1].split("\n  pod calm", 1)
    calls = re.findall(r"^    (\S+(?: #\d)?) +(OK|[A-Z_]+:)", flaky, re.MULTILINE)
    assert calls == [("RunPodSandbox #1", "UNAVAILABLE:"), ("RunPodSandbox #2", "UNAVAILABLE:"),
                     ("RunPodSandbox #3", "OK"), ("PullImage", "OK"), ("CreateContainer", "OK"),
                     ("StartContainer", "OK")]
    pull = re.search(r"^    PullImage +OK +\(([\d.]+) s\)", flaky, re.MULTILINE)
    assert pull is not None and float(pull.group(1)) >= 2.0  # the slow-pull rule's delay
    assert re.findall(r"^    (\S+(?: #\d)?) +OK", calm.split("fired-fault log")[0], re.MULTILINE) == [
        "RunPodSandbox #1", "PullImage", "CreateContainer", "StartContainer"]
    log = calm.split("fired-fault log (kubeharness faults fired):\n", 1)[1]
    fired = [json.loads(line) for line in log.splitlines()]
    assert [(f["rule"], f["method"], f["pod"]) for f in fired] == [
        ("flaky-sandbox", "RunPodSandbox", "demo/flaky"), ("flaky-sandbox", "RunPodSandbox", "demo/flaky"),
        ("slow-pull", "PullImage", "demo/flaky")]
