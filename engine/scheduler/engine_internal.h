// The engine's private parts shared by its files (engine.cc: lifecycle, the step loop and
// sampling; admission.cc: Generate's validation and admission; registration.cc: RegisterContext's
// tokenization, the indexer thread and publication). Not for use outside engine/scheduler/.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "engine/sampling/sampler.h"
#include "engine/sampling/stop_matcher.h"
#include "engine/scheduler/engine.h"
#include "engine/squeeze/selection.h"
#include "engine/tokenizer/streaming_detokenizer.h"

namespace squeeze {

// A Generate request from admission to retirement.
struct Engine::Sequence {
  GenerateRequest request;
  GenerateCallback callback;
  std::shared_ptr<WorkHandle> handle = std::make_shared<WorkHandle>();
  std::shared_ptr<const RegisteredContext> context;  // null: no fixed context
  std::vector<int32_t> input;                        // user-input tokens
  std::vector<int32_t> penalty_prompt;               // context + input (repetition penalty only)
  std::vector<int32_t> generated;
  SequenceKV kv;
  std::unique_ptr<FixedContextAttention> fixed;
  SqueezedFixedContextAttention* squeezed = nullptr;  // = fixed when squeezed
  double recent_budget = 1.0;                         // kept fraction in recent/pages mode
  AttentionMode mode = AttentionMode::kDense;
  std::unique_ptr<Sampler> sampler;
  std::unique_ptr<StreamingDetokenizer> detok;
  std::unique_ptr<StopMatcher> stop;
  std::vector<int32_t> eos_ids;
  std::vector<SampleInfo> prompt_scores;  // request.prompt_logprobs >= 0: input[1..]'s, so far
  bool prompt_scores_sent = false;
  int prefilled = 0;        // input tokens already run through the model
  int32_t next_token = -1;  // sampled, not yet run through the model
  int64_t forwarded = 0;
  absl::Time enqueued, admitted, first_token, prefill_done;
  bool finished = false;

  bool in_prefill() const { return prefilled < static_cast<int>(input.size()); }
};

// A RegisterContext request: tokenized, then prefilled in chunks by the engine thread, then
// clustered and calibrated on the indexer thread.
struct Engine::Registration {
  RegisterRequest request;
  RegisterCallback callback;
  std::shared_ptr<WorkHandle> handle = std::make_shared<WorkHandle>();
  std::vector<int32_t> tokens;
  std::string hash;
  SequenceKV kv;
  QueryCapture capture;
  int prefilled = 0;
  absl::Time start, prefill_start;
  RegistrationTimings timings;
  absl::Status failure;  // why the engine gave up on it (reported instead of CANCELLED)
};

namespace engine_internal {

inline absl::Status CheckTokens(const std::vector<int32_t>& ids, int vocab, const char* what) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat(what, " token id ", ids[i], " at index ", i,
                                                     " is outside the vocabulary [0, ", vocab,
                                                     ")"));
    }
  }
  return absl::OkStatus();
}

inline double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

}  // namespace engine_internal
}  // namespace squeeze
