#include "server/convert.h"

#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace squeeze::server {
namespace {

absl::Status Invalid(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

bool Finite(double x) { return std::isfinite(x); }

}  // namespace

absl::Status ValidateContextName(const std::string& name) {
  if (name.empty()) return Invalid("name", "must not be empty");
  if (name.size() > 128) return Invalid("name", "must be at most 128 characters");
  if (!absl::ascii_isalnum(static_cast<unsigned char>(name[0]))) {
    return Invalid("name", absl::StrCat("'", name, "' must start with a letter or digit"));
  }
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return Invalid("name",
                     absl::StrCat("'", name, "' may only contain letters, digits, '.', '_', '-'"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckTextSize(const std::string& text, const char* field,
                           const RequestLimits& limits) {
  if (limits.max_input_bytes > 0 && static_cast<int64_t>(text.size()) > limits.max_input_bytes) {
    return Invalid(field, absl::StrCat("text of ", text.size(), " bytes exceeds the limit of ",
                                       limits.max_input_bytes,
                                       " bytes (more than the model's window can hold)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<PromptInput> ConvertPrompt(const v1::Prompt& prompt, const char* field,
                                          const RequestLimits& limits) {
  PromptInput in;
  switch (prompt.content_case()) {
    case v1::Prompt::kText:
      if (prompt.text().empty()) return Invalid(field, "text is empty");
      if (auto st = CheckTextSize(prompt.text(), field, limits); !st.ok()) return st;
      in.text = prompt.text();
      break;
    case v1::Prompt::kTokenIds:
      if (prompt.token_ids().ids().empty()) return Invalid(field, "token_ids is empty");
      if (limits.max_input_tokens > 0 && prompt.token_ids().ids_size() > limits.max_input_tokens) {
        return Invalid(field, absl::StrCat(prompt.token_ids().ids_size(),
                                           " token ids exceed the model's window of ",
                                           limits.max_input_tokens, " tokens"));
      }
      in.token_ids.emplace(prompt.token_ids().ids().begin(), prompt.token_ids().ids().end());
      break;
    case v1::Prompt::kMessages: {
      if (prompt.messages().messages().empty()) return Invalid(field, "messages is empty");
      // The rendered conversation is at least as long as the messages: refuse it by size before
      // any template work.
      int64_t bytes = 0;
      for (const v1::ChatMessage& m : prompt.messages().messages()) {
        bytes += static_cast<int64_t>(m.role().size() + m.content().size());
      }
      if (limits.max_input_bytes > 0 && bytes > limits.max_input_bytes) {
        return Invalid(field, absl::StrCat("messages of ", bytes, " bytes exceed the limit of ",
                                           limits.max_input_bytes,
                                           " bytes (more than the model's window can hold)"));
      }
      std::vector<ChatMessage>& messages = in.messages.emplace();
      for (const v1::ChatMessage& m : prompt.messages().messages()) {
        if (m.role().empty()) {
          return Invalid(field, absl::StrCat("messages[", messages.size(), "].role is empty"));
        }
        messages.push_back({m.role(), m.content()});
      }
      break;
    }
    default:
      return Invalid(field, "set one of text, token_ids or messages");
  }
  return in;
}

absl::StatusOr<RegisterRequest> ConvertRegisterRequest(const v1::RegisterContextRequest& req,
                                                       const RequestLimits& limits) {
  RegisterRequest out;
  if (auto st = ValidateContextName(req.name()); !st.ok()) return st;
  out.name = req.name();
  auto content = ConvertPrompt(req.content(), "content", limits);
  if (!content.ok()) return content.status();
  out.content = std::move(*content);
  if (out.content.messages) {
    return Invalid("content",
                   "messages are the input of Generate; register a chat document "
                   "from content.text with chat_document");
  }
  if (req.has_add_bos()) out.add_bos = req.add_bos();
  switch (req.chat_document()) {
    case v1::RegisterContextRequest::NOT_CHAT:
      break;
    case v1::RegisterContextRequest::SYSTEM_MESSAGE:
      out.chat_document = ChatDocumentRole::kSystem;
      break;
    case v1::RegisterContextRequest::FIRST_USER_MESSAGE:
      out.chat_document = ChatDocumentRole::kUser;
      break;
    default:
      return Invalid("chat_document", "unknown value");
  }
  if (out.chat_document && (!out.content.text || out.add_bos)) {
    return Invalid("chat_document",
                   "needs content.text and no add_bos (the chat template "
                   "writes BOS)");
  }
  const v1::IndexOptions& idx = req.index();
  out.build_index = !idx.disable();
  SqueezeOptions o = limits.default_index;
  if (idx.disable() &&
      (idx.has_centroid_fraction() || idx.has_hierarchical() || idx.has_coarse_fraction() ||
       idx.has_window() || idx.has_sinks() || idx.has_max_iterations() || idx.has_seed() ||
       idx.has_kmeans_min_changed())) {
    return Invalid("index", "options given together with disable=true");
  }
  if (idx.has_centroid_fraction()) {
    if (!Finite(idx.centroid_fraction()) || idx.centroid_fraction() <= 0 ||
        idx.centroid_fraction() > 1) {
      return Invalid("index.centroid_fraction", "must be in (0, 1]");
    }
    o.centroid_fraction = idx.centroid_fraction();
  }
  if (idx.has_hierarchical()) o.hierarchical = idx.hierarchical();
  if (idx.has_coarse_fraction()) {
    if (!Finite(idx.coarse_fraction()) || idx.coarse_fraction() <= 0 || idx.coarse_fraction() > 1) {
      return Invalid("index.coarse_fraction", "must be in (0, 1]");
    }
    o.coarse_fraction = idx.coarse_fraction();
  }
  if (o.hierarchical && o.coarse_fraction > o.centroid_fraction) {
    return Invalid("index.coarse_fraction", "must not exceed centroid_fraction");
  }
  if (idx.has_window()) {
    if (idx.window() < 1) return Invalid("index.window", "must be >= 1 (calibration needs it)");
    o.window = idx.window();
    out.window_explicit = true;
  }
  if (idx.has_sinks()) {
    if (idx.sinks() < 0) return Invalid("index.sinks", "must be >= 0");
    o.sinks = idx.sinks();
  }
  if (idx.has_max_iterations()) {
    if (idx.max_iterations() < 1 || idx.max_iterations() > 1000) {
      return Invalid("index.max_iterations", "must be in [1, 1000]");
    }
    o.max_iterations = idx.max_iterations();
  }
  if (idx.has_kmeans_min_changed()) {
    if (!Finite(idx.kmeans_min_changed()) || idx.kmeans_min_changed() < 0 ||
        idx.kmeans_min_changed() >= 1) {
      return Invalid("index.kmeans_min_changed", "must be in [0, 1)");
    }
    o.kmeans_min_changed = idx.kmeans_min_changed();
  }
  if (idx.has_seed()) o.seed = idx.seed();
  out.index = o;
  return out;
}

absl::StatusOr<GenerateRequest> ConvertGenerateRequest(const v1::GenerateRequest& req,
                                                       const RequestLimits& limits) {
  GenerateRequest out;
  out.request_id = req.request_id();
  if (out.request_id.size() > 128) return Invalid("request_id", "must be at most 128 characters");
  // Ids are logged: printable ASCII only, so none can forge or break a log line.
  for (char c : out.request_id) {
    if (c < 0x20 || c > 0x7e) {
      return Invalid("request_id", "may only contain printable ASCII characters");
    }
  }
  if (!req.context().empty()) {
    if (auto st = ValidateContextName(req.context()); !st.ok()) {
      return Invalid("context", st.message());
    }
  }
  out.context = req.context();
  auto input = ConvertPrompt(req.input(), "input", limits);
  if (!input.ok()) return input.status();
  out.input = std::move(*input);

  SamplingParams& sp = out.sampling;
  sp = limits.default_sampling;
  const v1::SamplingOptions& s = req.sampling();
  if (s.has_temperature()) {
    if (!Finite(s.temperature()) || s.temperature() < 0 || s.temperature() > 100) {
      return Invalid("sampling.temperature", "must be in [0, 100]");
    }
    sp.temperature = s.temperature();
  }
  if (s.has_top_p()) {
    if (!Finite(s.top_p()) || s.top_p() <= 0 || s.top_p() > 1) {
      return Invalid("sampling.top_p", "must be in (0, 1]");
    }
    sp.top_p = s.top_p();
  }
  if (s.has_top_k()) {
    if (s.top_k() < 0) return Invalid("sampling.top_k", "must be >= 0 (0 disables)");
    sp.top_k = s.top_k();
  }
  if (s.has_min_p()) {
    if (!Finite(s.min_p()) || s.min_p() < 0 || s.min_p() > 1) {
      return Invalid("sampling.min_p", "must be in [0, 1]");
    }
    sp.min_p = s.min_p();
  }
  if (s.has_repetition_penalty()) {
    if (!Finite(s.repetition_penalty()) || s.repetition_penalty() <= 0 ||
        s.repetition_penalty() > 10) {
      return Invalid("sampling.repetition_penalty", "must be in (0, 10]");
    }
    sp.repetition_penalty = s.repetition_penalty();
  }
  if (s.has_presence_penalty()) {
    if (!Finite(s.presence_penalty()) || std::abs(s.presence_penalty()) > 2) {
      return Invalid("sampling.presence_penalty", "must be in [-2, 2]");
    }
    sp.presence_penalty = s.presence_penalty();
  }
  if (s.has_frequency_penalty()) {
    if (!Finite(s.frequency_penalty()) || std::abs(s.frequency_penalty()) > 2) {
      return Invalid("sampling.frequency_penalty", "must be in [-2, 2]");
    }
    sp.frequency_penalty = s.frequency_penalty();
  }
  if (s.has_seed()) {
    sp.seed = s.seed();
    sp.has_seed = true;
  }
  sp.max_tokens = limits.default_max_tokens;
  if (req.has_max_tokens()) {
    if (req.max_tokens() < 1 || req.max_tokens() > limits.max_tokens_cap) {
      return Invalid("max_tokens", absl::StrCat("must be in [1, ", limits.max_tokens_cap, "]"));
    }
    sp.max_tokens = req.max_tokens();
  }
  if (req.stop_size() > limits.max_stop_strings) {
    return Invalid("stop", absl::StrCat("at most ", limits.max_stop_strings, " stop strings"));
  }
  for (const std::string& stop : req.stop()) {
    if (stop.empty()) return Invalid("stop", "stop strings must not be empty");
    if (static_cast<int>(stop.size()) > limits.max_stop_length) {
      return Invalid(
          "stop", absl::StrCat("stop strings are limited to ", limits.max_stop_length, " bytes"));
    }
    sp.stop.push_back(stop);
  }
  sp.stop_token_ids.assign(req.stop_token_ids().begin(), req.stop_token_ids().end());
  sp.ignore_eos = req.ignore_eos();
  if (req.has_logprobs()) {
    if (req.logprobs() < 0 || req.logprobs() > limits.max_logprobs) {
      return Invalid("logprobs", absl::StrCat("must be in [0, ", limits.max_logprobs, "]"));
    }
    sp.return_logprobs = true;
    sp.logprobs = req.logprobs();
  }
  if (req.has_prompt_logprobs()) {
    if (req.prompt_logprobs() < 0 || req.prompt_logprobs() > limits.max_logprobs) {
      return Invalid("prompt_logprobs", absl::StrCat("must be in [0, ", limits.max_logprobs, "]"));
    }
    out.prompt_logprobs = req.prompt_logprobs();
  }

  const v1::AttentionOptions& a = req.attention();
  switch (a.mode()) {
    case v1::AttentionOptions::SQUEEZED:
      out.attention.mode = AttentionMode::kSqueezed;
      break;
    case v1::AttentionOptions::DENSE:
      out.attention.mode = AttentionMode::kDense;
      break;
    case v1::AttentionOptions::RECENT:
      out.attention.mode = AttentionMode::kRecent;
      break;
    case v1::AttentionOptions::PAGES:
      out.attention.mode = AttentionMode::kPages;
      break;
    case v1::AttentionOptions::MODE_UNSPECIFIED:
      out.attention.mode = AttentionMode::kAuto;
      break;
    default:
      return Invalid("attention.mode", "unknown mode");
  }
  if (a.has_budget()) {
    if (!Finite(a.budget()) || a.budget() < 0 || a.budget() > 1) {
      return Invalid("attention.budget", "must be in [0, 1] (kept fraction of context keys)");
    }
    out.attention.budget = a.budget();
  }
  if (a.has_hierarchical()) out.attention.hierarchical = a.hierarchical();
  if (a.has_mass()) {
    if (!Finite(a.mass()) || a.mass() <= 0 || a.mass() > 1) {
      return Invalid("attention.mass", "must be in (0, 1] (estimated attention mass to keep)");
    }
    out.attention.mass = a.mass();
  }
  if (a.has_query_block()) {
    if (a.query_block() < 0) {
      return Invalid("attention.query_block",
                     "must be >= 0 (query tokens per selection; 0: one per step)");
    }
    out.attention.query_block = a.query_block();
  }
  if (a.has_estimate_tail()) out.attention.estimate_tail = a.estimate_tail();
  switch (a.budget_policy()) {
    case v1::AttentionOptions::BUDGET_POLICY_UNSPECIFIED:
      break;
    case v1::AttentionOptions::CALIBRATED:
      out.attention.budget_policy = BudgetPolicy::kCalibrated;
      break;
    case v1::AttentionOptions::PER_STEP:
      out.attention.budget_policy = BudgetPolicy::kPerStep;
      break;
    default:
      return Invalid("attention.budget_policy", "unknown budget policy");
  }
  return out;
}

v1::ContextInfo ToProto(const ContextSummary& s) {
  v1::ContextInfo info;
  info.set_name(s.name);
  info.set_num_tokens(s.num_tokens);
  info.set_content_hash(s.content_hash);
  info.set_kv_bytes(s.kv_bytes);
  info.set_created_unix(s.created_unix);
  info.set_reused(s.reused);
  v1::IndexInfo* idx = info.mutable_index();
  idx->set_present(s.has_index);
  if (s.has_index) {
    const SqueezeOptions& o = s.index_options;
    idx->set_centroid_fraction(o.centroid_fraction);
    idx->set_hierarchical(o.hierarchical);
    idx->set_coarse_fraction(o.coarse_fraction);
    idx->set_window(o.window);
    idx->set_sinks(o.sinks);
    idx->set_max_iterations(o.max_iterations);
    idx->set_kmeans_min_changed(o.kmeans_min_changed);
    idx->set_seed(o.seed);
    idx->set_num_centroids(s.num_centroids);
    idx->set_num_coarse_centroids(s.num_coarse_centroids);
  }
  v1::RegistrationTimings* t = info.mutable_timings();
  t->set_tokenize_seconds(s.timings.tokenize_seconds);
  t->set_prefill_seconds(s.timings.prefill_seconds);
  t->set_clustering_seconds(s.timings.clustering_seconds);
  t->set_calibration_seconds(s.timings.calibration_seconds);
  t->set_persist_seconds(s.timings.persist_seconds);
  t->set_total_seconds(s.timings.total_seconds);
  return info;
}

v1::RegisterContextEvent ToProto(const RegisterEvent& e) {
  v1::RegisterContextEvent out;
  switch (e.stage) {
    case RegisterStage::kTokenizing:
      out.set_stage(v1::RegisterContextEvent::TOKENIZING);
      break;
    case RegisterStage::kPrefill:
      out.set_stage(v1::RegisterContextEvent::PREFILL);
      break;
    case RegisterStage::kClustering:
      out.set_stage(v1::RegisterContextEvent::CLUSTERING);
      break;
    case RegisterStage::kCalibrating:
      out.set_stage(v1::RegisterContextEvent::CALIBRATING);
      break;
    case RegisterStage::kPersisting:
      out.set_stage(v1::RegisterContextEvent::PERSISTING);
      break;
    case RegisterStage::kDone:
      out.set_stage(v1::RegisterContextEvent::DONE);
      break;
  }
  out.set_progress(e.progress);
  out.set_tokens_done(e.tokens_done);
  out.set_tokens_total(e.tokens_total);
  if (e.stage == RegisterStage::kDone) *out.mutable_context() = ToProto(e.context);
  return out;
}

v1::GenerateResponse ToProto(const GenerateEvent& e) {
  v1::GenerateResponse out;
  for (int32_t t : e.tokens) out.add_token_ids(t);
  out.set_text(e.text);
  auto add_logprobs = [](const std::vector<TokenLogprobs>& from, auto* to) {
    for (const TokenLogprobs& lp : from) {
      v1::TokenLogprob* p = to->Add();
      p->set_logprob(lp.logprob);
      for (const auto& [id, logprob] : lp.top) {
        v1::TopLogprob* top = p->add_top();
        top->set_id(id);
        top->set_logprob(logprob);
      }
    }
  };
  add_logprobs(e.logprobs, out.mutable_logprobs());
  for (int32_t t : e.prompt_tokens) out.add_prompt_token_ids(t);
  add_logprobs(e.prompt_logprobs, out.mutable_prompt_logprobs());
  if (e.final) {
    switch (e.finish_reason) {
      case FinishReason::kLength:
        out.set_finish_reason(v1::LENGTH);
        break;
      case FinishReason::kStop:
        out.set_finish_reason(v1::STOP);
        break;
      case FinishReason::kEos:
        out.set_finish_reason(v1::EOS);
        break;
      case FinishReason::kNone:
        break;
    }
    v1::Usage* u = out.mutable_usage();
    u->set_context_tokens(e.usage.context_tokens);
    u->set_context_tokens_reused(e.usage.context_tokens_reused);
    u->set_query_tokens(e.usage.query_tokens);
    u->set_completion_tokens(e.usage.completion_tokens);
    u->set_kv_budget(e.usage.kv_budget);
    v1::GenerateTimings* t = out.mutable_timings();
    t->set_queue_seconds(e.timings.queue_seconds);
    t->set_time_to_first_token_seconds(e.timings.ttft_seconds);
    t->set_total_seconds(e.timings.total_seconds);
    t->set_prefill_seconds(e.timings.prefill_seconds);
    t->set_decode_seconds(e.timings.decode_seconds);
    switch (e.mode_used) {
      case AttentionMode::kSqueezed:
        out.set_attention_mode(v1::AttentionOptions::SQUEEZED);
        break;
      case AttentionMode::kRecent:
        out.set_attention_mode(v1::AttentionOptions::RECENT);
        break;
      case AttentionMode::kPages:
        out.set_attention_mode(v1::AttentionOptions::PAGES);
        break;
      default:
        out.set_attention_mode(v1::AttentionOptions::DENSE);
        break;
    }
  }
  return out;
}

}  // namespace squeeze::server
