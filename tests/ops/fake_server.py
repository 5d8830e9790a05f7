"""A recording squeeze.v1 server in Python: it stores each request and its metadata and answers
with canned responses, so a test can see exactly what a client sent (routing header, parsed
flags) and how the client shows what comes back."""
from concurrent import futures

import grpc
from squeeze.v1 import squeeze_pb2 as pb
from squeeze.v1 import squeeze_pb2_grpc as pb_grpc


class RecordingSqueeze(pb_grpc.SqueezeServicer):
    def __init__(self):
        self.calls = []  # (method, request, {metadata key: value})
        self.error = None  # (grpc.StatusCode, message) returned by every call when set

    def _record(self, method, request, context):
        self.calls.append((method, request, dict(context.invocation_metadata())))
        if self.error:
            context.abort(*self.error)

    def RegisterContext(self, request, context):
        self._record("RegisterContext", request, context)
        yield pb.RegisterContextEvent(stage=pb.RegisterContextEvent.DONE, progress=1,
                                      context=pb.ContextInfo(name=request.name, num_tokens=7))

    def Generate(self, request, context):
        self._record("Generate", request, context)
        yield pb.GenerateResponse(token_ids=[11], text="he", logprobs=[pb.TokenLogprob(
            logprob=-0.5, top=[pb.TopLogprob(id=11, logprob=-0.5), pb.TopLogprob(id=12,
                                                                                logprob=-1.5)])])
        yield pb.GenerateResponse(token_ids=[12], text="llo", logprobs=[pb.TokenLogprob(
            logprob=-0.25)], finish_reason=pb.LENGTH, usage=pb.Usage(completion_tokens=2))

    def GetContext(self, request, context):
        self._record("GetContext", request, context)
        return pb.ContextInfo(name=request.name, num_tokens=7)

    def ListContexts(self, request, context):
        self._record("ListContexts", request, context)
        return pb.ListContextsResponse()

    def DeleteContext(self, request, context):
        self._record("DeleteContext", request, context)
        return pb.DeleteContextResponse(deleted=True)

    def Tokenize(self, request, context):
        self._record("Tokenize", request, context)
        return pb.TokenizeResponse(ids=[1], pieces=[b"a"])


class FakeServer:
    def __init__(self):
        self.servicer = RecordingSqueeze()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_SqueezeServicer_to_server(self.servicer, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def __enter__(self):
        self.server.start()
        return self

    def __exit__(self, *exc):
        self.server.stop(None)
