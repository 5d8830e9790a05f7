// squeeze-server: serves squeeze.v1.Squeeze over gRPC.
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "server/logging.h"
#include "server/server.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

ABSL_FLAG(std::string, model, "",
          "Hugging Face model directory (config.json, *.safetensors, "
          "tokenizer.model)");
ABSL_FLAG(std::string, device, "auto",
          "Compute device: auto (cuda when a GPU is visible and supports the model, else cpu), "
          "cpu (fp32 reference) or cuda (bf16 weights and KV on GPU 0)");
ABSL_FLAG(bool, random_weights, false,
          "Random weights of --model's config.json shape, made on the device (benchmarks at "
          "real sizes, e.g. --model=bench/configs/llama3-8b --tokenizer=models/squeeze-demo)");
ABSL_FLAG(uint64_t, random_seed, 1, "Seed of --random_weights");
ABSL_FLAG(std::string, tokenizer, "",
          "Directory with tokenizer.model or tokenizer.json (default: --model)");
ABSL_FLAG(std::string, address, "127.0.0.1:50051",
          "gRPC listen address host:port (0.0.0.0:50051: every interface; see --tls_cert_file "
          "and --api_keys_file first)");
ABSL_FLAG(std::string, metrics_address, "127.0.0.1:9400",
          "Prometheus metrics listen address host:port, served at GET /metrics (empty: off)");
ABSL_FLAG(std::string, state_dir, "",
          "Directory where registered contexts are persisted and "
          "reloaded at start-up (empty: memory only)");
ABSL_FLAG(std::string, shared_store, "",
          "Directory shared by several replicas (a ReadWriteMany volume): registered contexts "
          "are written there, and a replica loads a context it does not hold from there on first "
          "use; list, get and delete see every replica's contexts (empty: off)");
ABSL_FLAG(std::string, openai_address, "",
          "OpenAI-compatible HTTP API listen address host:port: /v1/completions, "
          "/v1/chat/completions, /v1/models (empty: off)");
ABSL_FLAG(std::string, served_model_name, "",
          "Model id reported and accepted by the OpenAI API (default: --model's directory name)");
ABSL_FLAG(int64_t, max_context_memory_mb, 0,
          "Resident KV memory for registered contexts in MiB (0: unlimited)");
ABSL_FLAG(int, max_running, 64, "Sequences decoded together in one batch");
ABSL_FLAG(int, max_waiting, 256, "Queued Generate requests before RESOURCE_EXHAUSTED");
ABSL_FLAG(int, max_registrations, 4, "Registrations in progress before RESOURCE_EXHAUSTED");
ABSL_FLAG(int, prefill_chunk, 512, "Prefill tokens of one sequence or registration per step");
ABSL_FLAG(int, max_step_tokens, 2048, "Prefill tokens per engine step over all sequences");
ABSL_FLAG(double, default_budget, 0.1,
          "Squeezed Attention budget (kept fraction of context keys) when a request gives none");
ABSL_FLAG(std::string, budget_policy, "calibrated",
          "How a request's budget becomes a threshold when it names no policy: calibrated (the "
          "paper's, fixed at registration) or per_step (per layer and step, from the step's own "
          "scores)");
ABSL_FLAG(int, query_block, 0,
          "Squeezed Attention: select a user input of more tokens per block of this many tokens "
          "when a request gives no query_block (beyond the paper; 0: one selection per step)");
ABSL_FLAG(int, default_max_tokens, 128, "max_tokens when a request gives none");
ABSL_FLAG(int, max_tokens_cap, 4096, "Largest max_tokens a request may ask for");
ABSL_FLAG(int, max_message_mb, 64, "Largest gRPC message in MiB");
ABSL_FLAG(double, centroid_fraction, 0.05, "Default fine centroids per clustered token");
ABSL_FLAG(double, coarse_fraction, 0.01, "Default coarse centroids per clustered token");
ABSL_FLAG(bool, hierarchical, false, "Build the coarse level by default");
ABSL_FLAG(int, window, 100, "Default observation window (tokens always kept)");
ABSL_FLAG(int, sinks, 0, "Default attention sinks (first tokens always kept)");
ABSL_FLAG(int, kmeans_iterations, 25, "Default maximum k-means iterations");
ABSL_FLAG(double, kmeans_min_changed, 0.005,
          "Default k-means early stop: a head stops after a step that moved at most this fraction "
          "of its keys, in [0, 1) (0: only when none moved, the exact rule)");
ABSL_FLAG(double, grace_seconds, 30, "On SIGTERM/SIGINT: time given to running streams");
ABSL_FLAG(std::string, port_file, "",
          "Write the bound port to this file once serving "
          "(useful with --address=127.0.0.1:0)");
ABSL_FLAG(bool, log_json, false, "Log one JSON object per line");
ABSL_FLAG(std::string, log_level, "info", "trace|debug|info|warn|error|critical|off");

// Security and hardening (README: Security).
ABSL_FLAG(std::string, tls_cert_file, "",
          "PEM certificate chain: TLS on the gRPC and metrics ports (with --tls_key_file)");
ABSL_FLAG(std::string, tls_key_file, "", "PEM private key of --tls_cert_file");
ABSL_FLAG(std::string, tls_client_ca_file, "",
          "PEM CA certificates: clients of both ports must present a certificate they signed "
          "(mutual TLS)");
ABSL_FLAG(int, tls_reload_seconds, 60,
          "How often the TLS files are checked for changes (rotation without a restart)");
ABSL_FLAG(std::string, api_keys_file, "",
          "File of '<key> <tenant>' lines: every call needs 'authorization: Bearer <key>' and "
          "sees only its tenant's contexts (re-read when it changes)");
ABSL_FLAG(int64_t, max_input_bytes, 0,
          "Largest text of a request in bytes, refused before tokenizing (0: the model window x "
          "the longest token)");
ABSL_FLAG(int, registration_chunk_while_decoding, 64,
          "Registration prefill tokens per engine step while streams decode (bounds their "
          "inter-token gap)");

namespace {

// The signal watcher: a handler (process-wide, so whichever thread the kernel picks runs it,
// including threads libraries started before main) writes the signal number to a pipe, and a
// thread reads it. The first signal starts the drain; later ones are logged and ignored, so a
// second Ctrl-C or SIGTERM never cuts the streams the drain is finishing (SIGKILL still does).
int signal_pipe[2] = {-1, -1};

void OnSignal(int signal) {
  const int saved = errno;
  const char byte = static_cast<char>(signal);
  [[maybe_unused]] ssize_t n = write(signal_pipe[1], &byte, 1);
  errno = saved;
}

// Waits in poll(), which a signal always interrupts (SA_RESTART restarts read(), not poll()):
// a handler that runs late, after the call it interrupted resumed (ThreadSanitizer defers
// handlers to the thread's next libc call), still brings this thread back to read its byte.
int NextSignal() {
  pollfd pipe_in{signal_pipe[0], POLLIN, 0};
  char byte = 0;
  while (true) {
    if (poll(&pipe_in, 1, -1) > 0 && read(signal_pipe[0], &byte, 1) == 1) return byte;
  }
}

const char* SignalName(int signal) { return signal == SIGTERM ? "SIGTERM" : "SIGINT"; }

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Squeeze inference server. Example:\n"
      "  squeeze-server --model=models/squeeze-demo --address=127.0.0.1:50051");
  // --help lists this program's flags (absl's default matches only files named after the binary).
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "server/main.cc");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  absl::ParseCommandLine(argc, argv);
  if (pipe2(signal_pipe, O_CLOEXEC) != 0) {
    std::perror("pipe2");
    return 1;
  }
  struct sigaction action {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
  if (absl::Status st = squeeze::server::ConfigureLogging(absl::GetFlag(FLAGS_log_json),
                                                          absl::GetFlag(FLAGS_log_level));
      !st.ok()) {
    spdlog::error("{}", std::string(st.message()));
    return 2;
  }

  squeeze::server::ServerOptions o;
  o.model_dir = absl::GetFlag(FLAGS_model);
  o.tokenizer_dir = absl::GetFlag(FLAGS_tokenizer);
  o.device = absl::GetFlag(FLAGS_device);
  o.random_weights = absl::GetFlag(FLAGS_random_weights);
  o.random_seed = absl::GetFlag(FLAGS_random_seed);
  if (o.model_dir.empty()) {
    spdlog::error("--model is required (a Hugging Face model directory)");
    return 2;
  }
  o.address = absl::GetFlag(FLAGS_address);
  o.metrics_address = absl::GetFlag(FLAGS_metrics_address);
  o.state_dir = absl::GetFlag(FLAGS_state_dir);
  o.shared_store = absl::GetFlag(FLAGS_shared_store);
  o.openai_address = absl::GetFlag(FLAGS_openai_address);
  o.model_name = absl::GetFlag(FLAGS_served_model_name);
  o.max_context_memory = absl::GetFlag(FLAGS_max_context_memory_mb) * (int64_t{1} << 20);
  o.max_message_bytes = int64_t{absl::GetFlag(FLAGS_max_message_mb)} << 20;
  o.engine.max_running = absl::GetFlag(FLAGS_max_running);
  o.engine.max_waiting = absl::GetFlag(FLAGS_max_waiting);
  o.engine.max_registrations = absl::GetFlag(FLAGS_max_registrations);
  o.engine.prefill_chunk = absl::GetFlag(FLAGS_prefill_chunk);
  o.engine.max_step_tokens = absl::GetFlag(FLAGS_max_step_tokens);
  o.engine.default_budget = absl::GetFlag(FLAGS_default_budget);
  if (const std::string policy = absl::GetFlag(FLAGS_budget_policy); policy == "per_step") {
    o.engine.default_budget_policy = squeeze::BudgetPolicy::kPerStep;
  } else if (policy != "calibrated") {
    spdlog::error("--budget_policy must be calibrated or per_step (got '{}')", policy);
    return 2;
  }
  o.engine.default_query_block = absl::GetFlag(FLAGS_query_block);
  o.limits.default_max_tokens = absl::GetFlag(FLAGS_default_max_tokens);
  o.limits.max_tokens_cap = absl::GetFlag(FLAGS_max_tokens_cap);
  o.limits.default_index.centroid_fraction = absl::GetFlag(FLAGS_centroid_fraction);
  o.limits.default_index.coarse_fraction = absl::GetFlag(FLAGS_coarse_fraction);
  o.limits.default_index.hierarchical = absl::GetFlag(FLAGS_hierarchical);
  o.limits.default_index.window = absl::GetFlag(FLAGS_window);
  o.limits.default_index.sinks = absl::GetFlag(FLAGS_sinks);
  o.limits.default_index.max_iterations = absl::GetFlag(FLAGS_kmeans_iterations);
  o.limits.default_index.kmeans_min_changed = absl::GetFlag(FLAGS_kmeans_min_changed);
  // Security and hardening.
  o.tls.cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  o.tls.key_file = absl::GetFlag(FLAGS_tls_key_file);
  o.tls.client_ca_file = absl::GetFlag(FLAGS_tls_client_ca_file);
  o.tls.reload_seconds = absl::GetFlag(FLAGS_tls_reload_seconds);
  o.api_keys_file = absl::GetFlag(FLAGS_api_keys_file);
  o.limits.max_input_bytes = absl::GetFlag(FLAGS_max_input_bytes);
  o.engine.registration_chunk_while_decoding =
      absl::GetFlag(FLAGS_registration_chunk_while_decoding);
  const double grace = absl::GetFlag(FLAGS_grace_seconds);
  if (!std::isfinite(grace) || grace < 0) {
    spdlog::error("--grace_seconds must be >= 0 (got {})", grace);
    return 2;
  }
  if (absl::Status st = squeeze::server::ValidateServerOptions(o); !st.ok()) {
    spdlog::error("{}", std::string(st.message()));
    return 2;
  }

  auto server = squeeze::server::SqueezeServer::Start(o);
  if (!server.ok()) {
    spdlog::error("cannot start: {}", server.status().ToString());
    return 1;
  }
  if (const std::string port_file = absl::GetFlag(FLAGS_port_file); !port_file.empty()) {
    std::ofstream(port_file + ".tmp") << (*server)->port() << "\n";
    std::rename((port_file + ".tmp").c_str(), port_file.c_str());
  }
  const int first = NextSignal();
  spdlog::info("{} received: draining (grace {} s)", SignalName(first), grace);
  std::thread watcher([grace] {
    while (true) {
      const int signal = NextSignal();
      if (signal == 0) return;  // the drain is over
      spdlog::warn(
          "{} received while draining: ignored; running streams get the rest of the "
          "{} s grace (SIGKILL stops at once)",
          SignalName(signal), grace);
    }
  });
  (*server)->Shutdown(absl::Seconds(grace));
  OnSignal(0);  // ends the watcher
  watcher.join();
  spdlog::info("stopped");
  return 0;
}
