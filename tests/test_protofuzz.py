"""The generic protobuf message strategy (tests/protofuzz.py) draws what it promises."""

from __future__ import annotations

from hypothesis import find, given
from hypothesis import strategies as st

from kubeharness.wire.cri import api_pb2 as api
from tests.protofuzz import HUGE, UNSET, message_strategy


def test_overrides_by_name_and_by_path_are_always_applied() -> None:
    strategy = message_strategy(api.CreateContainerRequest, overrides={
        "pod_sandbox_id": st.just("live"), "config.metadata.name": st.just("n"), "config.image": st.just(UNSET),
        "PodSandboxMetadata.name": st.just("pod")})

    @given(strategy)
    def check(msg: api.CreateContainerRequest) -> None:
        assert msg.pod_sandbox_id == "live"
        assert msg.config.metadata.name == "n"
        assert not msg.config.HasField("image")
        if msg.sandbox_config.HasField("metadata"):
            assert msg.sandbox_config.metadata.name == "pod"

    check()


def test_it_reaches_hostile_values_of_every_kind() -> None:
    find(message_strategy(api.NamespaceOption), lambda m: m.network not in (0, 1, 2, 3, 4))  # enum out of range
    find(message_strategy(api.PodSandboxConfig), lambda m: "\x00" in m.log_directory)
    find(message_strategy(api.PodSandboxConfig), lambda m: ".." in m.log_directory.split("/"))
    find(message_strategy(api.PodSandboxConfig), lambda m: len(m.hostname) >= HUGE)
    find(message_strategy(api.PodSandboxConfig), lambda m: "" in m.labels)  # map with an empty key
    find(message_strategy(api.LinuxContainerResources), lambda m: m.memory_limit_in_bytes == -(2**63))
    find(message_strategy(api.ContainerConfig), lambda m: len(m.mounts) > 1 and m.mounts[0].host_path != "")


def test_nesting_stops_at_max_depth() -> None:
    @given(message_strategy(api.CreateContainerRequest, max_depth=1))
    def check(msg: api.CreateContainerRequest) -> None:
        assert not msg.config.HasField("metadata") and not msg.sandbox_config.HasField("metadata")

    check()
