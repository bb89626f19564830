"""The Identity service: the driver's name and version, what it offers, and whether it is ready."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from kubeharness.emulators.csi.config import CsiConfig
from kubeharness.wire.csi import csi_pb2 as csi

Service = csi.PluginCapability.Service
Expansion = csi.PluginCapability.VolumeExpansion


def _own_version() -> str:
    try:
        return version("kubeharness")
    except PackageNotFoundError:
        return "0.0.0"


class IdentityService:
    """csi.v1.Identity."""

    def __init__(self, config: CsiConfig) -> None:
        self.config = config

    async def GetPluginInfo(self, request: csi.GetPluginInfoRequest) -> csi.GetPluginInfoResponse:
        return csi.GetPluginInfoResponse(name=self.config.driver_name,
                                         vendor_version=self.config.vendor_version or _own_version(),
                                         manifest={"emulator": "kubeharness", "mode": self.config.mode})

    async def GetPluginCapabilities(
        self, request: csi.GetPluginCapabilitiesRequest
    ) -> csi.GetPluginCapabilitiesResponse:
        return csi.GetPluginCapabilitiesResponse(capabilities=[
            csi.PluginCapability(service=Service(type=Service.CONTROLLER_SERVICE)),
            csi.PluginCapability(service=Service(type=Service.VOLUME_ACCESSIBILITY_CONSTRAINTS)),
            csi.PluginCapability(volume_expansion=Expansion(type=Expansion.ONLINE)),
        ])

    async def Probe(self, request: csi.ProbeRequest) -> csi.ProbeResponse:
        response = csi.ProbeResponse()
        response.ready.value = self.config.ready
        return response
