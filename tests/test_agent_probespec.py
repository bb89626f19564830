"""Probes, lifecycle hooks, terminationMessagePolicy and the sidecar restartPolicy in pod manifests: the API
server's defaults, its validation rules and its error wording, table by table, then a rejected manifest as the
file source and the running agent report it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeharness.agent.pod.defaults import ManifestError, pod_from_object, pods_from_manifest
from kubeharness.agent.pod.model import (
    Container,
    ExecAction,
    GRPCAction,
    HTTPGetAction,
    Lifecycle,
    Pod,
    Probe,
    SleepAction,
    TCPSocketAction,
)
from kubeharness.agent.sources.static import FileSource
from kubeharness.clock import VirtualClock
from tests.test_agent_e2e import NODE as E2E_NODE
from tests.test_agent_e2e import helper, phase, pod, start_node, stop_node

NODE = "node-a"
ORIGIN = "/etc/kubernetes/manifests/web.yaml"
EXEC = {"exec": {"command": ["true"]}}


def manifest(containers: list[dict[str, Any]], init: list[dict[str, Any]] | None = None,
             **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"containers": containers, **spec}
    if init is not None:
        body["initContainers"] = init
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}, "spec": body}


def app(**fields: Any) -> dict[str, Any]:
    """A pod whose one app container has ``fields``."""
    return manifest([{"name": "app", "image": "busybox:1.36", **fields}])


def init(**fields: Any) -> dict[str, Any]:
    """A pod whose one init container has ``fields``."""
    return manifest([{"name": "app", "image": "busybox:1.36"}], init=[{"name": "setup", "image": "busybox:1.36",
                                                                        **fields}])


def make(obj: dict[str, Any]) -> Pod:
    return pod_from_object(obj, "file", NODE, origin=ORIGIN)


def only(pod: Pod) -> Container:
    return pod.all_containers()[-1] if not pod.spec.init_containers else pod.spec.init_containers[0]


# ---- defaults (SetDefaults_Probe, SetDefaults_HTTPGetAction, the grpc service, SetDefaults_Container)


def test_probe_defaults_field_by_field() -> None:
    pod = make(app(livenessProbe={"httpGet": {"port": 8080}}, readinessProbe={"grpc": {"port": 9000}},
                   startupProbe={"tcpSocket": {"port": 5432}},
                   lifecycle={"postStart": {"httpGet": {"port": "http"}}, "preStop": {"sleep": {"seconds": 5}}},
                   ports=[{"name": "http", "containerPort": 80}]))
    c = pod.spec.containers[0]
    assert c.liveness_probe is not None and c.readiness_probe is not None and c.startup_probe is not None
    for probe in (c.liveness_probe, c.readiness_probe, c.startup_probe):
        assert probe.initial_delay_seconds == 0
        assert probe.timeout_seconds == 1
        assert probe.period_seconds == 10
        assert probe.success_threshold == 1
        assert probe.failure_threshold == 3
        assert probe.termination_grace_period_seconds is None
    assert c.liveness_probe.handler == HTTPGetAction(port=8080, path="/", host="", scheme="HTTP", headers=())
    assert c.readiness_probe.handler == GRPCAction(port=9000, service="")
    assert c.startup_probe.handler == TCPSocketAction(port=5432, host="")
    assert c.lifecycle == Lifecycle(post_start=HTTPGetAction(port="http", path="/", scheme="HTTP"),
                                    pre_stop=SleepAction(seconds=5))
    assert c.termination_message_policy == "File" and c.restart_policy == ""
    # the defaults are written into the object too, as the API server stores them (and /pods serves them)
    raw = pod.raw["spec"]["containers"][0]
    numbers = {"timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3}
    assert raw["livenessProbe"] == {"httpGet": {"port": 8080, "path": "/", "scheme": "HTTP"}, **numbers}
    assert raw["readinessProbe"] == {"grpc": {"port": 9000, "service": ""}, **numbers}
    assert raw["startupProbe"] == {"tcpSocket": {"port": 5432}, **numbers}
    assert raw["lifecycle"]["postStart"] == {"httpGet": {"port": "http", "path": "/", "scheme": "HTTP"}}
    assert raw["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    assert raw["terminationMessagePolicy"] == "File"


def test_zero_means_unset_as_in_go() -> None:
    zeros = {"initialDelaySeconds": 0, "timeoutSeconds": 0, "periodSeconds": 0, "successThreshold": 0,
             "failureThreshold": 0}
    c = make(app(readinessProbe={"httpGet": {"port": 80, "path": "", "scheme": ""}, **zeros})).spec.containers[0]
    assert c.readiness_probe == Probe(handler=HTTPGetAction(port=80, path="/", scheme="HTTP"), initial_delay_seconds=0,
                                      timeout_seconds=1, period_seconds=10, success_threshold=1, failure_threshold=3)


def test_empty_termination_message_fields_are_defaulted() -> None:
    # regression: setdefault kept an explicit "" (SetDefaults_Container defaults the empty string)
    c = make(app(terminationMessagePath="", terminationMessagePolicy="")).spec.containers[0]
    assert (c.termination_message_path, c.termination_message_policy) == ("/dev/termination-log", "File")


def test_explicit_values_are_kept() -> None:
    c = make(app(livenessProbe={**EXEC, "initialDelaySeconds": 7, "timeoutSeconds": 2, "periodSeconds": 3,
                                "failureThreshold": 5, "terminationGracePeriodSeconds": 4},
                 terminationMessagePolicy="FallbackToLogsOnError")).spec.containers[0]
    assert c.liveness_probe == Probe(handler=ExecAction(command=("true",)), initial_delay_seconds=7, timeout_seconds=2,
                                     period_seconds=3, success_threshold=1, failure_threshold=5,
                                     termination_grace_period_seconds=4)
    assert c.termination_message_policy == "FallbackToLogsOnError"


# ---- valid manifests into the model


HTTP_FULL = {"httpGet": {"path": "/healthz", "port": "http", "host": "127.0.0.1", "scheme": "HTTPS",
                         "httpHeaders": [{"name": "X-Custom", "value": "a"}, {"name": "Accept", "value": "*/*"}]}}

VALID: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("exec liveness", app(livenessProbe={"exec": {"command": ["cat", "/tmp/healthy"]}, "initialDelaySeconds": 5,
                                         "periodSeconds": 5}),
     {"liveness_probe": Probe(handler=ExecAction(command=("cat", "/tmp/healthy")), initial_delay_seconds=5,
                              period_seconds=5)}),
    ("httpGet readiness, named port, https, headers, successThreshold 3",
     app(ports=[{"name": "http", "containerPort": 8080}],
         readinessProbe={**HTTP_FULL, "successThreshold": 3, "failureThreshold": 1, "timeoutSeconds": 2}),
     {"readiness_probe": Probe(handler=HTTPGetAction(port="http", path="/healthz", host="127.0.0.1", scheme="HTTPS",
                                                     headers=(("X-Custom", "a"), ("Accept", "*/*"))),
                               timeout_seconds=2, success_threshold=3, failure_threshold=1)}),
    ("tcpSocket startup with its own grace period",
     app(startupProbe={"tcpSocket": {"port": 5432, "host": "10.0.0.1"}, "failureThreshold": 30,
                       "terminationGracePeriodSeconds": 5}),
     {"startup_probe": Probe(handler=TCPSocketAction(port=5432, host="10.0.0.1"), failure_threshold=30,
                             termination_grace_period_seconds=5)}),
    ("grpc liveness with a service", app(livenessProbe={"grpc": {"port": 9090, "service": "health"}}),
     {"liveness_probe": Probe(handler=GRPCAction(port=9090, service="health"))}),
    ("a named port the container does not declare: resolved (or not) by the prober",
     app(livenessProbe={"tcpSocket": {"port": "metrics"}}),
     {"liveness_probe": Probe(handler=TCPSocketAction(port="metrics"))}),
    ("port bounds", app(livenessProbe={"httpGet": {"port": 1}}, readinessProbe={"tcpSocket": {"port": 65535}}),
     {"liveness_probe": Probe(handler=HTTPGetAction(port=1)),
      "readiness_probe": Probe(handler=TCPSocketAction(port=65535))}),
    ("hooks: exec postStart, httpGet preStop",
     app(lifecycle={"postStart": {"exec": {"command": ["sh", "-c", "echo hi"]}},
                    "preStop": {"httpGet": {"port": 80, "path": "/quit"}}}),
     {"lifecycle": Lifecycle(post_start=ExecAction(command=("sh", "-c", "echo hi")),
                             pre_stop=HTTPGetAction(port=80, path="/quit"))}),
    ("tcpSocket hooks are read (the API server keeps them for compatibility; they fail when run)",
     app(lifecycle={"postStart": {"tcpSocket": {"port": 80}}, "preStop": {"tcpSocket": {"port": "http"}}}),
     {"lifecycle": Lifecycle(post_start=TCPSocketAction(port=80), pre_stop=TCPSocketAction(port="http"))}),
    ("sleep 0 (allowed since 1.34)", app(lifecycle={"preStop": {"sleep": {"seconds": 0}}}),
     {"lifecycle": Lifecycle(pre_stop=SleepAction(seconds=0))}),
    ("sleep of the whole grace period", app(lifecycle={"preStop": {"sleep": {"seconds": 30}}}),
     {"lifecycle": Lifecycle(pre_stop=SleepAction(seconds=30))}),
    ("sleep bounded by the pod's own grace period",
     manifest([{"name": "app", "image": "i", "lifecycle": {"preStop": {"sleep": {"seconds": 60}}}}],
              terminationGracePeriodSeconds=60),
     {"lifecycle": Lifecycle(pre_stop=SleepAction(seconds=60))}),
    ("empty lifecycle", app(lifecycle={}), {"lifecycle": Lifecycle()}),
    ("nulls are unset", app(livenessProbe=None, lifecycle=None, restartPolicy=None, terminationMessagePolicy=None),
     {"liveness_probe": None, "lifecycle": Lifecycle(), "restart_policy": "", "termination_message_policy": "File"}),
    ("a sidecar with every probe and hooks",
     init(restartPolicy="Always", livenessProbe=EXEC, readinessProbe={"httpGet": {"port": 80}},
          startupProbe={"grpc": {"port": 9000}}, lifecycle={"preStop": {"sleep": {"seconds": 1}}}),
     {"restart_policy": "Always", "liveness_probe": Probe(handler=ExecAction(command=("true",))),
      "readiness_probe": Probe(handler=HTTPGetAction(port=80)), "startup_probe": Probe(handler=GRPCAction(port=9000)),
      "lifecycle": Lifecycle(pre_stop=SleepAction(seconds=1))}),
    ("an ordinary init container", init(), {"restart_policy": "", "liveness_probe": None, "lifecycle": Lifecycle()}),
    ("terminationMessagePolicy FallbackToLogsOnError", app(terminationMessagePolicy="FallbackToLogsOnError"),
     {"termination_message_policy": "FallbackToLogsOnError"}),
    ("keys of other handler kinds are unknown fields", app(livenessProbe={**EXEC, "sleep": {"seconds": 1}},
                                                           lifecycle={"postStart": {**EXEC, "grpc": {"port": 1}}}),
     {"liveness_probe": Probe(handler=ExecAction(command=("true",))),
      "lifecycle": Lifecycle(post_start=ExecAction(command=("true",)))}),
]


@pytest.mark.parametrize(("obj", "expected"), [(o, e) for _, o, e in VALID], ids=[n for n, _, _ in VALID])
def test_valid_manifests(obj: dict[str, Any], expected: dict[str, Any]) -> None:
    container = only(make(obj))
    for name, value in expected.items():
        assert getattr(container, name) == value, name


# ---- invalid manifests: the field path and the API server's message, exactly


C0 = "spec.containers[0]"
I0 = "spec.initContainers[0]"
NOT_SIDECAR = "Forbidden: may not be set for init containers without restartPolicy=Always"
PORT_RANGE = "must be between 1 and 65535, inclusive"
HEADER = ("a valid HTTP header must consist of alphanumeric characters or '-' "
          "(e.g. 'X-Header-Name', regex used for validation is '[-A-Za-z0-9]+')")
MORE_THAN_ONE = "Forbidden: may not specify more than 1 handler type"
NO_HANDLER = "Required value: must specify a handler type"
NEGATIVE = "must be greater than or equal to 0"

INVALID: list[tuple[dict[str, Any], str, str]] = [
    # handlers (validateHandler)
    (app(livenessProbe={}), f"{C0}.livenessProbe", NO_HANDLER),
    (app(livenessProbe={"sleep": {"seconds": 1}}), f"{C0}.livenessProbe", NO_HANDLER),
    (app(livenessProbe={**EXEC, "httpGet": {"port": 80}}), f"{C0}.livenessProbe.httpGet", MORE_THAN_ONE),
    (app(readinessProbe={"grpc": {"port": 9000}, "tcpSocket": {"port": 80}}), f"{C0}.readinessProbe.grpc",
     MORE_THAN_ONE),
    (app(startupProbe={"exec": {"command": []}, "grpc": {"port": 1}}), f"{C0}.startupProbe.exec.command",
     "Required value"),  # the first handler's own problem comes first, as in the API's error list
    (app(livenessProbe={"exec": {}}), f"{C0}.livenessProbe.exec.command", "Required value"),
    (app(livenessProbe={"exec": {"command": None}}), f"{C0}.livenessProbe.exec.command", "Required value"),
    # numbers (validateProbe, validateLivenessProbe, validateStartupProbe, validateReadinessProbe)
    (app(livenessProbe={**EXEC, "successThreshold": 2}), f"{C0}.livenessProbe.successThreshold",
     "Invalid value: 2: must be 1"),
    (app(startupProbe={**EXEC, "successThreshold": 3}), f"{C0}.startupProbe.successThreshold",
     "Invalid value: 3: must be 1"),
    (app(livenessProbe={**EXEC, "successThreshold": -1}), f"{C0}.livenessProbe.successThreshold",
     f"Invalid value: -1: {NEGATIVE}"),
    (app(readinessProbe={**EXEC, "initialDelaySeconds": -1}), f"{C0}.readinessProbe.initialDelaySeconds",
     f"Invalid value: -1: {NEGATIVE}"),
    (app(readinessProbe={**EXEC, "timeoutSeconds": -1}), f"{C0}.readinessProbe.timeoutSeconds",
     f"Invalid value: -1: {NEGATIVE}"),
    (app(readinessProbe={**EXEC, "periodSeconds": -5}), f"{C0}.readinessProbe.periodSeconds",
     f"Invalid value: -5: {NEGATIVE}"),
    (app(readinessProbe={**EXEC, "failureThreshold": -3}), f"{C0}.readinessProbe.failureThreshold",
     f"Invalid value: -3: {NEGATIVE}"),
    (app(livenessProbe={**EXEC, "terminationGracePeriodSeconds": 0}),
     f"{C0}.livenessProbe.terminationGracePeriodSeconds", "Invalid value: 0: must be greater than 0"),
    (app(startupProbe={**EXEC, "terminationGracePeriodSeconds": -2}),
     f"{C0}.startupProbe.terminationGracePeriodSeconds", "Invalid value: -2: must be greater than 0"),
    (app(readinessProbe={**EXEC, "terminationGracePeriodSeconds": 10}),
     f"{C0}.readinessProbe.terminationGracePeriodSeconds", "Invalid value: 10: must not be set for readinessProbes"),
    # ports (ValidatePortNumOrName) and the other handler fields
    (app(livenessProbe={"httpGet": {"port": 0}}), f"{C0}.livenessProbe.httpGet.port",
     f"Invalid value: 0: {PORT_RANGE}"),
    (app(livenessProbe={"httpGet": {}}), f"{C0}.livenessProbe.httpGet.port", f"Invalid value: 0: {PORT_RANGE}"),
    (app(livenessProbe={"tcpSocket": {"port": 65536}}), f"{C0}.livenessProbe.tcpSocket.port",
     f"Invalid value: 65536: {PORT_RANGE}"),
    (app(livenessProbe={"tcpSocket": {"port": "8080"}}), f"{C0}.livenessProbe.tcpSocket.port",
     'Invalid value: "8080": must contain at least one letter (a-z)'),
    (app(livenessProbe={"httpGet": {"port": "HTTP"}}), f"{C0}.livenessProbe.httpGet.port",
     'Invalid value: "HTTP": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)'),
    (app(livenessProbe={"httpGet": {"port": ""}}), f"{C0}.livenessProbe.httpGet.port",
     'Invalid value: "": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)'),
    (app(livenessProbe={"httpGet": {"port": "web--port"}}), f"{C0}.livenessProbe.httpGet.port",
     'Invalid value: "web--port": must not contain consecutive hyphens'),
    (app(livenessProbe={"httpGet": {"port": "-web"}}), f"{C0}.livenessProbe.httpGet.port",
     'Invalid value: "-web": must not begin or end with a hyphen'),
    (app(livenessProbe={"httpGet": {"port": "a-very-long-port-name"}}), f"{C0}.livenessProbe.httpGet.port",
     'Invalid value: "a-very-long-port-name": must be no more than 15 characters'),
    (app(livenessProbe={"httpGet": {"port": 80, "scheme": "http"}}), f"{C0}.livenessProbe.httpGet.scheme",
     'Unsupported value: "http": supported values: "HTTP", "HTTPS"'),
    (app(livenessProbe={"httpGet": {"port": 80, "httpHeaders": [{"name": "X-Ok", "value": ""},
                                                                {"name": "X Bad", "value": "1"}]}}),
     f"{C0}.livenessProbe.httpGet.httpHeaders", f'Invalid value: "X Bad": {HEADER}'),
    (app(livenessProbe={"httpGet": {"port": 80, "httpHeaders": [{"name": "X-A\n", "value": "1"}]}}),
     f"{C0}.livenessProbe.httpGet.httpHeaders", f'Invalid value: "X-A\\n": {HEADER}'),
    (app(livenessProbe={"grpc": {"port": 0}}), f"{C0}.livenessProbe.grpc.port", f"Invalid value: 0: {PORT_RANGE}"),
    (app(livenessProbe={"grpc": {}}), f"{C0}.livenessProbe.grpc.port", f"Invalid value: 0: {PORT_RANGE}"),
    # lifecycle (validateLifecycle, validateSleepAction)
    (app(lifecycle={"postStart": {}}), f"{C0}.lifecycle.postStart", NO_HANDLER),
    (app(lifecycle={"postStart": {"grpc": {"port": 9000}}}), f"{C0}.lifecycle.postStart", NO_HANDLER),
    (app(lifecycle={"preStop": {**EXEC, "sleep": {"seconds": 1}}}), f"{C0}.lifecycle.preStop.sleep", MORE_THAN_ONE),
    (app(lifecycle={"preStop": {"sleep": {"seconds": -1}}}), f"{C0}.lifecycle.preStop.sleep",
     "Invalid value: -1: must be non-negative and less than terminationGracePeriodSeconds (30)"),
    (app(lifecycle={"preStop": {"sleep": {"seconds": 31}}}), f"{C0}.lifecycle.preStop.sleep",
     "Invalid value: 31: must be non-negative and less than terminationGracePeriodSeconds (30)"),
    (manifest([{"name": "a", "image": "i", "lifecycle": {"postStart": {"sleep": {"seconds": 6}}}}],
              terminationGracePeriodSeconds=5),
     f"{C0}.lifecycle.postStart.sleep",
     "Invalid value: 6: must be non-negative and less than terminationGracePeriodSeconds (5)"),
    (app(lifecycle={"postStart": {"httpGet": {"port": 80, "scheme": "FTP"}}}),
     f"{C0}.lifecycle.postStart.httpGet.scheme",
     'Unsupported value: "FTP": supported values: "HTTP", "HTTPS"'),
    (app(lifecycle={"postStart": {"tcpSocket": {"port": 0}}}), f"{C0}.lifecycle.postStart.tcpSocket.port",
     f"Invalid value: 0: {PORT_RANGE}"),
    # restartPolicy (validateContainers, validateInitContainerRestartPolicy) and init containers
    (app(restartPolicy="Always"), f"{C0}.restartPolicy", "Forbidden: may not be set for non-init containers"),
    (app(restartPolicy="Never", livenessProbe={}), f"{C0}.livenessProbe", NO_HANDLER),  # probes come first
    (init(restartPolicy="Never"), f"{I0}.restartPolicy", 'Unsupported value: "Never": supported values: "Always"'),
    (init(restartPolicy=""), f"{I0}.restartPolicy", 'Unsupported value: "": supported values: "Always"'),
    (init(lifecycle={}), f"{I0}.lifecycle", NOT_SIDECAR),
    (init(livenessProbe=EXEC), f"{I0}.livenessProbe", NOT_SIDECAR),
    (init(readinessProbe=EXEC), f"{I0}.readinessProbe", NOT_SIDECAR),
    (init(startupProbe=EXEC), f"{I0}.startupProbe", NOT_SIDECAR),
    (init(restartPolicy="Always", livenessProbe={**EXEC, "successThreshold": 2}),
     f"{I0}.livenessProbe.successThreshold", "Invalid value: 2: must be 1"),
    (init(restartPolicy="Always", lifecycle={"preStop": {"sleep": {"seconds": 99}}}), f"{I0}.lifecycle.preStop.sleep",
     "Invalid value: 99: must be non-negative and less than terminationGracePeriodSeconds (30)"),
    (app(restartPolicyRules=[{"action": "Restart", "exitCodes": {"operator": "In", "values": [42]}}]),
     f"{C0}.restartPolicyRules",
     "not supported: the agent does not implement container restart rules (the ContainerRestartRules feature)"),
    # terminationMessagePolicy (validateContainerCommon)
    (app(terminationMessagePolicy="Sometimes"), f"{C0}.terminationMessagePolicy",
     'Unsupported value: "Sometimes": supported values: "File", "FallbackToLogsOnError"'),
    # the index of the container that is wrong
    (manifest([{"name": "a", "image": "i", "readinessProbe": EXEC},
               {"name": "b", "image": "i", "readinessProbe": {"tcpSocket": {"port": -1}}}]),
     "spec.containers[1].readinessProbe.tcpSocket.port", f"Invalid value: -1: {PORT_RANGE}"),
    # values of a type Go's decoder refuses
    (app(livenessProbe="exec true"), f"{C0}.livenessProbe", "must be an object, got 'exec true'"),
    (app(livenessProbe={"exec": ["true"]}), f"{C0}.livenessProbe.exec", "must be an object, got ['true']"),
    (app(livenessProbe={"exec": {"command": "true"}}), f"{C0}.livenessProbe.exec.command",
     "must be a list, got 'true'"),
    (app(livenessProbe={"exec": {"command": ["sh", 1]}}), f"{C0}.livenessProbe.exec.command[1]",
     "must be a string, got 1"),
    (app(livenessProbe={**EXEC, "periodSeconds": "10"}), f"{C0}.livenessProbe.periodSeconds",
     "must be an integer, got '10'"),
    (app(livenessProbe={**EXEC, "periodSeconds": True}), f"{C0}.livenessProbe.periodSeconds",
     "must be an integer, got True"),
    (app(livenessProbe={**EXEC, "timeoutSeconds": 1.5}), f"{C0}.livenessProbe.timeoutSeconds",
     "must be an integer, got 1.5"),
    (app(livenessProbe={**EXEC, "periodSeconds": 2**31}), f"{C0}.livenessProbe.periodSeconds",
     "must be a 32-bit integer, got 2147483648"),
    (app(livenessProbe={**EXEC, "terminationGracePeriodSeconds": 2**63}),
     f"{C0}.livenessProbe.terminationGracePeriodSeconds", f"must be a 64-bit integer, got {2**63}"),
    (app(livenessProbe={"httpGet": {"port": 80.5}}), f"{C0}.livenessProbe.httpGet.port",
     "must be a port number or name, got 80.5"),
    (app(livenessProbe={"httpGet": {"port": True}}), f"{C0}.livenessProbe.httpGet.port",
     "must be a port number or name, got True"),
    (app(livenessProbe={"grpc": {"port": "grpc"}}), f"{C0}.livenessProbe.grpc.port", "must be an integer, got 'grpc'"),
    (app(livenessProbe={"grpc": {"port": 9000, "service": 5}}), f"{C0}.livenessProbe.grpc.service",
     "must be a string, got 5"),
    (app(livenessProbe={"httpGet": {"port": 80, "httpHeaders": ["X-A: 1"]}}),
     f"{C0}.livenessProbe.httpGet.httpHeaders[0]",
     "must be an object with name and value, got 'X-A: 1'"),
    (app(livenessProbe={"httpGet": {"port": 80, "httpHeaders": [{"name": "X-A", "value": 1}]}}),
     f"{C0}.livenessProbe.httpGet.httpHeaders[0].value", "must be a string, got 1"),
    (app(lifecycle=["postStart"]), f"{C0}.lifecycle", "must be an object, got ['postStart']"),
    (app(lifecycle={"preStop": "sleep 5"}), f"{C0}.lifecycle.preStop", "must be an object, got 'sleep 5'"),
    (app(lifecycle={"preStop": {"sleep": {"seconds": "5"}}}), f"{C0}.lifecycle.preStop.sleep.seconds",
     "must be an integer, got '5'"),
    (app(restartPolicy=1), f"{C0}.restartPolicy", "must be a string, got 1"),
    (app(terminationMessagePolicy=["File"]), f"{C0}.terminationMessagePolicy", "must be a string, got ['File']"),
]


@pytest.mark.parametrize(("obj", "field", "problem"), INVALID)
def test_invalid_manifests_name_the_field_and_the_value(obj: dict[str, Any], field: str, problem: str) -> None:
    with pytest.raises(ManifestError) as caught:
        make(obj)
    assert (caught.value.field, caught.value.problem) == (field, problem)
    assert caught.value.message == f"{ORIGIN}: {field}: {problem}"


def test_a_bad_probe_in_a_list_names_the_item() -> None:
    good = app(livenessProbe=EXEC)
    bad = app(livenessProbe={**EXEC, "successThreshold": 2})
    data = json.dumps({"apiVersion": "v1", "kind": "PodList", "items": [good, bad]})
    with pytest.raises(ManifestError) as caught:
        pods_from_manifest(data, "http", NODE, origin="http://127.0.0.1/pods")
    assert str(caught.value) == ("http://127.0.0.1/pods: items[1].spec.containers[0].livenessProbe.successThreshold: "
                                 "Invalid value: 2: must be 1")


# ---- regressions found while adding these rules (validation.py)


@pytest.mark.parametrize(("obj", "field"), [
    ({**app(), "metadata": {"name": "web", "namespace": "default\n"}}, "metadata.namespace"),
    (manifest([{"name": "app\n", "image": "i"}]), f"{C0}.name"),
    (app(ports=[{"containerPort": 80, "name": "http\n"}]), f"{C0}.ports[0].name"),
    (manifest([{"name": "app", "image": "i"}], hostname="h\n"), "spec.hostname"),
])
def test_a_trailing_newline_is_not_part_of_a_valid_name(obj: dict[str, Any], field: str) -> None:
    # Python's "$" matches before a final newline: these names were accepted and reached the runtime
    with pytest.raises(ManifestError) as caught:
        make(obj)
    assert caught.value.field == field


def test_a_container_port_name_may_not_have_consecutive_hyphens() -> None:
    # IsValidPortName refuses "--"; the DNS-label pattern used for container ports let it through
    with pytest.raises(ManifestError) as caught:
        make(app(ports=[{"containerPort": 80, "name": "web--ui"}]))
    assert caught.value.field == f"{C0}.ports[0].name"
    assert make(app(ports=[{"containerPort": 80, "name": "web-ui"}])).spec.containers[0].ports[0].name == "web-ui"


# ---- the spec hash covers probes, hooks and the new policies


HASH_BASE = {"name": "app", "image": "busybox:1.36", "livenessProbe": {"httpGet": {"port": 8080}}}
HASH_CHANGES: list[tuple[str, Any]] = [
    ("livenessProbe", {"httpGet": {"port": 8081}}), ("livenessProbe", {"httpGet": {"port": 8080, "path": "/x"}}),
    ("livenessProbe", {"httpGet": {"port": 8080}, "periodSeconds": 11}),
    ("livenessProbe", {"httpGet": {"port": 8080}, "failureThreshold": 4}),
    ("livenessProbe", {"tcpSocket": {"port": 1}}),
    ("livenessProbe", None), ("readinessProbe", EXEC), ("startupProbe", EXEC),
    ("lifecycle", {"preStop": {"sleep": {"seconds": 1}}}), ("terminationMessagePolicy", "FallbackToLogsOnError"),
]


@pytest.mark.parametrize(("key", "value"), HASH_CHANGES)
def test_the_spec_hash_changes_with_a_probe_or_hook(key: str, value: Any) -> None:
    before = make(manifest([HASH_BASE])).spec.containers[0].spec_hash
    after = make(manifest([{**HASH_BASE, key: value}])).spec.containers[0].spec_hash
    assert before != after


def test_the_spec_hash_ignores_spelled_out_defaults() -> None:
    spelled = {**HASH_BASE, "terminationMessagePolicy": "File",
               "livenessProbe": {"httpGet": {"port": 8080, "path": "/", "scheme": "HTTP"}, "timeoutSeconds": 1,
                                 "periodSeconds": 0, "successThreshold": 1, "failureThreshold": 3}}
    assert make(manifest([spelled])).spec.containers[0].spec_hash == \
        make(manifest([HASH_BASE])).spec.containers[0].spec_hash


def test_the_input_object_is_not_modified() -> None:
    obj = app(livenessProbe={"httpGet": {"port": 80}}, lifecycle={"preStop": {"httpGet": {"port": 80}}})
    before = copy.deepcopy(obj)
    make(obj)
    assert obj == before


# ---- any garbage in these fields gets a ManifestError, never another exception


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)
_keys = st.sampled_from(["exec", "httpGet", "tcpSocket", "grpc", "sleep", "command", "port", "path", "scheme",
                         "host", "service", "seconds", "httpHeaders", "name", "value", "periodSeconds",
                         "successThreshold", "terminationGracePeriodSeconds", "postStart", "preStop"])
_handlers = st.recursive(_json, lambda inner: st.dictionaries(_keys, inner, max_size=4), max_leaves=10)
_fields = st.dictionaries(st.sampled_from(["livenessProbe", "readinessProbe", "startupProbe", "lifecycle",
                                           "restartPolicy", "terminationMessagePolicy"]), _handlers, max_size=3)


@given(fields=_fields, as_init=st.booleans())
def test_any_probe_or_hook_value_is_accepted_or_refused_cleanly(fields: dict[str, Any], as_init: bool) -> None:
    obj = init(**fields) if as_init else app(**fields)
    try:
        container = only(make(obj))
    except ManifestError as exc:
        assert exc.field.startswith(I0 if as_init else C0), exc.message
        return
    for probe in (container.liveness_probe, container.readiness_probe, container.startup_probe):
        assert probe is None or (probe.period_seconds >= 1 and probe.timeout_seconds >= 1
                                 and probe.failure_threshold >= 1 and probe.success_threshold >= 1)


# ---- a rejected manifest, as the file source and the running agent report it


BAD_PROBE = "spec.containers[0].livenessProbe.successThreshold: Invalid value: 2: must be 1"


async def test_the_file_source_reports_a_bad_probe_and_runs_the_rest(tmp_path: Path) -> None:
    source = FileSource(tmp_path, NODE, VirtualClock())
    (tmp_path / "bad.json").write_text(json.dumps(app(livenessProbe={**EXEC, "successThreshold": 2})))
    good = app(readinessProbe={"httpGet": {"port": 80}}, livenessProbe=EXEC)
    good["metadata"]["name"] = "good"
    (tmp_path / "good.json").write_text(json.dumps(good))
    update = await source.check_once()
    assert update is not None and sorted(update.pods) == [f"good-{NODE}_default"]
    assert update.pods[f"good-{NODE}_default"].spec.containers[0].readiness_probe == \
        Probe(handler=HTTPGetAction(port=80))
    assert source.errors == {str(tmp_path / "bad.json"): BAD_PROBE}


async def test_the_agent_reports_a_manifest_with_a_bad_probe_and_runs_the_others(tmp_path: Path) -> None:
    node = await start_node(tmp_path)
    try:
        bad = pod("badprobe", {**helper("app"), "livenessProbe": {**EXEC, "successThreshold": 2}})
        node.write("badprobe", bad)
        node.write("badinit", pod("badinit", helper("app"), init=[{**helper("setup"), "readinessProbe": EXEC}]))
        node.write("fine", pod("fine", helper("app")))
        pods = await node.until(lambda p: phase(p, "fine") == "Running")
        assert set(pods) == {f"fine-{E2E_NODE}"}
        errors = node.agent.sources[0].errors
        assert errors == {str(node.manifests / "badprobe.json"): BAD_PROBE,
                          str(node.manifests / "badinit.json"): f"{I0}.readinessProbe: {NOT_SIDECAR}"}
    finally:
        await stop_node(node)
