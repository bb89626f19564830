"""Our CSI v1 and kubelet plugin registration definitions match the public wire format.

The tables below are written from the CSI spec (release v1.11) and the kubelet's
pluginregistration/v1 API, not read back from our own protos. Field numbers are checked by
comparing serialized messages with bytes built by hand, so a wrong number cannot hide behind a
matching name.
"""

from __future__ import annotations

from google.protobuf import descriptor, message

from kubeharness.wire.csi import csi_pb2 as csi
from kubeharness.wire.pluginregistration import api_pb2 as reg

# (request, response, server streaming) per RPC; no CSI RPC streams its request.
IDENTITY = {
    "GetPluginInfo": ("GetPluginInfoRequest", "GetPluginInfoResponse", False),
    "GetPluginCapabilities": ("GetPluginCapabilitiesRequest", "GetPluginCapabilitiesResponse", False),
    "Probe": ("ProbeRequest", "ProbeResponse", False),
}
CONTROLLER = {
    "CreateVolume": ("CreateVolumeRequest", "CreateVolumeResponse", False),
    "DeleteVolume": ("DeleteVolumeRequest", "DeleteVolumeResponse", False),
    "ControllerPublishVolume": ("ControllerPublishVolumeRequest", "ControllerPublishVolumeResponse", False),
    "ControllerUnpublishVolume": ("ControllerUnpublishVolumeRequest", "ControllerUnpublishVolumeResponse", False),
    "ValidateVolumeCapabilities": ("ValidateVolumeCapabilitiesRequest", "ValidateVolumeCapabilitiesResponse", False),
    "ListVolumes": ("ListVolumesRequest", "ListVolumesResponse", False),
    "GetCapacity": ("GetCapacityRequest", "GetCapacityResponse", False),
    "ControllerGetCapabilities": ("ControllerGetCapabilitiesRequest", "ControllerGetCapabilitiesResponse", False),
    "CreateSnapshot": ("CreateSnapshotRequest", "CreateSnapshotResponse", False),
    "DeleteSnapshot": ("DeleteSnapshotRequest", "DeleteSnapshotResponse", False),
    "ListSnapshots": ("ListSnapshotsRequest", "ListSnapshotsResponse", False),
    "GetSnapshot": ("GetSnapshotRequest", "GetSnapshotResponse", False),
    "ControllerExpandVolume": ("ControllerExpandVolumeRequest", "ControllerExpandVolumeResponse", False),
    "ControllerGetVolume": ("ControllerGetVolumeRequest", "ControllerGetVolumeResponse", False),
    "ControllerModifyVolume": ("ControllerModifyVolumeRequest", "ControllerModifyVolumeResponse", False),
}
NODE = {
    "NodeStageVolume": ("NodeStageVolumeRequest", "NodeStageVolumeResponse", False),
    "NodeUnstageVolume": ("NodeUnstageVolumeRequest", "NodeUnstageVolumeResponse", False),
    "NodePublishVolume": ("NodePublishVolumeRequest", "NodePublishVolumeResponse", False),
    "NodeUnpublishVolume": ("NodeUnpublishVolumeRequest", "NodeUnpublishVolumeResponse", False),
    "NodeGetVolumeStats": ("NodeGetVolumeStatsRequest", "NodeGetVolumeStatsResponse", False),
    "NodeExpandVolume": ("NodeExpandVolumeRequest", "NodeExpandVolumeResponse", False),
    "NodeGetCapabilities": ("NodeGetCapabilitiesRequest", "NodeGetCapabilitiesResponse", False),
    "NodeGetInfo": ("NodeGetInfoRequest", "NodeGetInfoResponse", False),
}
GROUP_CONTROLLER = {
    "GroupControllerGetCapabilities": (
        "GroupControllerGetCapabilitiesRequest", "GroupControllerGetCapabilitiesResponse", False),
    "CreateVolumeGroupSnapshot": ("CreateVolumeGroupSnapshotRequest", "CreateVolumeGroupSnapshotResponse", False),
    "DeleteVolumeGroupSnapshot": ("DeleteVolumeGroupSnapshotRequest", "DeleteVolumeGroupSnapshotResponse", False),
    "GetVolumeGroupSnapshot": ("GetVolumeGroupSnapshotRequest", "GetVolumeGroupSnapshotResponse", False),
}
SNAPSHOT_METADATA = {
    "GetMetadataAllocated": ("GetMetadataAllocatedRequest", "GetMetadataAllocatedResponse", True),
    "GetMetadataDelta": ("GetMetadataDeltaRequest", "GetMetadataDeltaResponse", True),
}


def _rpcs(service: descriptor.ServiceDescriptor, package: str) -> dict[str, tuple[str, str, bool]]:
    out: dict[str, tuple[str, str, bool]] = {}
    for method in service.methods:
        assert not method.client_streaming, method.full_name
        assert method.input_type.full_name.startswith(package + ".")
        assert method.output_type.full_name.startswith(package + ".")
        out[method.name] = (method.input_type.name, method.output_type.name, method.server_streaming)
    return out


def _key(number: int, wire_type: int) -> bytes:
    assert number < 16
    return bytes([number << 3 | wire_type])


def _len(number: int, payload: bytes) -> bytes:
    assert len(payload) < 128
    return _key(number, 2) + bytes([len(payload)]) + payload


def _varint(number: int, value: int) -> bytes:
    out = bytearray(_key(number, 0))
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_every_csi_service_has_exactly_the_spec_rpcs() -> None:
    assert csi.DESCRIPTOR.package == "csi.v1"
    services = csi.DESCRIPTOR.services_by_name
    assert set(services) == {"Identity", "Controller", "Node", "GroupController", "SnapshotMetadata"}
    assert _rpcs(services["Identity"], "csi.v1") == IDENTITY
    assert _rpcs(services["Controller"], "csi.v1") == CONTROLLER
    assert _rpcs(services["Node"], "csi.v1") == NODE
    assert _rpcs(services["GroupController"], "csi.v1") == GROUP_CONTROLLER
    assert _rpcs(services["SnapshotMetadata"], "csi.v1") == SNAPSHOT_METADATA
    # The gRPC path real clients call, e.g. by the kubelet for every mount.
    assert services["Node"].methods_by_name["NodePublishVolume"].full_name == "csi.v1.Node.NodePublishVolume"


def test_node_publish_volume_request_field_numbers() -> None:
    request = csi.NodePublishVolumeRequest(
        volume_id="v",
        target_path="/t",
        volume_capability=csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume()),
        readonly=True,
        secrets={"k": "s"},
    )
    expected = (
        _len(1, b"v")  # volume_id
        + _len(4, b"/t")  # target_path
        + _len(5, _len(2, b""))  # volume_capability { mount {} }
        + _varint(6, 1)  # readonly
        + _len(7, _len(1, b"k") + _len(2, b"s"))  # secrets map entry
    )
    assert request.SerializeToString(deterministic=True) == expected
    assert csi.NodePublishVolumeRequest.FromString(expected) == request
    numbers = {f.name: f.number for f in csi.NodePublishVolumeRequest.DESCRIPTOR.fields}
    assert numbers == {"volume_id": 1, "publish_context": 2, "staging_target_path": 3, "target_path": 4,
                       "volume_capability": 5, "readonly": 6, "secrets": 7, "volume_context": 8}


def test_volume_capability_oneof_and_access_mode() -> None:
    mode = csi.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
    block = csi.VolumeCapability(
        block=csi.VolumeCapability.BlockVolume(), access_mode=csi.VolumeCapability.AccessMode(mode=mode))
    assert block.SerializeToString() == _len(1, b"") + _len(3, _varint(1, 1))
    mount = csi.VolumeCapability(
        mount=csi.VolumeCapability.MountVolume(fs_type="ext4", mount_flags=["ro"], volume_mount_group="2000"))
    assert mount.SerializeToString() == _len(2, _len(1, b"ext4") + _len(2, b"ro") + _len(3, b"2000"))
    oneof = csi.VolumeCapability.DESCRIPTOR.oneofs_by_name["access_type"]
    assert [(f.name, f.number) for f in oneof.fields] == [("block", 1), ("mount", 2)]
    # Setting one member of the oneof clears the other, as on the wire.
    mount.block.SetInParent()
    assert mount.WhichOneof("access_type") == "block"


def test_create_volume_request_field_numbers() -> None:
    request = csi.CreateVolumeRequest(name="n", capacity_range=csi.CapacityRange(required_bytes=1024, limit_bytes=1))
    assert request.SerializeToString() == _len(1, b"n") + _len(2, _varint(1, 1024) + _varint(2, 1))
    numbers = {f.name: f.number for f in csi.CreateVolumeRequest.DESCRIPTOR.fields}
    assert numbers == {"name": 1, "capacity_range": 2, "volume_capabilities": 3, "parameters": 4, "secrets": 5,
                       "volume_content_source": 6, "accessibility_requirements": 7, "mutable_parameters": 8}


def test_node_get_info_response_field_numbers() -> None:
    response = csi.NodeGetInfoResponse(
        node_id="n1", max_volumes_per_node=3, accessible_topology=csi.Topology(segments={"z": "a"}))
    expected = _len(1, b"n1") + _varint(2, 3) + _len(3, _len(1, _len(1, b"z") + _len(2, b"a")))
    assert response.SerializeToString() == expected
    assert csi.NodeGetInfoResponse.FromString(expected) == response
    max_volumes = csi.NodeGetInfoResponse.DESCRIPTOR.fields_by_name["max_volumes_per_node"]
    assert max_volumes.type == descriptor.FieldDescriptor.TYPE_INT64


def test_stage_and_volume_field_numbers() -> None:
    stage = {f.name: f.number for f in csi.NodeStageVolumeRequest.DESCRIPTOR.fields}
    assert stage == {"volume_id": 1, "publish_context": 2, "staging_target_path": 3, "volume_capability": 4,
                     "secrets": 5, "volume_context": 6}
    volume = {f.name: f.number for f in csi.Volume.DESCRIPTOR.fields}
    assert volume == {"capacity_bytes": 1, "volume_id": 2, "volume_context": 3, "content_source": 4,
                      "accessible_topology": 5}
    publish = {f.name: f.number for f in csi.ControllerPublishVolumeRequest.DESCRIPTOR.fields}
    assert publish == {"volume_id": 1, "node_id": 2, "volume_capability": 3, "readonly": 4, "secrets": 5,
                       "volume_context": 6}
    stats = csi.NodeGetVolumeStatsResponse(usage=[csi.VolumeUsage(available=1, total=2, used=3,
                                                                  unit=csi.VolumeUsage.BYTES)])
    assert stats.SerializeToString() == _len(1, _varint(1, 1) + _varint(2, 2) + _varint(3, 3) + _varint(4, 1))


def test_enum_values_match_the_spec() -> None:
    def values(enum: descriptor.EnumDescriptor) -> dict[str, int]:
        return {v.name: v.number for v in enum.values}

    assert values(csi.VolumeCapability.AccessMode.Mode.DESCRIPTOR) == {
        "UNKNOWN": 0, "SINGLE_NODE_WRITER": 1, "SINGLE_NODE_READER_ONLY": 2, "MULTI_NODE_READER_ONLY": 3,
        "MULTI_NODE_SINGLE_WRITER": 4, "MULTI_NODE_MULTI_WRITER": 5, "SINGLE_NODE_SINGLE_WRITER": 6,
        "SINGLE_NODE_MULTI_WRITER": 7,
    }
    assert values(csi.PluginCapability.Service.Type.DESCRIPTOR) == {
        "UNKNOWN": 0, "CONTROLLER_SERVICE": 1, "VOLUME_ACCESSIBILITY_CONSTRAINTS": 2,
        "GROUP_CONTROLLER_SERVICE": 3, "SNAPSHOT_METADATA_SERVICE": 4,
    }
    assert values(csi.PluginCapability.VolumeExpansion.Type.DESCRIPTOR) == {"UNKNOWN": 0, "ONLINE": 1, "OFFLINE": 2}
    assert values(csi.ControllerServiceCapability.RPC.Type.DESCRIPTOR) == {
        "UNKNOWN": 0, "CREATE_DELETE_VOLUME": 1, "PUBLISH_UNPUBLISH_VOLUME": 2, "LIST_VOLUMES": 3,
        "GET_CAPACITY": 4, "CREATE_DELETE_SNAPSHOT": 5, "LIST_SNAPSHOTS": 6, "CLONE_VOLUME": 7,
        "PUBLISH_READONLY": 8, "EXPAND_VOLUME": 9, "LIST_VOLUMES_PUBLISHED_NODES": 10, "VOLUME_CONDITION": 11,
        "GET_VOLUME": 12, "SINGLE_NODE_MULTI_WRITER": 13, "MODIFY_VOLUME": 14, "GET_SNAPSHOT": 15,
    }
    assert values(csi.NodeServiceCapability.RPC.Type.DESCRIPTOR) == {
        "UNKNOWN": 0, "STAGE_UNSTAGE_VOLUME": 1, "GET_VOLUME_STATS": 2, "EXPAND_VOLUME": 3,
        "VOLUME_CONDITION": 4, "SINGLE_NODE_MULTI_WRITER": 5, "VOLUME_MOUNT_GROUP": 6,
    }
    assert values(csi.VolumeUsage.Unit.DESCRIPTOR) == {"UNKNOWN": 0, "BYTES": 1, "INODES": 2}
    assert values(csi.BlockMetadataType.DESCRIPTOR) == {"UNKNOWN": 0, "FIXED_LENGTH": 1, "VARIABLE_LENGTH": 2}
    # Capabilities travel as oneofs around these enums.
    cap = csi.NodeServiceCapability(rpc=csi.NodeServiceCapability.RPC(
        type=csi.NodeServiceCapability.RPC.STAGE_UNSTAGE_VOLUME))
    assert cap.SerializeToString() == _len(1, _varint(1, 1))


def _flag(options: message.Message, extension: descriptor.FieldDescriptor) -> bool:
    """Whether a custom option such as ``(csi_secret) = true`` is set on a descriptor's options."""
    return any(field.full_name == extension.full_name and value is True for field, value in options.ListFields())


def _all_fields(message_type: descriptor.Descriptor) -> list[descriptor.FieldDescriptor]:
    fields = list(message_type.fields)
    for nested in message_type.nested_types:
        fields.extend(_all_fields(nested))
    return fields


def test_secret_fields_carry_the_csi_secret_option() -> None:
    assert csi.csi_secret.number == 1059
    assert {ext.name: ext.number for ext in (csi.alpha_field, csi.alpha_message, csi.alpha_method,
                                             csi.alpha_service, csi.alpha_enum, csi.alpha_enum_value)} == {
        "alpha_field": 1060, "alpha_message": 1060, "alpha_method": 1060, "alpha_service": 1060,
        "alpha_enum": 1060, "alpha_enum_value": 1060}
    secrets = csi.NodeStageVolumeRequest.DESCRIPTOR.fields_by_name["secrets"]
    assert secrets.number == 5
    assert _flag(secrets.GetOptions(), csi.csi_secret) is True
    # Upstream marks every `secrets` map, and nothing else, as secret.
    tagged: set[str] = set()
    for message_type in csi.DESCRIPTOR.message_types_by_name.values():
        for field in _all_fields(message_type):
            if _flag(field.GetOptions(), csi.csi_secret):
                tagged.add(field.full_name)
            else:
                assert field.name != "secrets", field.full_name
    assert len(tagged) == 19 and all(name.endswith(".secrets") for name in tagged)
    # The one secret field that is also alpha.
    expand = csi.NodeExpandVolumeRequest.DESCRIPTOR.fields_by_name["secrets"].GetOptions()
    assert _flag(expand, csi.csi_secret) and _flag(expand, csi.alpha_field)


def test_alpha_annotations_where_upstream_has_them() -> None:
    controller = csi.DESCRIPTOR.services_by_name["Controller"]
    alpha_rpcs = {m.name for m in controller.methods if _flag(m.GetOptions(), csi.alpha_method)}
    assert alpha_rpcs == {"GetSnapshot", "ControllerGetVolume"}
    assert _flag(csi.DESCRIPTOR.services_by_name["SnapshotMetadata"].GetOptions(), csi.alpha_service)
    assert not _flag(csi.DESCRIPTOR.services_by_name["GroupController"].GetOptions(), csi.alpha_service)
    assert _flag(csi.VolumeCondition.DESCRIPTOR.GetOptions(), csi.alpha_message)
    mode = csi.VolumeCapability.AccessMode.Mode.DESCRIPTOR.values_by_name
    assert _flag(mode["SINGLE_NODE_MULTI_WRITER"].GetOptions(), csi.alpha_enum_value)
    assert not _flag(mode["SINGLE_NODE_WRITER"].GetOptions(), csi.alpha_enum_value)


def test_plugin_registration_api() -> None:
    assert reg.DESCRIPTOR.package == "pluginregistration"
    service = reg.DESCRIPTOR.services_by_name["Registration"]
    assert _rpcs(service, "pluginregistration") == {
        "GetInfo": ("InfoRequest", "PluginInfo", False),
        "NotifyRegistrationStatus": ("RegistrationStatus", "RegistrationStatusResponse", False),
    }
    assert service.methods_by_name["GetInfo"].full_name == "pluginregistration.Registration.GetInfo"
    info = reg.PluginInfo(type="CSIPlugin", name="d", endpoint="/s", supported_versions=["1.0.0", "1.1"])
    assert info.SerializeToString() == (
        _len(1, b"CSIPlugin") + _len(2, b"d") + _len(3, b"/s") + _len(4, b"1.0.0") + _len(4, b"1.1"))
    status = reg.RegistrationStatus(plugin_registered=True, error="e")
    assert status.SerializeToString() == _varint(1, 1) + _len(2, b"e")
    assert not reg.InfoRequest.DESCRIPTOR.fields and not reg.RegistrationStatusResponse.DESCRIPTOR.fields
