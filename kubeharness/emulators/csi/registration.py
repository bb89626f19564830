"""Kubelet plugin registration: how a kubelet's plugin watcher discovers the driver.

With a registration directory (kubelet's is ``/var/lib/kubelet/plugins_registry``) the plugin serves the
``pluginregistration.Registration`` service on ``<dir>/<driver>-reg.sock``, as node-driver-registrar
would arrange for a real driver: GetInfo names the driver, its type ``CSIPlugin``, the CSI endpoint and
the supported versions; kubelet answers with NotifyRegistrationStatus, kept here for tests to read.
"""

from __future__ import annotations

import logging

from kubeharness.wire.pluginregistration import api_pb2 as reg

log = logging.getLogger(__name__)

CSI_PLUGIN_TYPE = "CSIPlugin"
SUPPORTED_VERSIONS = ("1.0.0",)


class RegistrationService:
    """pluginregistration.Registration for one CSI driver."""

    def __init__(self, driver_name: str, csi_endpoint: str) -> None:
        self.driver_name = driver_name
        self.csi_endpoint = csi_endpoint
        self.statuses: list[tuple[bool, str]] = []  # what kubelet said, oldest first

    async def GetInfo(self, request: reg.InfoRequest) -> reg.PluginInfo:
        return reg.PluginInfo(type=CSI_PLUGIN_TYPE, name=self.driver_name, endpoint=self.csi_endpoint,
                              supported_versions=list(SUPPORTED_VERSIONS))

    async def NotifyRegistrationStatus(self, request: reg.RegistrationStatus) -> reg.RegistrationStatusResponse:
        self.statuses.append((request.plugin_registered, request.error))
        if request.plugin_registered:
            log.info("kubelet registered CSI driver %s", self.driver_name)
        else:
            log.error("kubelet refused CSI driver %s: %s", self.driver_name, request.error)
        return reg.RegistrationStatusResponse()
