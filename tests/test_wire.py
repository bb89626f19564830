"""The committed stubs match the protos, and the CRI definition is complete."""

from kubeharness.wire import generate
from kubeharness.wire.cri import api_pb2 as api


def test_committed_stubs_are_not_stale() -> None:
    assert generate.stale_files() == []


def test_the_cri_definition_has_every_runtime_and_image_rpc_of_kubernetes_1_36() -> None:
    runtime = {m.name for m in api.DESCRIPTOR.services_by_name["RuntimeService"].methods}
    image = {m.name for m in api.DESCRIPTOR.services_by_name["ImageService"].methods}
    assert api.DESCRIPTOR.package == "runtime.v1"
    assert len(runtime) == 35 and len(image) == 6
    assert {"RunPodSandbox", "GetContainerEvents", "RuntimeConfig", "UpdatePodSandboxResources",
            "StreamContainers", "ListPodSandboxMetrics", "CheckpointContainer"} <= runtime
    assert image == {"ListImages", "StreamImages", "ImageStatus", "PullImage", "RemoveImage", "ImageFsInfo"}


def test_field_numbers_match_the_upstream_wire_format() -> None:
    # A few numbers that real clients depend on, read from the public definition.
    fields = api.ContainerConfig.DESCRIPTOR.fields_by_name
    assert (fields["metadata"].number, fields["image"].number, fields["log_path"].number) == (1, 2, 11)
    assert api.PodSandboxConfig.DESCRIPTOR.fields_by_name["log_directory"].number == 3
    assert api.ContainerStatus.DESCRIPTOR.fields_by_name["reason"].number == 10
