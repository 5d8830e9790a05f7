"""asyncio client for squeeze.v1.Squeeze (grpc.aio)."""
import grpc

from squeeze import _requests as rq
from squeeze.errors import from_rpc_error
from squeeze.v1 import squeeze_pb2 as pb
from squeeze.v1 import squeeze_pb2_grpc as pb_grpc


class AsyncClient:
    """The asyncio twin of squeeze.Client: the same methods as coroutines, and `generate` as an
    async iterator. Create it inside a running event loop."""

    def __init__(self, target="localhost:50051", *, timeout=None, channel=None, options=None,
                 tls=False, ca_file=None, cert_file=None, key_file=None, api_key=None):
        if channel is None and rq.wants_tls(tls, ca_file, cert_file, key_file):
            channel = grpc.aio.secure_channel(
                target, rq.channel_credentials(ca_file, cert_file, key_file),
                options=options or ())
        self._channel = channel or grpc.aio.insecure_channel(target, options=options or ())
        self._auth = rq.auth_metadata(api_key)
        self._stub = pb_grpc.SqueezeStub(self._channel)
        self._timeout = timeout
        self._health = self._channel.unary_unary(
            "/grpc.health.v1.Health/Check", request_serializer=None, response_deserializer=None)

    async def close(self):
        await self._channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    def _metadata(self, context):
        return rq.routing(context) + self._auth

    def _deadline(self, timeout):
        return self._timeout if timeout is None else timeout

    async def register_context(self, name, content, *, add_bos=None, index=None,
                               on_progress=None, chat_document=None, timeout=None):
        req = rq.register_request(name, content, add_bos, index, chat_document)
        info = None
        try:
            async for event in self._stub.RegisterContext(req, timeout=self._deadline(timeout),
                                                           metadata=self._metadata(name)):
                if on_progress:
                    on_progress(event)
                if event.stage == pb.RegisterContextEvent.DONE:
                    info = event.context
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return info

    async def generate(self, input, context="", *, timeout=None, **options):
        """Async iterator of GenerateResponse; leaving it early cancels the request."""
        req = rq.generate_request(input, context, **options)
        call = self._stub.Generate(req, timeout=self._deadline(timeout),
                                   metadata=self._metadata(context))
        try:
            async for response in call:
                yield response
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        finally:
            call.cancel()

    async def complete(self, input, context="", **options):
        completion = rq.Completion()
        async for response in self.generate(input, context, **options):
            completion.add(response)
        return completion

    async def _unary(self, method, request, context, timeout):
        try:
            return await method(request, timeout=self._deadline(timeout),
                                metadata=self._metadata(context))
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    async def get_context(self, name, *, timeout=None):
        return await self._unary(self._stub.GetContext, pb.GetContextRequest(name=name), name,
                                 timeout)

    async def list_contexts(self, *, timeout=None):
        resp = await self._unary(self._stub.ListContexts, pb.ListContextsRequest(), "", timeout)
        return list(resp.contexts)

    async def delete_context(self, name, *, timeout=None):
        resp = await self._unary(self._stub.DeleteContext, pb.DeleteContextRequest(name=name),
                                 name, timeout)
        return resp.deleted

    async def tokenize(self, text, *, add_bos=False, timeout=None):
        return await self._unary(self._stub.Tokenize,
                                 pb.TokenizeRequest(text=text, add_bos=add_bos), "", timeout)

    async def health(self, service="", *, timeout=5.0):
        try:
            return rq.is_serving(await self._health(rq.health_request(service), timeout=timeout))
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
