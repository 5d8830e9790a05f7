// An OpenAI-compatible HTTP endpoint over the engine, for applications that speak only that
// API (cpp-httplib, on its own port):
//   POST /v1/completions       `prompt` (text or token ids) -> completion
//   POST /v1/chat/completions  `messages`, rendered by the engine with the model's chat template
//                              (after a `context` registered as a chat document, they continue it)
//   GET  /v1/models            this server's model
// `"stream": true` answers with server-sent events (`data: {chunk}` ... `data: [DONE]`).
// Extensions: `context` names a registered context prepended to the prompt (Generate's
// `context`); `attention_mode` (squeezed | dense | recent | pages), `budget`,
// `budget_policy` (calibrated | per_step), `mass`, `hierarchical`, `top_k`, `min_p`,
// `repetition_penalty`, `ignore_eos`, `stop_token_ids`. OpenAI fields the server does not
// implement (n > 1, echo, suffix, best_of > 1, logit_bias, tools) get 501. Errors are OpenAI error
// objects with the HTTP status of the engine's code (400, 404, 429, 501, 503, ...). Requests share
// the engine, its limits and its metrics with gRPC, and its security: HTTPS with the server's
// certificates when TLS is on, and with API keys every request needs `Authorization: Bearer <key>`
// (401 otherwise) and sees only its tenant's contexts.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/scheduler/engine.h"
#include "server/auth.h"
#include "server/convert.h"

struct ssl_ctx_st;  // OpenSSL's SSL_CTX

namespace httplib {
class Server;
class Request;
class Response;
}  // namespace httplib

namespace squeeze::server {

class SqueezeMetrics;

struct OpenAIGatewayOptions {
  std::string address;     // host:port; port 0 picks a free one
  std::string model_name;  // the model id reported and accepted
  RequestLimits limits;
  std::shared_ptr<ApiKeys> api_keys;  // null: no keys, every request is tenant ""
  // Set: HTTPS (server/tls.h MetricsTlsSetup configures the SSL_CTX); false refuses to start.
  std::function<bool(ssl_ctx_st&)> tls_setup;
};

class OpenAIGateway {
 public:
  // `engine` and `metrics` (may be null) must outlive the gateway.
  static absl::StatusOr<std::unique_ptr<OpenAIGateway>> Start(OpenAIGatewayOptions options,
                                                              Engine* engine,
                                                              SqueezeMetrics* metrics);
  // Stops listening; streams in flight are cancelled.
  ~OpenAIGateway();
  OpenAIGateway(const OpenAIGateway&) = delete;
  OpenAIGateway& operator=(const OpenAIGateway&) = delete;

  int port() const { return port_; }

 private:
  OpenAIGateway(OpenAIGatewayOptions options, Engine* engine, SqueezeMetrics* metrics);
  void HandleGenerate(const httplib::Request& req, httplib::Response& res, bool chat);
  void HandleModels(const httplib::Request& req, httplib::Response& res) const;
  // The caller's tenant from its `Authorization` header (UNAUTHENTICATED without a valid key).
  absl::StatusOr<std::string> Authenticate(const httplib::Request& req) const;

  const OpenAIGatewayOptions options_;
  Engine* const engine_;
  SqueezeMetrics* const metrics_;
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace squeeze::server
