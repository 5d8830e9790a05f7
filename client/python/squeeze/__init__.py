"""Python client for the Squeeze inference server (squeeze.v1 over gRPC).

    import squeeze
    with squeeze.Client("localhost:50051") as client:
        client.register_context("manual", open("manual.txt").read())
        for chunk in client.generate("\\nQuestion: ...\\nAnswer:", context="manual"):
            print(chunk.text, end="", flush=True)

squeeze.aio.AsyncClient is the asyncio twin. Errors are the classes of squeeze.errors.
"""
from squeeze._requests import CONTEXT_HEADER, Completion
from squeeze.client import Client
from squeeze.errors import (Aborted, AlreadyExists, Cancelled, DeadlineExceeded,
                            FailedPrecondition, Internal, InvalidArgument, NotFound,
                            PermissionDenied, ResourceExhausted, SqueezeError, Unauthenticated,
                            Unavailable, Unimplemented)
from squeeze.v1 import squeeze_pb2 as pb

__all__ = [
    "Client", "Completion", "CONTEXT_HEADER", "pb", "SqueezeError", "InvalidArgument", "NotFound",
    "AlreadyExists", "ResourceExhausted", "FailedPrecondition", "Aborted", "Unavailable",
    "DeadlineExceeded", "Cancelled", "Unauthenticated", "PermissionDenied", "Unimplemented",
    "Internal",
]
