// Assembles a running Squeeze server: model, tokenizer, context store, engine, gRPC service,
// health checking and reflection. Used by main() and by in-process end-to-end tests.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/scheduler/engine.h"
#include "server/convert.h"
#include "server/health_endpoints.h"
#include "server/metrics_exposer.h"
#include "server/openai_gateway.h"
#include "server/service.h"
#include "server/squeeze_metrics.h"
#include "server/tls.h"

namespace squeeze::server {

struct ServerOptions {
  std::string model_dir;
  std::string tokenizer_dir;    // empty: model_dir
  std::string device = "auto";  // auto | cpu | cuda
  bool random_weights = false;  // weights of config.json's shape, made on the device
  uint64_t random_seed = 1;
  std::string address = "127.0.0.1:50051";  // host:port; port 0 picks a free one
  std::string state_dir;                    // empty: contexts are not persisted
  int64_t max_context_memory = 0;           // bytes of resident context KV; 0: unlimited
  int64_t max_message_bytes = 64 << 20;
  std::string metrics_address;  // Prometheus GET /metrics host:port; empty: off
  // A directory shared by replicas (engine/store/shared_context_store.h); empty: off.
  std::string shared_store;
  std::string openai_address;  // OpenAI-compatible HTTP host:port; empty: off
  std::string model_name;      // the model id the OpenAI endpoint reports; empty: model dir name
  EngineOptions engine;
  RequestLimits limits;  // max_input_bytes / max_input_tokens 0: derived from the model
  // Security (README "Security"): TLS on both ports when tls.cert_file is set; API keys
  // (bearer tokens mapped to tenants) when api_keys_file is set.
  TlsFiles tls;
  std::string api_keys_file;
};

// Checks every option a flag sets, naming the flag: INVALID_ARGUMENT "--window must be >= 1 (got
// 0)". main() calls it before loading anything; Start() calls it too.
absl::Status ValidateServerOptions(const ServerOptions& options);

class SqueezeServer {
 public:
  static absl::StatusOr<std::unique_ptr<SqueezeServer>> Start(ServerOptions options);
  ~SqueezeServer();

  int port() const { return port_; }
  int metrics_port() const { return exposer_ ? exposer_->port() : 0; }  // 0: metrics off
  int openai_port() const { return openai_ ? openai_->port() : 0; }     // 0: endpoint off
  Engine& engine() { return *engine_; }
  // Graceful stop: health NOT_SERVING, new work refused with UNAVAILABLE, running streams get
  // up to `grace` to finish, then the gRPC server stops.
  void Shutdown(absl::Duration grace);
  void Wait() { server_->Wait(); }

 private:
  SqueezeServer() = default;
  // Declaration order is destruction order in reverse: the exposer (which reads the engine)
  // goes first, the metrics (which the engine's callbacks update) last.
  std::shared_ptr<SqueezeMetrics> metrics_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<SqueezeService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<metrics::Exposer> exposer_;
  std::unique_ptr<OpenAIGateway> openai_;
  std::atomic<ServingPhase> phase_{ServingPhase::kStarting};  // for the probes
  int port_ = 0;
  bool stopped_ = false;
};

// A fingerprint of the model directory (config, tokenizer and weight file sizes) stored with
// persisted contexts so a context is never served by another model.
absl::StatusOr<std::string> ModelFingerprint(const std::string& model_dir);

}  // namespace squeeze::server
