// Protobuf <-> engine types, and validation of request fields with actionable messages.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/api/types.h"
#include "squeeze/v1/squeeze.pb.h"

namespace squeeze::server {

// Server-side limits and defaults applied to requests.
struct RequestLimits {
  int default_max_tokens = 128;
  int max_tokens_cap = 4096;
  int max_stop_strings = 16;
  int max_stop_length = 256;
  int max_logprobs = 20;
  // Checked before any tokenization, so an oversized input costs its bytes, never the
  // tokenizer's time and memory: text longer than this many bytes, or more token ids than this,
  // is refused (0: no limit). The server sets them from the model's window (see server.cc).
  int64_t max_input_bytes = 0;
  int64_t max_input_tokens = 0;
  SqueezeOptions default_index;  // index options when a registration gives none
  // Sampling when a request gives none: the model's generation_config.json defaults.
  SamplingParams default_sampling;
};

absl::Status ValidateContextName(const std::string& name);

absl::StatusOr<PromptInput> ConvertPrompt(const v1::Prompt& prompt, const char* field,
                                          const RequestLimits& limits);
// INVALID_ARGUMENT when `text` (a Prompt's or Tokenize's) exceeds limits.max_input_bytes.
absl::Status CheckTextSize(const std::string& text, const char* field, const RequestLimits& limits);

absl::StatusOr<RegisterRequest> ConvertRegisterRequest(const v1::RegisterContextRequest& req,
                                                       const RequestLimits& limits);
absl::StatusOr<GenerateRequest> ConvertGenerateRequest(const v1::GenerateRequest& req,
                                                       const RequestLimits& limits);

v1::ContextInfo ToProto(const ContextSummary& summary);
v1::RegisterContextEvent ToProto(const RegisterEvent& event);
// Fills a response from an event (without request_id).
v1::GenerateResponse ToProto(const GenerateEvent& event);

}  // namespace squeeze::server
