#include "server/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "engine/chat/chat_template.h"
#include "engine/common/sha256.h"
#include "engine/common/status_macros.h"
#include "engine/model/generation_config.h"
#include "engine/model/load_model.h"
#include "engine/store/shared_context_store.h"
#include "server/health_endpoints.h"
#include "spdlog/spdlog.h"

namespace squeeze::server {
namespace {

absl::StatusOr<std::string> ReadWholeFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read '", path.string(), "'"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool IsLoopback(const std::string& address) {
  return address.starts_with("127.") || address.starts_with("localhost:") ||
         address.starts_with("[::1]:") || address.starts_with("unix:");
}

// Input limits from the model when the options leave them at 0: a text longer than the window
// times the longest token cannot fit (every token covers at most that many bytes).
void SetInputLimits(const Tokenizer& tokenizer, const ModelConfig& config, RequestLimits* limits) {
  if (limits->max_input_tokens == 0) limits->max_input_tokens = config.max_position_embeddings;
  if (limits->max_input_bytes == 0) {
    size_t longest = 1;
    for (int id = 0; id < tokenizer.vocab_size(); ++id) {
      longest = std::max(longest, tokenizer.TokenBytes(id).size());
    }
    limits->max_input_bytes =
        static_cast<int64_t>(config.max_position_embeddings) * static_cast<int64_t>(longest);
    spdlog::info("inputs are limited to {} bytes of text or {} token ids", limits->max_input_bytes,
                 limits->max_input_tokens);
  }
}

}  // namespace

absl::StatusOr<std::string> ModelFingerprint(const std::string& model_dir) {
  namespace fs = std::filesystem;
  std::string material;
  ASSIGN_OR_RETURN(std::string config, ReadWholeFile(fs::path(model_dir) / "config.json"));
  material += config;
  for (const char* name : {"tokenizer.model", "tokenizer.json"}) {
    if (fs::exists(fs::path(model_dir) / name)) {
      ASSIGN_OR_RETURN(std::string tok, ReadWholeFile(fs::path(model_dir) / name));
      material += Sha256Hex(tok);
    }
  }
  std::vector<std::string> shards;
  for (const auto& e : fs::directory_iterator(model_dir)) {
    if (e.path().extension() == ".safetensors") {
      shards.push_back(absl::StrCat(e.path().filename().string(), ":", e.file_size()));
    }
  }
  std::sort(shards.begin(), shards.end());
  for (const auto& s : shards) material += s;
  return Sha256Hex(material);
}

absl::StatusOr<std::unique_ptr<SqueezeServer>> SqueezeServer::Start(ServerOptions options) {
  RETURN_IF_ERROR(ValidateServerOptions(options));
  std::shared_ptr<ApiKeys> keys;
  if (!options.api_keys_file.empty()) {
    ASSIGN_OR_RETURN(keys, ApiKeys::Load(options.api_keys_file));
    spdlog::info("API keys: {} keys from {}; every call needs one", keys->size(),
                 options.api_keys_file);
  }
  const absl::Time t0 = absl::Now();
  const std::string tokenizer_dir =
      options.tokenizer_dir.empty() ? options.model_dir : options.tokenizer_dir;
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, LoadTokenizer(tokenizer_dir));
  ASSIGN_OR_RETURN(LoadedModel loaded, LoadModel({.model_dir = options.model_dir,
                                                  .device = options.device,
                                                  .random_weights = options.random_weights,
                                                  .random_seed = options.random_seed}));
  std::unique_ptr<LlamaModel> model = std::move(loaded.model);
  const ModelConfig& config = model->config();
  RETURN_IF_ERROR(CheckTokenizerFitsModel(*tokenizer, config.vocab_size, tokenizer_dir));
  // generation_config.json: the EOS ids of the tokenizer's own model, the sampling defaults.
  ASSIGN_OR_RETURN(
      options.engine.eos_token_ids,
      ResolveEosTokenIds(options.model_dir, options.tokenizer_dir, config, *tokenizer));
  ASSIGN_OR_RETURN(GenerationConfig generation, LoadGenerationConfig(options.model_dir));
  options.limits.default_sampling =
      DefaultSamplingParams(generation, options.limits.default_sampling);
  absl::StatusOr<std::unique_ptr<ChatTemplate>> chat_template = LoadChatTemplate(tokenizer_dir);
  if (chat_template.ok()) {
    spdlog::info("chat template of {} loaded: chat messages accepted", tokenizer_dir);
  } else {
    spdlog::warn("chat messages will be refused: {}", chat_template.status().ToString());
  }
  ASSIGN_OR_RETURN(std::string fingerprint, ModelFingerprint(options.model_dir));
  if (options.random_weights) {
    fingerprint = Sha256Hex(absl::StrCat(fingerprint, ":random:", options.random_seed));
  }
  spdlog::info("device {}: {}", loaded.device, loaded.description);
  spdlog::info(
      "model {}{}: {} layers, hidden {}, heads {}/{} (q/kv), head dim {}, vocab {}, "
      "window {} tokens; {:.2f} GiB of weights on the {}; loaded in {:.2f} s",
      options.model_dir, options.random_weights ? " (random weights)" : "", config.num_layers,
      config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim, config.vocab_size,
      config.max_position_embeddings, model->weight_bytes() / (1024.0 * 1024.0 * 1024.0),
      loaded.device, absl::ToDoubleSeconds(absl::Now() - t0));
  // Contexts' K/V stay on the host in the backend's KV dtype (bf16 on the GPU).
  const HostKvFormat kv_format{model->kv_shape(), model->backend().kv_dtype()};
  auto store = std::make_unique<ContextStore>(options.state_dir, fingerprint,
                                              options.max_context_memory, kv_format);
  RETURN_IF_ERROR(store->LoadPersisted());
  SetInputLimits(*tokenizer, config, &options.limits);
  if (!options.shared_store.empty()) {
    auto shared =
        std::make_unique<SharedContextStore>(options.shared_store, fingerprint, kv_format);
    RETURN_IF_ERROR(shared->Init());
    spdlog::info("sharing registered contexts through {}", shared->root());
    store->SetSharedStore(std::move(shared));
  }

  std::unique_ptr<SqueezeServer> server(new SqueezeServer());
  server->engine_ = std::make_unique<Engine>(options.engine, std::move(model), std::move(tokenizer),
                                             std::move(store), std::move(chat_template));
  server->engine_->Start();
  if (!options.metrics_address.empty()) {
    server->metrics_ = std::make_shared<SqueezeMetrics>(server->engine_.get());
    metrics::ExposerOptions exposer_options;
    if (options.tls.enabled()) exposer_options.tls_setup = MetricsTlsSetup(options.tls);
    auto exposer = metrics::Exposer::Start(options.metrics_address, exposer_options);
    if (!exposer.ok()) {
      server->engine_->Shutdown(absl::ZeroDuration());
      server->stopped_ = true;  // nothing else to stop: no gRPC server yet
      return exposer.status();
    }
    server->exposer_ = std::move(*exposer);
    server->exposer_->RegisterCollectable(server->metrics_);
    AddHealthEndpoints(*server->exposer_, server->engine_.get(), &server->phase_);
  }
  server->service_ = std::make_unique<SqueezeService>(server->engine_.get(), options.limits,
                                                      server->metrics_.get(), keys);
  if (!options.openai_address.empty()) {
    OpenAIGatewayOptions gateway{.address = options.openai_address,
                                 .model_name = options.model_name,
                                 .limits = options.limits,
                                 .api_keys = keys};
    if (options.tls.enabled()) gateway.tls_setup = MetricsTlsSetup(options.tls);
    if (gateway.model_name.empty()) {
      gateway.model_name = std::filesystem::path(options.model_dir).lexically_normal().filename();
      if (gateway.model_name.empty()) {
        gateway.model_name =
            std::filesystem::path(options.model_dir).lexically_normal().parent_path().filename();
      }
    }
    auto openai =
        OpenAIGateway::Start(std::move(gateway), server->engine_.get(), server->metrics_.get());
    if (!openai.ok()) {
      server->engine_->Shutdown(absl::ZeroDuration());
      server->stopped_ = true;
      return openai.status();
    }
    server->openai_ = std::move(*openai);
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.address,
                           options.tls.enabled() ? GrpcServerCredentials(options.tls)
                                                 : grpc::InsecureServerCredentials(),
                           &server->port_);
  // gRPC sets SO_REUSEPORT by default: a second server could bind the same port and take half
  // of the connections. Binding must fail instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.RegisterService(server->service_.get());
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  server->server_ = builder.BuildAndStart();
  if (!server->server_ || server->port_ == 0) {
    server->engine_->Shutdown(absl::ZeroDuration());
    server->stopped_ = true;  // ~SqueezeServer must not touch a server that never started
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options.address,
                     " (the port is in use or the host is not an address of this machine)"));
  }
  for (const std::string& address : {options.address, options.openai_address}) {
    if (!address.empty() && !options.tls.enabled() && !keys && !IsLoopback(address)) {
      spdlog::warn(
          "serving {} without TLS or API keys: anyone who reaches the port can read, use and "
          "delete every context (README: Security)",
          address);
    }
  }
  server->server_->GetHealthCheckService()->SetServingStatus(true);
  server->server_->GetHealthCheckService()->SetServingStatus("squeeze.v1.Squeeze", true);
  grpc::Server* grpc_server = server->server_.get();
  server->engine_->SetFaultHandler([grpc_server](const absl::Status& why) {
    spdlog::critical("engine faulted, health NOT_SERVING: {}", std::string(why.message()));
    grpc_server->GetHealthCheckService()->SetServingStatus(false);
  });
  server->phase_ = ServingPhase::kServing;
  spdlog::info("serving squeeze.v1.Squeeze on port {}", server->port_);
  return server;
}

void SqueezeServer::Shutdown(absl::Duration grace) {
  if (stopped_) return;
  stopped_ = true;
  phase_ = ServingPhase::kDraining;
  server_->GetHealthCheckService()->SetServingStatus(false);
  engine_->Shutdown(grace);
  openai_.reset();
  server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
}

SqueezeServer::~SqueezeServer() { Shutdown(absl::ZeroDuration()); }

}  // namespace squeeze::server
