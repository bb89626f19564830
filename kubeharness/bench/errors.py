"""The one error the benchmark raises itself: the CLI prints its message and exits with code 2."""

from __future__ import annotations

from kubeharness.errors import KubeharnessError


class BenchError(KubeharnessError):
    """The benchmark cannot go on (no runtime to talk to, image missing, ...); the message says why."""
