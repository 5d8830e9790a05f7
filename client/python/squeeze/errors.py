"""Typed errors: one exception class per gRPC status code the server returns."""
import grpc


class SqueezeError(Exception):
    """A call failed; `code` is the grpc.StatusCode, `details` the server's message."""

    code = grpc.StatusCode.UNKNOWN

    def __init__(self, details, code=None):
        super().__init__(details)
        self.details = details
        if code is not None:
            self.code = code

    def __str__(self):
        return f"{self.code.name}: {self.details}"


class InvalidArgument(SqueezeError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(SqueezeError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(SqueezeError):
    code = grpc.StatusCode.ALREADY_EXISTS


class ResourceExhausted(SqueezeError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(SqueezeError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(SqueezeError):
    code = grpc.StatusCode.ABORTED


class Unavailable(SqueezeError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(SqueezeError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(SqueezeError):
    code = grpc.StatusCode.CANCELLED


class Unauthenticated(SqueezeError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(SqueezeError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unimplemented(SqueezeError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(SqueezeError):
    code = grpc.StatusCode.INTERNAL


_BY_CODE = {cls.code: cls for cls in (
    InvalidArgument, NotFound, AlreadyExists, ResourceExhausted, FailedPrecondition, Aborted,
    Unavailable, DeadlineExceeded, Cancelled, Unauthenticated, PermissionDenied, Unimplemented,
    Internal)}


def from_rpc_error(error):
    """The typed exception for a grpc.RpcError (or grpc.aio.AioRpcError)."""
    code = error.code()
    cls = _BY_CODE.get(code, SqueezeError)
    return cls(error.details() or "", code=code)
