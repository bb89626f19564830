"""Hypothesis settings for the fuzz tests, in one place.

Two profiles: ``ci`` (the default) is bounded and deterministic, so that a CI run is the same run every
time and a few minutes at most in all; ``long`` (``KUBEHARNESS_FUZZ=long``, optionally with
``KUBEHARNESS_FUZZ_EXAMPLES=N``) draws fresh random examples for as long as asked, which is how new
seeds are found. Neither has a per-example deadline: a loaded machine must not turn slowness into a
failure. A seed that finds a bug becomes a regular test (an ``@example`` or a plain test beside it).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture]

settings.register_profile("ci", max_examples=int(os.environ.get("KUBEHARNESS_FUZZ_EXAMPLES", "60")),
                          deadline=None, derandomize=True, database=None, suppress_health_check=_SLOW_OK,
                          print_blob=True)
settings.register_profile("long", max_examples=int(os.environ.get("KUBEHARNESS_FUZZ_EXAMPLES", "2000")),
                          deadline=None, suppress_health_check=_SLOW_OK, print_blob=True)
settings.load_profile(os.environ.get("KUBEHARNESS_FUZZ", "ci"))
