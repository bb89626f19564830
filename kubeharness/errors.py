"""The error tree every emulator raises, and the one place where it becomes a gRPC status.

Handlers raise these exceptions with a message that names what was wrong; the gRPC edge
(:mod:`kubeharness.grpcserve`) turns them into the status code below. Anything else that escapes a
handler is a bug in kubeharness: the client gets INTERNAL with a short message, never a traceback,
and the traceback goes to the emulator's log.

    KubeharnessError            UNKNOWN (what containerd answers for an unclassified error)
    ├── InvalidArgument         INVALID_ARGUMENT
    ├── NotFound                NOT_FOUND
    ├── AlreadyExists           ALREADY_EXISTS
    ├── FailedPrecondition      FAILED_PRECONDITION
    ├── Aborted                 ABORTED
    ├── OutOfRange              OUT_OF_RANGE
    ├── ResourceExhausted       RESOURCE_EXHAUSTED
    ├── DeadlineExceeded        DEADLINE_EXCEEDED
    ├── Unauthenticated         UNAUTHENTICATED
    ├── Unavailable             UNAVAILABLE
    └── Unimplemented           UNIMPLEMENTED
"""

from __future__ import annotations

import grpc


class KubeharnessError(Exception):
    """Base of all errors a client may see; ``code`` is the gRPC status it maps to."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(KubeharnessError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(KubeharnessError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(KubeharnessError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(KubeharnessError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(KubeharnessError):
    code = grpc.StatusCode.ABORTED


class OutOfRange(KubeharnessError):
    code = grpc.StatusCode.OUT_OF_RANGE


class ResourceExhausted(KubeharnessError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(KubeharnessError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(KubeharnessError):
    code = grpc.StatusCode.UNAUTHENTICATED


class Unavailable(KubeharnessError):
    code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(KubeharnessError):
    code = grpc.StatusCode.UNIMPLEMENTED


class WithCode(KubeharnessError):
    """An error whose status code is given, not implied by its class."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class InjectedFault(WithCode):
    """A status a fault plan told an emulator to answer with; its code is the plan's."""
