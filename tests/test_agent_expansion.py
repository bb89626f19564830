"""``$(VAR)`` expansion as Kubernetes does it, case by case."""

from __future__ import annotations

import pytest

from kubeharness.agent.pod.defaults import pod_from_object
from kubeharness.agent.pod.expansion import expand, expand_command
from kubeharness.agent.pod.model import EnvVar
from kubeharness.agent.runtime.kuberuntime import container_config

MAPPING = {"VAR": "value", "EMPTY": "", "A": "x"}


@pytest.mark.parametrize(("text", "want"), [
    ("$(VAR)", "value"),
    ("a-$(VAR)-b", "a-value-b"),
    ("$(VAR)$(A)", "valuex"),
    ("$(EMPTY)", ""),
    ("$(MISSING)", "$(MISSING)"),  # undefined: kept as written
    ("$$(VAR)", "$(VAR)"),  # escaped
    ("$$$(VAR)", "$value"),
    ("$VAR", "$VAR"),  # only the $(...) form
    ("$", "$"),
    ("end$", "end$"),
    ("$(VAR", "$(VAR"),  # unclosed
    ("$()", "$()"),
    ("no refs", "no refs"),
    ("", ""),
])
def test_expand(text: str, want: str) -> None:
    assert expand(text, MAPPING) == want


def test_an_exec_command_with_the_container_s_environment() -> None:
    env = (EnvVar("PORT", "8080"), EnvVar("PORT", "9090"), EnvVar("NAME", "web"))
    assert expand_command(["sh", "-c", "check $(NAME):$(PORT) $(OTHER)"], env) == [
        "sh", "-c", "check web:9090 $(OTHER)"]  # the later definition wins


def test_command_and_args_are_expanded_when_the_container_is_created() -> None:
    pod = pod_from_object({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"},
                           "spec": {"containers": [{"name": "c", "image": "kubeharness.test/khelper:1",
                                                    "command": ["/khelper", "--log-text=$(WORD)"],
                                                    "args": ["$(COUNT)", "$$(COUNT)", "$(NONE)"],
                                                    "env": [{"name": "WORD", "value": "hi"},
                                                            {"name": "COUNT", "value": "3"}]}]}},
                          "file", "node-1", origin="test")
    config = container_config(pod, pod.spec.containers[0], 0, "kubeharness.test/khelper:1")
    assert list(config.command) == ["/khelper", "--log-text=hi"]
    assert list(config.args) == ["3", "$(COUNT)", "$(NONE)"]
