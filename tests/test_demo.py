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
