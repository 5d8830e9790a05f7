"""Synchronous client for squeeze.v1.Squeeze."""
import grpc

from squeeze import _requests as rq
from squeeze.errors import from_rpc_error
from squeeze.v1 import squeeze_pb2 as pb
from squeeze.v1 import squeeze_pb2_grpc as pb_grpc


class Client:
    """A connection to one Squeeze server (or to a proxy in front of several).

    Every call that names a context sends it as routing metadata (CONTEXT_HEADER). Failures
    raise the typed exceptions of squeeze.errors. `timeout` (seconds) is the default deadline of
    each call; None means none.

    Security (README: Security): `tls=True` (implied by any of the files) connects with TLS,
    trusting `ca_file` (PEM; None: the system roots); `cert_file` + `key_file` present a client
    certificate (mutual TLS); `api_key` is sent as `authorization: Bearer <key>` with every call.
    """

    def __init__(self, target="localhost:50051", *, timeout=None, channel=None, options=None,
                 tls=False, ca_file=None, cert_file=None, key_file=None, api_key=None):
        if channel is None and rq.wants_tls(tls, ca_file, cert_file, key_file):
            channel = grpc.secure_channel(
                target, rq.channel_credentials(ca_file, cert_file, key_file),
                options=options or ())
        self._channel = channel or grpc.insecure_channel(target, options=options or ())
        self._auth = rq.auth_metadata(api_key)
        self._stub = pb_grpc.SqueezeStub(self._channel)
        self._timeout = timeout
        self._health = self._channel.unary_unary(
            "/grpc.health.v1.Health/Check", request_serializer=None, response_deserializer=None)

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _metadata(self, context):
        return rq.routing(context) + self._auth

    def _deadline(self, timeout):
        return self._timeout if timeout is None else timeout

    def register_context(self, name, content, *, add_bos=None, index=None, on_progress=None,
                         chat_document=None, timeout=None):
        """Registers `content` (text or token ids) under `name`; returns its ContextInfo.
        `on_progress` receives each RegisterContextEvent; `index` is an IndexOptions or a dict.
        `chat_document` ("system" or "user") registers the text as a chat's document: generate
        then takes the conversation that follows it as messages."""
        req = rq.register_request(name, content, add_bos, index, chat_document)
        info = None
        try:
            for event in self._stub.RegisterContext(req, timeout=self._deadline(timeout),
                                                     metadata=self._metadata(name)):
                if on_progress:
                    on_progress(event)
                if event.stage == pb.RegisterContextEvent.DONE:
                    info = event.context
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return info

    def generate(self, input, context="", *, timeout=None, **options):
        """Streams GenerateResponse messages; the last carries finish_reason, usage and timings.
        Closing the iterator early cancels the request on the server."""
        req = rq.generate_request(input, context, **options)
        call = self._stub.Generate(req, timeout=self._deadline(timeout),
                                   metadata=self._metadata(context))
        try:
            for response in call:
                yield response
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        finally:
            call.cancel()

    def complete(self, input, context="", **options):
        """The whole completion of a Generate call as a Completion."""
        completion = rq.Completion()
        for response in self.generate(input, context, **options):
            completion.add(response)
        return completion

    def _unary(self, method, request, context, timeout):
        try:
            return method(request, timeout=self._deadline(timeout), metadata=self._metadata(context))
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def get_context(self, name, *, timeout=None):
        return self._unary(self._stub.GetContext, pb.GetContextRequest(name=name), name, timeout)

    def list_contexts(self, *, timeout=None):
        return list(self._unary(self._stub.ListContexts, pb.ListContextsRequest(), "",
                                timeout).contexts)

    def delete_context(self, name, *, timeout=None):
        return self._unary(self._stub.DeleteContext, pb.DeleteContextRequest(name=name), name,
                           timeout).deleted

    def tokenize(self, text, *, add_bos=False, timeout=None):
        return self._unary(self._stub.Tokenize, pb.TokenizeRequest(text=text, add_bos=add_bos),
                           "", timeout)

    def health(self, service="", *, timeout=5.0):
        """True when the server reports SERVING for `service` ("" = the whole server)."""
        try:
            return rq.is_serving(self._health(rq.health_request(service), timeout=timeout))
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
