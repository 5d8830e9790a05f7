#include "server/openai_gateway.h"

#include <httplib.h>
#include <sys/socket.h>

#include <atomic>
#include <deque>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "server/openai_protocol.h"
#include "server/squeeze_metrics.h"
#include "spdlog/spdlog.h"

namespace squeeze::server {
namespace {

using nlohmann::json;

// Engine events of one request, from the engine thread to the HTTP worker that answers it.
class EventQueue {
 public:
  void Push(GenerateEvent event) {
    absl::MutexLock lock(&mu_);
    events_.push_back(std::move(event));
  }
  // The next event, or nothing after `timeout` (the caller checks its client meanwhile).
  std::optional<GenerateEvent> Pop(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !events_.empty(); };
    if (!mu_.AwaitWithTimeout(absl::Condition(&ready), timeout)) return std::nullopt;
    GenerateEvent e = std::move(events_.front());
    events_.pop_front();
    return e;
  }

 private:
  absl::Mutex mu_;
  std::deque<GenerateEvent> events_ ABSL_GUARDED_BY(mu_);
};

std::string NewId(bool chat) {
  static std::atomic<uint64_t> counter{0};
  return absl::StrCat(chat ? "chatcmpl-" : "cmpl-", absl::ToUnixMicros(absl::Now()), "-",
                      counter.fetch_add(1));
}

void SendError(httplib::Response& res, const absl::Status& status) {
  res.status = openai::HttpStatus(status);
  res.set_content(openai::Dump(openai::ErrorBody(status)), "application/json");
}

absl::Status SplitAddress(const std::string& address, std::string* host, int* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), port) ||
      *port < 0 || *port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("OpenAI address '", address, "': expected host:port"));
  }
  *host = address.substr(0, colon);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') {
    *host = host->substr(1, host->size() - 2);
  }
  if (host->empty()) *host = "0.0.0.0";
  return absl::OkStatus();
}

constexpr absl::Duration kPollInterval = absl::Milliseconds(100);

}  // namespace

OpenAIGateway::OpenAIGateway(OpenAIGatewayOptions options, Engine* engine, SqueezeMetrics* metrics)
    : options_(std::move(options)), engine_(engine), metrics_(metrics) {}

absl::StatusOr<std::unique_ptr<OpenAIGateway>> OpenAIGateway::Start(OpenAIGatewayOptions options,
                                                                    Engine* engine,
                                                                    SqueezeMetrics* metrics) {
  std::string host;
  int port = 0;
  if (absl::Status st = SplitAddress(options.address, &host, &port); !st.ok()) return st;
  std::unique_ptr<OpenAIGateway> g(new OpenAIGateway(std::move(options), engine, metrics));
  OpenAIGateway* self = g.get();
  if (g->options_.tls_setup) {
    auto https = std::make_unique<httplib::SSLServer>(
        [self](SSL_CTX& ctx) { return self->options_.tls_setup(ctx); });
    if (!https->is_valid()) {
      return absl::InvalidArgumentError(
          "OpenAI endpoint TLS: the certificate, key or client CA could not be loaded");
    }
    g->http_ = std::move(https);
  } else {
    g->http_ = std::make_unique<httplib::Server>();
  }
  // SO_REUSEADDR only: httplib's default adds SO_REUSEPORT, which would let a second server
  // bind the same port and take half the requests.
  g->http_->set_socket_options([](socket_t sock) {
    const int one = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  });
  g->http_->Post("/v1/completions", [self](const httplib::Request& req, httplib::Response& res) {
    self->HandleGenerate(req, res, /*chat=*/false);
  });
  g->http_->Post("/v1/chat/completions",
                 [self](const httplib::Request& req, httplib::Response& res) {
                   self->HandleGenerate(req, res, /*chat=*/true);
                 });
  g->http_->Get("/v1/models", [self](const httplib::Request& req, httplib::Response& res) {
    self->HandleModels(req, res);
  });
  // One worker per streaming request: as many as the engine runs at once, plus a few to answer
  // (or refuse) the rest.
  const size_t workers = static_cast<size_t>(engine->options().max_running) + 8;
  g->http_->new_task_queue = [workers] { return new httplib::ThreadPool(workers); };
  // The largest body a valid request can have: the input limit with every byte JSON-escaped
  // (\uXXXX), stop token ids, and room for the other fields. Larger bodies get 413 unread.
  const RequestLimits& limits = g->options_.limits;
  g->http_->set_payload_max_length(
      static_cast<size_t>(std::max<int64_t>(limits.max_input_bytes, 0)) * 6 +
      static_cast<size_t>(limits.max_tokens_cap) * 64 + (1 << 20));
  g->port_ = port == 0 ? g->http_->bind_to_any_port(host) : port;
  if (port != 0 && !g->http_->bind_to_port(host, port)) g->port_ = -1;
  if (g->port_ <= 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on OpenAI address ", g->options_.address));
  }
  g->thread_ = std::thread([self] { self->http_->listen_after_bind(); });
  spdlog::info(
      "serving the OpenAI-compatible API on port {} (/v1/completions, "
      "/v1/chat/completions, /v1/models){}",
      g->port_, g->options_.tls_setup ? " over HTTPS" : "");
  return g;
}

OpenAIGateway::~OpenAIGateway() {
  http_->stop();
  if (thread_.joinable()) thread_.join();
}

absl::StatusOr<std::string> OpenAIGateway::Authenticate(const httplib::Request& req) const {
  if (!options_.api_keys) return std::string();
  return options_.api_keys->Authenticate(req.get_header_value("Authorization"));
}

void OpenAIGateway::HandleModels(const httplib::Request& req, httplib::Response& res) const {
  if (auto tenant = Authenticate(req); !tenant.ok()) return SendError(res, tenant.status());
  json model = {{"id", options_.model_name}, {"object", "model"}, {"owned_by", "squeeze"}};
  res.set_content(openai::Dump(json{{"object", "list"}, {"data", json::array({model})}}),
                  "application/json");
}

void OpenAIGateway::HandleGenerate(const httplib::Request& req, httplib::Response& res, bool chat) {
  auto reject = [&](const absl::Status& st) {
    if (metrics_) metrics_->ObserveGenerateRejected(st);
    SendError(res, st);
  };
  absl::StatusOr<std::string> tenant = Authenticate(req);
  if (!tenant.ok()) return reject(tenant.status());
  const json body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) return reject(absl::InvalidArgumentError("the body is not valid JSON"));
  auto parsed = openai::ParseRequest(body, chat);
  if (!parsed.ok()) return reject(parsed.status());
  auto request = ConvertGenerateRequest(parsed->generate, options_.limits);
  if (!request.ok()) return reject(request.status());
  const std::string id = NewId(chat);
  request->request_id = id;
  request->tenant = *tenant;
  auto queue = std::make_shared<EventQueue>();
  SqueezeMetrics* metrics = metrics_;
  auto handle = engine_->Generate(std::move(*request), [queue, metrics](GenerateEvent e) {
    if (e.final && metrics) metrics->ObserveGenerate(e);
    queue->Push(std::move(e));
  });
  if (!handle.ok()) return reject(handle.status());

  const int64_t created = absl::ToUnixSeconds(absl::Now());
  const Tokenizer* tokenizer = &engine_->tokenizer();
  openai::TokenText token_text = [tokenizer](int32_t id) { return tokenizer->TokenBytes(id); };
  const std::string model = options_.model_name;
  auto request_info = std::make_shared<openai::ParsedRequest>(std::move(*parsed));

  if (!request_info->stream) {
    std::string text;
    std::vector<int32_t> ids;
    std::vector<TokenLogprobs> logprobs;
    while (true) {
      std::optional<GenerateEvent> e = queue->Pop(kPollInterval);
      if (!e) continue;  // the engine finishes or fails every request it accepted
      if (e->final && !e->status.ok()) return SendError(res, e->status);
      text += e->text;
      ids.insert(ids.end(), e->tokens.begin(), e->tokens.end());
      logprobs.insert(logprobs.end(), e->logprobs.begin(), e->logprobs.end());
      if (e->final) {
        res.set_content(
            openai::Dump(openai::ResponseBody(*request_info, id, model, created, text, ids,
                                              logprobs, &*e, false, false, token_text)),
            "application/json");
        return;
      }
    }
  }

  // Server-sent events: one chunk per engine event, then `data: [DONE]`.
  auto work = *handle;
  auto first = std::make_shared<bool>(true);
  auto finished = std::make_shared<bool>(false);
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [=](size_t, httplib::DataSink& sink) {
        while (true) {
          if (!sink.is_writable()) {
            work->Cancel();
            return false;
          }
          std::optional<GenerateEvent> e = queue->Pop(kPollInterval);
          if (!e) continue;
          std::string out;
          if (e->final && !e->status.ok()) {
            // A stream that fails after it began ends with an error event (OpenAI's shape).
            out = absl::StrCat("data: ", openai::Dump(openai::ErrorBody(e->status)), "\n\n");
          } else {
            json chunk = openai::ResponseBody(*request_info, id, model, created, e->text, e->tokens,
                                              e->logprobs, e->final ? &*e : nullptr, true, *first,
                                              token_text);
            *first = false;
            out = absl::StrCat("data: ", openai::Dump(chunk), "\n\n");
          }
          if (e->final) out += "data: [DONE]\n\n";
          if (!sink.write(out.data(), out.size())) {
            work->Cancel();
            return false;
          }
          if (e->final) {
            *finished = true;
            sink.done();
          }
          return true;
        }
      },
      [work, finished](bool success) {
        if (!success || !*finished) work->Cancel();  // the client went away mid-stream
      });
}

}  // namespace squeeze::server
