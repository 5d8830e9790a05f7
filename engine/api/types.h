// Plain data exchanged between the server and the engine (no gRPC types here).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "engine/chat/chat_message.h"
#include "engine/sampling/sampling_params.h"
#include "engine/squeeze/squeeze_options.h"

namespace squeeze {

// Text, token ids or chat messages (exactly one is used). Messages are rendered with the model's
// chat template, ending with the assistant's header; after a context registered as a chat
// document they are the conversation that follows the document.
struct PromptInput {
  std::optional<std::string> text;
  std::optional<std::vector<int32_t>> token_ids;
  std::optional<std::vector<ChatMessage>> messages;
};

enum class AttentionMode { kAuto, kSqueezed, kDense, kRecent, kPages };

struct AttentionRequest {
  AttentionMode mode = AttentionMode::kAuto;
  std::optional<double> budget;  // kept fraction of clustered keys
  std::optional<bool> hierarchical;
  std::optional<double> mass;                 // mass-based selection instead of the threshold
  std::optional<BudgetPolicy> budget_policy;  // unset: EngineOptions::default_budget_policy
  std::optional<int> query_block;  // select multi-token steps per block of this many tokens
  // Estimate the dropped clusters' attention from their centroids (flat squeezed mode; CPU).
  std::optional<bool> estimate_tail;
};

struct RegisterRequest {
  std::string tenant;  // owner of the context ("" without API keys); names are per tenant
  std::string name;
  PromptInput content;
  std::optional<bool> add_bos;
  // Register content.text as a chat document: the rendered opening of a conversation that has
  // the text at this place (engine/chat/chat_prompts.h); Generate then takes the messages that
  // follow it.
  std::optional<ChatDocumentRole> chat_document;
  bool build_index = true;
  SqueezeOptions index;  // already merged with server defaults
  // Whether the request set index.window itself. A defaulted window longer than a short
  // context shrinks to fit (the index then keeps every key); an explicit one is an error.
  bool window_explicit = false;
};

enum class RegisterStage { kTokenizing, kPrefill, kClustering, kCalibrating, kPersisting, kDone };

struct RegistrationTimings {
  double tokenize_seconds = 0, prefill_seconds = 0, clustering_seconds = 0, calibration_seconds = 0,
         persist_seconds = 0, total_seconds = 0;
};

struct ContextSummary {
  std::string tenant;  // never shown to clients: they only see their own tenant's contexts
  std::string name;
  int64_t num_tokens = 0;
  std::string content_hash;  // hex SHA-256 of the token ids
  int64_t kv_bytes = 0;
  bool has_index = false;
  SqueezeOptions index_options;
  int64_t num_centroids = 0;
  int64_t num_coarse_centroids = 0;
  int64_t created_unix = 0;
  RegistrationTimings timings;
  bool reused = false;
};

struct RegisterEvent {
  RegisterStage stage = RegisterStage::kTokenizing;
  double progress = 0;
  int64_t tokens_done = 0;
  int64_t tokens_total = 0;
  bool final = false;  // last event: `status` and (when OK) `context` are set
  absl::Status status;
  ContextSummary context;
};

struct GenerateRequest {
  std::string request_id;
  std::string tenant;   // the caller's tenant: only its contexts are visible
  std::string context;  // empty: no fixed context
  PromptInput input;
  SamplingParams sampling;
  AttentionRequest attention;
  // >= 0: also score the input: the model's log-probability of every input token after the first
  // given what precedes it, with this many alternatives (GenerateEvent::prompt_logprobs).
  int prompt_logprobs = -1;
  absl::Time deadline = absl::InfiniteFuture();
};

enum class FinishReason { kNone, kLength, kStop, kEos };

struct TokenLogprobs {
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;
};

struct GenerateUsage {
  int64_t context_tokens = 0;
  int64_t context_tokens_reused = 0;
  int64_t query_tokens = 0;
  int64_t completion_tokens = 0;
  double kv_budget = 1.0;
};

struct GenerateTimings {
  double queue_seconds = 0, ttft_seconds = 0, total_seconds = 0, prefill_seconds = 0,
         decode_seconds = 0;
};

struct GenerateEvent {
  std::vector<int32_t> tokens;
  std::string text;
  std::vector<TokenLogprobs> logprobs;
  // With GenerateRequest::prompt_logprobs, once, in the first event: the input as the model saw
  // it and the scores of prompt_tokens[1..] (prompt_logprobs[i] is prompt_tokens[i + 1]'s).
  std::vector<int32_t> prompt_tokens;
  std::vector<TokenLogprobs> prompt_logprobs;
  bool final = false;  // last event: `status`, and when OK the fields below
  absl::Status status;
  FinishReason finish_reason = FinishReason::kNone;
  GenerateUsage usage;
  GenerateTimings timings;
  AttentionMode mode_used = AttentionMode::kDense;
};

}  // namespace squeeze
