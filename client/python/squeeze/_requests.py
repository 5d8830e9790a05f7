"""Builds squeeze.v1 request messages from keyword arguments (shared by the sync and asyncio
clients), and the routing metadata."""
from squeeze.v1 import squeeze_pb2 as pb

# Metadata naming the context a call is about: a proxy in front of several replicas routes all
# calls of one context to one replica by consistent hashing on it (deploy/helm/squeeze/files/nginx-affinity.conf.template).
CONTEXT_HEADER = "x-squeeze-context"

_MODES = {
    None: pb.AttentionOptions.MODE_UNSPECIFIED,
    "auto": pb.AttentionOptions.MODE_UNSPECIFIED,
    "squeezed": pb.AttentionOptions.SQUEEZED,
    "dense": pb.AttentionOptions.DENSE,
    "recent": pb.AttentionOptions.RECENT,
    "pages": pb.AttentionOptions.PAGES,
}

_BUDGET_POLICIES = {
    None: pb.AttentionOptions.BUDGET_POLICY_UNSPECIFIED,
    "calibrated": pb.AttentionOptions.CALIBRATED,
    "per_step": pb.AttentionOptions.PER_STEP,
}


def routing(context):
    return ((CONTEXT_HEADER, context),) if context else ()


def auth_metadata(api_key):
    """The API key as `authorization: Bearer <key>` metadata (README: Security)."""
    return (("authorization", "Bearer " + api_key),) if api_key else ()


def _read(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"{what} '{path}' cannot be read: {e.strerror}") from None


def channel_credentials(ca_file=None, cert_file=None, key_file=None):
    """TLS credentials: `ca_file` the PEM roots that sign the server's certificate (None: the
    system roots); `cert_file` + `key_file` a client certificate for mutual TLS."""
    if bool(cert_file) != bool(key_file):
        raise ValueError("cert_file and key_file (mutual TLS) must be given together")
    import grpc
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca_file, "ca_file") if ca_file else None,
        private_key=_read(key_file, "key_file") if key_file else None,
        certificate_chain=_read(cert_file, "cert_file") if cert_file else None)


def wants_tls(tls, ca_file, cert_file, key_file):
    return bool(tls or ca_file or cert_file or key_file)


_CHAT_DOCUMENTS = {
    None: pb.RegisterContextRequest.NOT_CHAT,
    "system": pb.RegisterContextRequest.SYSTEM_MESSAGE,
    "user": pb.RegisterContextRequest.FIRST_USER_MESSAGE,
}


def _chat_message(item):
    """A ChatMessage from a {"role": ..., "content": ...} dict or a (role, content) pair."""
    if isinstance(item, dict) and set(item) == {"role", "content"}:
        role, content = item["role"], item["content"]
    elif isinstance(item, (list, tuple)) and len(item) == 2:
        role, content = item
    else:
        return None
    if not isinstance(role, str) or not isinstance(content, str):
        return None
    return pb.ChatMessage(role=role, content=content)


def prompt(value, field):
    """A Prompt from text (str), token ids (a sequence of ints) or chat messages (a sequence of
    {"role", "content"} dicts or (role, content) pairs, rendered by the model's chat template)."""
    if isinstance(value, str):
        return pb.Prompt(text=value)
    if isinstance(value, (list, tuple)) and all(isinstance(i, int) for i in value):
        return pb.Prompt(token_ids=pb.TokenIds(ids=list(value)))
    if isinstance(value, (list, tuple)) and value:
        messages = [_chat_message(m) for m in value]
        if all(m is not None for m in messages):
            return pb.Prompt(messages=pb.ChatMessages(messages=messages))
    raise TypeError(f"{field} must be a str, a list of token ids or a list of chat messages "
                    f"(role, content), not {type(value).__name__}")


def register_request(name, content, add_bos=None, index=None, chat_document=None):
    """chat_document: "system" or "user" registers the text as the document of a chat (the
    context is the template rendered up to the first question); Generate then takes messages."""
    if chat_document not in _CHAT_DOCUMENTS:
        raise ValueError(f"chat_document must be system, user or None, not {chat_document!r}")
    req = pb.RegisterContextRequest(name=name, content=prompt(content, "content"),
                                    chat_document=_CHAT_DOCUMENTS[chat_document])
    if add_bos is not None:
        req.add_bos = add_bos
    if index is not None:
        if isinstance(index, dict):
            index = pb.IndexOptions(**index)
        req.index.CopyFrom(index)
    return req


def generate_request(input, context="", *, max_tokens=None, temperature=None, top_p=None,
                     top_k=None, min_p=None, repetition_penalty=None, presence_penalty=None,
                     frequency_penalty=None, seed=None, stop=(), stop_token_ids=(),
                     ignore_eos=False, logprobs=None, prompt_logprobs=None, mode=None, budget=None,
                     hierarchical=None, mass=None, budget_policy=None, query_block=None,
                     estimate_tail=None, request_id=""):
    if mode not in _MODES:
        raise ValueError(f"mode must be one of squeezed, dense, recent, pages or None, not {mode!r}")
    if budget_policy not in _BUDGET_POLICIES:
        raise ValueError(f"budget_policy must be calibrated, per_step or None, not {budget_policy!r}")
    if isinstance(stop, str):
        raise TypeError("stop must be a list of strings, not a str")
    req = pb.GenerateRequest(context=context or "", input=prompt(input, "input"),
                             stop=list(stop), stop_token_ids=list(stop_token_ids),
                             ignore_eos=ignore_eos, request_id=request_id)
    if max_tokens is not None:
        req.max_tokens = max_tokens
    if logprobs is not None:
        req.logprobs = logprobs
    if prompt_logprobs is not None:
        req.prompt_logprobs = prompt_logprobs
    sampling = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "min_p": min_p,
                "repetition_penalty": repetition_penalty, "presence_penalty": presence_penalty,
                "frequency_penalty": frequency_penalty, "seed": seed}
    for key, value in sampling.items():
        if value is not None:
            setattr(req.sampling, key, value)
    req.attention.mode = _MODES[mode]
    if budget is not None:
        req.attention.budget = budget
    if hierarchical is not None:
        req.attention.hierarchical = hierarchical
    if mass is not None:
        req.attention.mass = mass
    req.attention.budget_policy = _BUDGET_POLICIES[budget_policy]
    if query_block is not None:
        req.attention.query_block = query_block
    if estimate_tail is not None:
        req.attention.estimate_tail = estimate_tail
    return req


class Completion:
    """A whole Generate stream gathered: text, token ids, per-token logprobs, the input's scores
    when asked for (prompt_token_ids, and prompt_logprobs[i] for prompt_token_ids[i + 1]), and
    the last message's finish reason, usage and timings."""

    def __init__(self):
        self.text = ""
        self.token_ids = []
        self.logprobs = []
        self.prompt_token_ids = []
        self.prompt_logprobs = []
        self.finish_reason = None
        self.usage = None
        self.timings = None
        self.request_id = ""

    def add(self, response):
        self.text += response.text
        self.token_ids.extend(response.token_ids)
        self.logprobs.extend(response.logprobs)
        self.prompt_token_ids.extend(response.prompt_token_ids)
        self.prompt_logprobs.extend(response.prompt_logprobs)
        self.request_id = response.request_id
        if response.finish_reason != pb.FINISH_REASON_UNSPECIFIED:
            self.finish_reason = pb.FinishReason.Name(response.finish_reason)
            self.usage = response.usage
            self.timings = response.timings


# grpc.health.v1.HealthCheckRequest{service} and the SERVING answer, encoded by hand so the
# client needs no generated health module.
def health_request(service):
    data = service.encode()
    if len(data) > 127:
        raise ValueError("health service name too long")
    return b"" if not data else b"\x0a" + bytes([len(data)]) + data


def is_serving(response_bytes):
    return response_bytes[:2] == b"\x08\x01"
