// Generate: the request checked against the model, its context and the server's limits,
// its attention mode set up (squeezed with its selection policy, dense, recent or pages),
// then queued for the engine thread.
#include <algorithm>
#include <cmath>
#include <random>

#include "engine/attention/page_selection.h"
#include "engine/attention/recency_selection.h"
#include "engine/common/status_macros.h"
#include "engine/scheduler/engine_internal.h"

namespace squeeze {

using engine_internal::CheckTokens;

absl::StatusOr<std::shared_ptr<WorkHandle>> Engine::Generate(GenerateRequest request,
                                                             GenerateCallback callback) {
  if (draining_.load()) return absl::UnavailableError("server is draining");
  if (faulted_.load()) return absl::UnavailableError("engine faulted; restart the server");
  const ModelConfig& cfg = model_config();
  auto seq = std::make_unique<Sequence>();
  seq->enqueued = absl::Now();
  if (!request.context.empty()) {
    // Resident, or loaded from the shared store on first use (another replica registered it).
    ASSIGN_OR_RETURN(seq->context, store_->Get(request.tenant, request.context));
  }
  // Without a context the input is a whole prompt and starts with BOS; after a context it is a
  // continuation (chat messages: of a context registered as a chat document).
  if (seq->context && request.input.messages) {
    ASSIGN_OR_RETURN(seq->input,
                     chat_->Continuation(seq->context->tokens, *request.input.messages));
    RETURN_IF_ERROR(CheckTokens(seq->input, cfg.vocab_size, "input"));
  } else {
    ASSIGN_OR_RETURN(seq->input, Tokenize(request.input, /*add_bos=*/!seq->context &&
                                                             request.input.text.has_value()));
  }
  if (seq->input.empty()) return absl::InvalidArgumentError("input is empty");
  const int64_t S = seq->context ? seq->context->summary.num_tokens : 0;
  const int64_t total = S + static_cast<int64_t>(seq->input.size()) + request.sampling.max_tokens;
  if (total > cfg.max_position_embeddings) {
    return absl::InvalidArgumentError(
        absl::StrCat("context (", S, ") + input (", seq->input.size(), ") + max_tokens (",
                     request.sampling.max_tokens, ") = ", total,
                     " tokens exceeds the model window of ", cfg.max_position_embeddings));
  }
  RETURN_IF_ERROR(CheckTokens(request.sampling.stop_token_ids, cfg.vocab_size, "stop"));

  // Attention to the fixed context.
  const AttentionRequest& att = request.attention;
  const SqueezeIndex* index = seq->context ? seq->context->index.get() : nullptr;
  AttentionMode mode = att.mode;
  if (mode == AttentionMode::kAuto) mode = index ? AttentionMode::kSqueezed : AttentionMode::kDense;
  if (mode == AttentionMode::kSqueezed && !index) {
    return absl::InvalidArgumentError(
        seq->context ? absl::StrCat("context '", request.context,
                                    "' has no Squeezed Attention index; use dense mode")
                     : std::string("squeezed attention needs a context"));
  }
  if (mode == AttentionMode::kDense && (att.budget || att.hierarchical.value_or(false))) {
    return absl::InvalidArgumentError("budget and hierarchical apply to squeezed mode only");
  }
  if (att.mass && mode != AttentionMode::kSqueezed) {
    return absl::InvalidArgumentError("mass applies to squeezed mode only");
  }
  if (att.budget_policy && (mode != AttentionMode::kSqueezed || att.mass)) {
    return absl::InvalidArgumentError(
        "budget_policy applies to squeezed mode with a budget only (not dense, recent, pages or "
        "mass)");
  }
  if (att.query_block && mode != AttentionMode::kSqueezed) {
    return absl::InvalidArgumentError("query_block applies to squeezed mode only");
  }
  const bool estimate_tail = att.estimate_tail.value_or(false);
  if (estimate_tail && !model_->backend().estimates_tail()) {
    return absl::UnimplementedError(
        absl::StrCat("estimate_tail is implemented on the CPU backend only, not on this server's ",
                     std::string(model_->backend().name()), " backend"));
  }
  if (estimate_tail && (mode != AttentionMode::kSqueezed || att.hierarchical.value_or(false))) {
    return absl::InvalidArgumentError(
        "estimate_tail applies to squeezed mode with flat selection only");
  }
  if ((mode == AttentionMode::kRecent || mode == AttentionMode::kPages) &&
      (!seq->context || att.hierarchical.value_or(false))) {
    return absl::InvalidArgumentError(
        absl::StrCat(mode == AttentionMode::kRecent ? "recent" : "pages",
                     " mode needs a context and takes no hierarchical option"));
  }
  if (seq->context) {
    if (mode == AttentionMode::kSqueezed) {
      SelectionOptions sel;
      sel.budget = att.budget.value_or(options_.default_budget);
      const bool has_coarse = index->has_coarse();
      if (att.hierarchical.value_or(false) && !has_coarse) {
        return absl::InvalidArgumentError(
            absl::StrCat("context '", request.context,
                         "' was registered without the hierarchical level; register it with "
                         "index.hierarchical=true"));
      }
      sel.mass = att.mass;
      sel.hierarchical = att.hierarchical.value_or(has_coarse && !att.mass && !estimate_tail);
      sel.coarse_keep = std::min(1.0, 5.0 * sel.budget);
      sel.budget_policy = att.budget_policy.value_or(options_.default_budget_policy);
      sel.query_block = att.query_block.value_or(options_.default_query_block);
      sel.estimate_tail = estimate_tail;
      RETURN_IF_ERROR(ValidateSelectionOptions(*index, sel));
      auto squeezed = std::make_unique<SqueezedFixedContextAttention>(*index, sel);
      seq->squeezed = squeezed.get();
      seq->fixed = std::move(squeezed);
    } else if (mode == AttentionMode::kRecent) {
      // As many keys as squeezed mode keeps nominally: the window plus `budget` of the
      // clustered tokens, here the most recent ones, plus 4 attention sinks.
      const double budget = att.budget.value_or(options_.default_budget);
      const int window = index ? index->options.window : 100;
      const int sinks = std::max(4, index ? index->options.sinks : 0);
      const int recent =
          window + static_cast<int>(std::ceil(budget * std::max<int64_t>(0, S - window - sinks)));
      auto recency =
          std::make_unique<RecencyFixedContextAttention>(seq->context->kv, sinks, recent);
      seq->recent_budget = recency->kept_fraction();
      seq->fixed = std::move(recency);
    } else if (mode == AttentionMode::kPages) {
      // Pages of 16 tokens over the clustered span, `budget` of it, plus the sinks and window.
      PageSelectionOptions po;
      po.budget = att.budget.value_or(options_.default_budget);
      po.window = index ? index->options.window : 100;
      po.sinks = std::max(4, index ? index->options.sinks : 0);
      po.num_q_heads = model_->config().num_heads;
      auto pages = std::make_unique<PageFixedContextAttention>(seq->context->kv, po);
      seq->recent_budget = pages->realised_budget();
      seq->fixed = std::move(pages);
    }
    // Dense: no selector (the forward attends to every row without a per-layer selection; a
    // device backend then also skips the host round trip of the queries).
  }
  seq->mode = mode;

  const SamplingParams& sp = request.sampling;
  uint64_t seed = sp.seed;
  if (!sp.has_seed)
    seed = (static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
  seq->sampler = std::make_unique<Sampler>(sp, seed);
  if (sp.repetition_penalty != 1.0f) {
    if (seq->context) seq->penalty_prompt = seq->context->tokens;
    seq->penalty_prompt.insert(seq->penalty_prompt.end(), seq->input.begin(), seq->input.end());
  }
  // A completion continues the prompt's text: its leading space is kept unless the prompt
  // decodes to nothing (e.g. only BOS), where the first piece starts the text.
  bool prompt_is_blank = !seq->context;
  if (prompt_is_blank) {
    auto decoded = tokenizer_->Decode(seq->input);
    prompt_is_blank = decoded.ok() && decoded->empty();
  }
  seq->detok = std::make_unique<StreamingDetokenizer>(*tokenizer_, prompt_is_blank);
  seq->stop = std::make_unique<StopMatcher>(sp.stop);
  if (!sp.ignore_eos && options_.eos_token_ids) {
    seq->eos_ids = *options_.eos_token_ids;
  } else if (!sp.ignore_eos) {
    seq->eos_ids = cfg.eos_token_ids;
    if (tokenizer_->eos_id() >= 0 && std::find(seq->eos_ids.begin(), seq->eos_ids.end(),
                                               tokenizer_->eos_id()) == seq->eos_ids.end()) {
      seq->eos_ids.push_back(tokenizer_->eos_id());
    }
  }
  seq->kv = model_->NewSequenceKV();
  seq->request = std::move(request);
  seq->callback = std::move(callback);

  absl::MutexLock lock(&mu_);
  if (queued_requests_ >= options_.max_waiting + options_.max_running) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the request queue is full (", queued_requests_, " requests); retry later"));
  }
  ++queued_requests_;
  auto handle = seq->handle;
  incoming_.push_back(std::move(seq));
  work_cv_.Signal();
  return handle;
}

}  // namespace squeeze
