#include "engine/scheduler/engine.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/attention/page_selection.h"
#include "engine/attention/recency_selection.h"
#include "engine/common/status_macros.h"
#include "engine/sampling/sampler.h"
#include "engine/sampling/stop_matcher.h"
#include "engine/squeeze/selection.h"
#include "engine/tokenizer/streaming_detokenizer.h"
#include "spdlog/spdlog.h"

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

namespace {

absl::Status CheckTokens(const std::vector<int32_t>& ids, int vocab, const char* what) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat(what, " token id ", ids[i], " at index ", i,
                                                     " is outside the vocabulary [0, ", vocab,
                                                     ")"));
    }
  }
  return absl::OkStatus();
}

double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

}  // namespace

Engine::Engine(EngineOptions options, std::unique_ptr<LlamaModel> model,
               std::unique_ptr<Tokenizer> tokenizer, std::unique_ptr<ContextStore> store,
               absl::StatusOr<std::unique_ptr<ChatTemplate>> chat_template)
    : options_(options),
      model_(std::move(model)),
      tokenizer_(std::move(tokenizer)),
      store_(std::move(store)),
      chat_(std::make_unique<ChatPrompts>(*tokenizer_, std::move(chat_template))) {}

Engine::~Engine() { Shutdown(absl::ZeroDuration()); }

void Engine::Start() {
  thread_ = std::thread([this] { Loop(); });
  indexer_ = std::thread([this] { IndexerLoop(); });
}

void Engine::Shutdown(absl::Duration grace) {
  draining_.store(true);
  const absl::Time deadline = absl::Now() + grace;
  {
    absl::MutexLock lock(&mu_);
    auto idle = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return queued_requests_ == 0 && active_registrations_ == 0;
    };
    while (!idle() && absl::Now() < deadline) {
      mu_.AwaitWithDeadline(absl::Condition(&idle), deadline);
    }
    stop_ = true;
    work_cv_.SignalAll();
    indexer_cv_.SignalAll();
  }
  if (thread_.joinable()) thread_.join();
  if (indexer_.joinable()) indexer_.join();
}

absl::StatusOr<std::vector<int32_t>> Engine::Tokenize(const PromptInput& input,
                                                      bool add_bos) const {
  std::vector<int32_t> ids;
  if (input.messages) {  // the chat template writes BOS itself
    ASSIGN_OR_RETURN(ids, chat_->Conversation(*input.messages));
    RETURN_IF_ERROR(CheckTokens(ids, model_config().vocab_size, "input"));
    return ids;
  }
  if (add_bos && tokenizer_->bos_id() >= 0) ids.push_back(tokenizer_->bos_id());
  if (input.token_ids) {
    ids.insert(ids.end(), input.token_ids->begin(), input.token_ids->end());
  } else if (input.text) {
    ASSIGN_OR_RETURN(std::vector<int32_t> text_ids, tokenizer_->Encode(*input.text));
    ids.insert(ids.end(), text_ids.begin(), text_ids.end());
  }
  RETURN_IF_ERROR(CheckTokens(ids, model_config().vocab_size, "input"));
  return ids;
}

absl::StatusOr<std::shared_ptr<WorkHandle>> Engine::Register(RegisterRequest request,
                                                             RegisterCallback callback) {
  if (draining_.load()) return absl::UnavailableError("server is draining");
  if (faulted_.load()) return absl::UnavailableError("engine faulted; restart the server");
  auto reg = std::make_unique<Registration>();
  reg->start = absl::Now();
  if (request.content.messages) {
    return absl::InvalidArgumentError(
        "register a chat document from content.text with chat_document set; messages are the "
        "input of Generate");
  }
  if (request.chat_document) {
    if (!request.content.text || request.add_bos) {
      return absl::InvalidArgumentError(
          "a chat document is registered from content.text, without add_bos (the chat "
          "template writes BOS)");
    }
    ASSIGN_OR_RETURN(reg->tokens, chat_->Document(*request.content.text, *request.chat_document));
    RETURN_IF_ERROR(CheckTokens(reg->tokens, model_config().vocab_size, "content"));
  } else {
    const bool add_bos = request.add_bos.value_or(request.content.text.has_value());
    ASSIGN_OR_RETURN(reg->tokens, Tokenize(request.content, add_bos));
  }
  reg->timings.tokenize_seconds = Seconds(absl::Now() - reg->start);
  const ModelConfig& cfg = model_config();
  const int S = static_cast<int>(reg->tokens.size());
  if (S == 0) return absl::InvalidArgumentError("context content is empty");
  if (S >= cfg.max_position_embeddings) {
    return absl::InvalidArgumentError(
        absl::StrCat("context has ", S, " tokens; the model window is ",
                     cfg.max_position_embeddings, " tokens and a query needs at least one more"));
  }
  reg->hash = HashTokens(reg->tokens);
  if (request.build_index) {
    SqueezeOptions& o = request.index;
    if (o.window + o.sinks > S && !request.window_explicit && o.sinks <= S) {
      o.window = S - o.sinks;  // a short context: every key stays, nothing to cluster
    }
    if (o.window + o.sinks > S) {
      return absl::InvalidArgumentError(
          absl::StrCat("index.window (", o.window, ") + index.sinks (", o.sinks,
                       ") exceed the context length (", S, " tokens)"));
    }
  }
  const ContextStore::Spec spec{.hash = reg->hash,
                                .build_index = request.build_index,
                                .index = request.index,
                                // The host copy, in the backend's KV dtype (FromSequence).
                                .bytes = static_cast<int64_t>(ContextKV::BytesFor(
                                    model_->kv_shape(), S, model_->backend().kv_dtype()))};
  // The same registration already finished (or finishes later, when it is in progress): its
  // context, marked reused.
  auto reused = [S](RegisterCallback& callback, const ContextSummary& summary) {
    RegisterEvent done{.stage = RegisterStage::kDone, .progress = 1, .final = true};
    done.tokens_done = done.tokens_total = S;
    done.context = summary;
    done.context.reused = true;
    callback(std::move(done));
  };
  auto on_ready = [callback,
                   reused](absl::StatusOr<std::shared_ptr<const RegisteredContext>> ready) mutable {
    if (!ready.ok()) return callback(RegisterEvent{.final = true, .status = ready.status()});
    reused(callback, (*ready)->summary);
  };
  ASSIGN_OR_RETURN(ContextStore::Reservation reservation,
                   store_->Reserve(request.tenant, request.name, spec, on_ready));
  if (reservation.existing) {
    reused(callback, reservation.existing->summary);
    return reg->handle;
  }
  if (reservation.joined) return reg->handle;
  {
    absl::MutexLock lock(&mu_);
    if (active_registrations_ >= options_.max_registrations) {
      store_->Unreserve(request.tenant, request.name,
                        absl::ResourceExhaustedError("too many registrations in progress"));
      return absl::ResourceExhaustedError(absl::StrCat("too many registrations in progress (",
                                                       active_registrations_, "); retry later"));
    }
    ++active_registrations_;
    reg->request = std::move(request);
    reg->callback = std::move(callback);
    reg->kv = model_->NewSequenceKV();
    reg->capture.from_position = reg->request.build_index ? S - reg->request.index.window : S;
    auto handle = reg->handle;
    incoming_regs_.push_back(std::move(reg));
    work_cv_.Signal();
    return handle;
  }
}

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
      sel.hierarchical = att.hierarchical.value_or(has_coarse && !att.mass);
      sel.coarse_keep = std::min(1.0, 5.0 * sel.budget);
      sel.budget_policy = att.budget_policy.value_or(options_.default_budget_policy);
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

absl::StatusOr<ContextSummary> Engine::GetContext(const std::string& tenant,
                                                  const std::string& name) const {
  return store_->Summary(tenant, name);
}

std::vector<ContextSummary> Engine::ListContexts(const std::string& tenant) const {
  return store_->List(tenant);
}

std::vector<ContextSummary> Engine::ResidentContexts() const {
  std::vector<ContextSummary> out;
  for (const auto& c : store_->Resident()) out.push_back(c->summary);
  return out;
}

absl::Status Engine::DeleteContext(const std::string& tenant, const std::string& name) {
  return store_->Delete(tenant, name);
}

EngineStats Engine::stats() const {
  absl::MutexLock lock(&mu_);
  EngineStats s = stats_;
  s.queued = queued_requests_;
  s.registrations = active_registrations_;
  return s;
}

void Engine::Loop() {
  std::deque<Adoption> adopt;
  while (true) {
    {
      // The condition reads only state guarded by mu_: Abseil evaluates it in whichever thread
      // unlocks mu_, which must not touch what the engine thread owns.
      const bool own_work = !waiting_.empty() || !running_.empty() || !registrations_.empty();
      absl::MutexLock lock(&mu_);
      auto has_work = [this, own_work]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return own_work || stop_ || !incoming_.empty() || !incoming_regs_.empty() ||
               !adoptions_.empty();
      };
      mu_.Await(absl::Condition(&has_work));
      if (stop_) break;
      adopt.swap(adoptions_);
      while (!incoming_.empty()) {
        waiting_.push_back(std::move(incoming_.front()));
        incoming_.pop_front();
      }
      while (!incoming_regs_.empty()) {
        registrations_.push_back(std::move(incoming_regs_.front()));
        incoming_regs_.pop_front();
      }
    }
    // Registered contexts' prefill KV into their resident copies (engine thread: the backend
    // is single-threaded), then released.
    for (Adoption& a : adopt) model_->backend().AdoptContextKv(a.context->kv, std::move(a.kv));
    adopt.clear();
    Step();
  }
  // Stopping: everything still here is cancelled.
  for (auto& seq : running_) FinishSequence(*seq, absl::UnavailableError("server shut down"), {});
  for (auto& seq : waiting_) FinishSequence(*seq, absl::UnavailableError("server shut down"), {});
  absl::MutexLock lock(&mu_);
  for (auto& seq : incoming_) {
    seq->callback(
        GenerateEvent{.final = true, .status = absl::UnavailableError("server shut down")});
  }
  for (auto* q : {&registrations_, &incoming_regs_}) {
    for (auto& reg : *q) {
      const absl::Status why = absl::UnavailableError("server shut down");
      store_->Unreserve(reg->request.tenant, reg->request.name, why);
      reg->callback(RegisterEvent{.final = true, .status = why});
    }
  }
}

void Engine::RetireCancelled() {
  const absl::Time now = absl::Now();
  auto check = [&](Sequence& seq) {
    if (seq.finished) return;
    // A passed deadline first: gRPC also cancels the call when its deadline expires, and its
    // timer may fire a little before this clock reads the deadline, so a cancellation that close
    // to the deadline is the deadline.
    const bool cancelled = seq.handle->cancelled();
    if (now > seq.request.deadline ||
        (cancelled && now > seq.request.deadline - absl::Milliseconds(100))) {
      FinishSequence(seq, absl::DeadlineExceededError("deadline exceeded"), {});
    } else if (cancelled) {
      FinishSequence(seq, absl::CancelledError("request cancelled"), {});
    }
  };
  for (auto& s : running_) check(*s);
  for (auto& s : waiting_) check(*s);
  std::erase_if(running_, [](const auto& s) { return s->finished; });
  std::erase_if(waiting_, [](const auto& s) { return s->finished; });
  for (auto it = registrations_.begin(); it != registrations_.end();) {
    if ((*it)->handle->cancelled()) {
      const absl::Status why =
          (*it)->failure.ok() ? absl::CancelledError("registration cancelled") : (*it)->failure;
      store_->Unreserve((*it)->request.tenant, (*it)->request.name, why);
      (*it)->callback(RegisterEvent{.final = true, .status = why});
      absl::MutexLock lock(&mu_);
      --active_registrations_;
      it = registrations_.erase(it);
    } else {
      ++it;
    }
  }
}

void Engine::MarkFaulted(const absl::Status& why) {
  if (faulted_.exchange(true)) return;
  std::function<void(const absl::Status&)> handler;
  {
    absl::MutexLock lock(&mu_);
    handler = fault_handler_;
  }
  if (handler) handler(why);
}

void Engine::SetFaultHandler(std::function<void(const absl::Status&)> handler) {
  absl::MutexLock lock(&mu_);
  fault_handler_ = std::move(handler);
}

bool Engine::Step() {
  RetireCancelled();
  // Admit waiting sequences.
  while (!waiting_.empty() && static_cast<int>(running_.size()) < options_.max_running) {
    waiting_.front()->admitted = absl::Now();
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
  // Plan: decode for every sequence past prefill, then prefill chunks within the token budget.
  std::vector<SequenceStep> steps;
  std::vector<Sequence*> step_seqs;
  std::vector<std::vector<int32_t>> decode_tokens;  // storage for one-token spans
  decode_tokens.reserve(running_.size());
  int budget = options_.max_step_tokens;
  for (auto& seq : running_) {
    if (seq->in_prefill()) continue;
    decode_tokens.push_back({seq->next_token});
    steps.push_back({.tokens = decode_tokens.back(),
                     .context = seq->context ? &seq->context->kv : nullptr,
                     .fixed = seq->fixed.get(),
                     .kv = &seq->kv,
                     .want_logits = true});
    step_seqs.push_back(seq.get());
  }
  for (auto& seq : running_) {
    if (!seq->in_prefill() || budget <= 0) continue;
    const int n = std::min(
        {static_cast<int>(seq->input.size()) - seq->prefilled, options_.prefill_chunk, budget});
    budget -= n;
    const bool last = seq->prefilled + n == static_cast<int>(seq->input.size());
    steps.push_back({.tokens = std::span<const int32_t>(seq->input).subspan(seq->prefilled, n),
                     .context = seq->context ? &seq->context->kv : nullptr,
                     .fixed = seq->fixed.get(),
                     .kv = &seq->kv,
                     .want_logits = last});
    step_seqs.push_back(seq.get());
  }
  Registration* reg_step = nullptr;
  int reg_n = 0;
  if (!registrations_.empty() && budget > 0) {
    Registration& reg = *registrations_.front();
    if (reg.prefilled == 0) reg.prefill_start = absl::Now();
    // While streams decode, a smaller chunk: their next token waits for this whole forward.
    const int chunk = decode_tokens.empty()
                          ? options_.prefill_chunk
                          : std::min(options_.prefill_chunk,
                                     std::max(1, options_.registration_chunk_while_decoding));
    reg_n = std::min({static_cast<int>(reg.tokens.size()) - reg.prefilled, chunk, budget});
    steps.push_back({.tokens = std::span<const int32_t>(reg.tokens).subspan(reg.prefilled, reg_n),
                     .kv = &reg.kv,
                     .want_logits = false,
                     .capture = &reg.capture});
    reg_step = &reg;
  }
  if (steps.empty()) return false;
  // Every sequence step that produces a token carries its sampling job (a device backend
  // samples there; otherwise the logits come back and the job is done here).
  std::vector<SampleJob> jobs(step_seqs.size());
  for (size_t i = 0; i < step_seqs.size(); ++i) {
    if (!steps[i].want_logits) continue;
    const Sequence& seq = *step_seqs[i];
    jobs[i] = {.sampler = seq.sampler.get(),
               .prompt = seq.penalty_prompt,
               .generated = seq.generated,
               .want_info = seq.request.sampling.return_logprobs};
    steps[i].sample = &jobs[i];
  }

  ForwardOutput out;
  absl::Status st = model_->Forward(std::span<SequenceStep>(steps), &out);
  int64_t gen_tokens = 0;
  for (size_t i = 0; i < step_seqs.size(); ++i) gen_tokens += steps[i].tokens.size();
  {
    absl::MutexLock lock(&mu_);
    ++stats_.steps;
    stats_.generate_tokens_forwarded += gen_tokens;
    stats_.registration_tokens_forwarded += reg_n;
    stats_.largest_batch = std::max<int64_t>(stats_.largest_batch, steps.size());
    stats_.running = static_cast<int>(running_.size());
  }
  if (!st.ok()) {
    // Out of (device) memory fails this step's requests and nothing else; any other error is a
    // fault of the backend, after which the engine serves nothing (health NOT_SERVING).
    absl::Status err = st;
    if (st.code() == absl::StatusCode::kResourceExhausted) {
      spdlog::warn("forward step out of memory: {}", std::string(st.message()));
    } else {
      spdlog::error("forward step failed: {}", st.ToString());
      err = absl::InternalError(absl::StrCat("engine fault: ", st.message()));
      MarkFaulted(err);
    }
    for (Sequence* seq : step_seqs) FinishSequence(*seq, err, {});
    if (reg_step) {
      reg_step->failure = err;
      reg_step->handle->Cancel();
    }
  } else {
    for (size_t i = 0; i < step_seqs.size(); ++i) {
      Sequence& seq = *step_seqs[i];
      seq.forwarded += steps[i].tokens.size();
      if (seq.in_prefill()) {
        seq.prefilled += static_cast<int>(steps[i].tokens.size());
        if (seq.in_prefill()) continue;
        seq.prefill_done = absl::Now();
      }
      SampleJob& job = jobs[i];
      if (job.token < 0) {  // logits on the host: sample here
        job.token = seq.sampler->Sample(out.logits[i], job.prompt, job.generated,
                                        job.want_info ? &job.info : nullptr);
      }
      ProcessSampled(seq, job.token, job.info);
    }
  }
  std::erase_if(running_, [](const auto& s) { return s->finished; });

  if (reg_step && st.ok()) {
    reg_step->prefilled += reg_n;
    const int S = static_cast<int>(reg_step->tokens.size());
    RegisterEvent ev{.stage = RegisterStage::kPrefill,
                     .progress = static_cast<double>(reg_step->prefilled) / S,
                     .tokens_done = reg_step->prefilled,
                     .tokens_total = S};
    reg_step->callback(ev);
    if (reg_step->prefilled == S) {
      auto reg = std::move(registrations_.front());
      registrations_.pop_front();
      reg->timings.prefill_seconds = Seconds(absl::Now() - reg->prefill_start);
      FinishRegistrationPrefill(std::move(reg));
    }
  }
  return true;
}

void Engine::ProcessSampled(Sequence& seq, int32_t token, const SampleInfo& info) {
  const SamplingParams& sp = seq.request.sampling;
  if (seq.first_token == absl::Time()) seq.first_token = absl::Now();
  seq.next_token = token;
  GenerateEvent ev;
  FinishReason reason = FinishReason::kNone;
  bool stopped_by_string = false;
  if (std::find(seq.eos_ids.begin(), seq.eos_ids.end(), token) != seq.eos_ids.end()) {
    reason = FinishReason::kEos;
  } else if (std::find(sp.stop_token_ids.begin(), sp.stop_token_ids.end(), token) !=
             sp.stop_token_ids.end()) {
    reason = FinishReason::kStop;
  } else {
    seq.generated.push_back(token);
    ev.tokens.push_back(token);
    if (sp.return_logprobs) {
      TokenLogprobs lp{.logprob = info.logprob};
      for (const auto& t : info.top) lp.top.emplace_back(t.token, t.logprob);
      ev.logprobs.push_back(std::move(lp));
    }
    StopMatcher::Result r = seq.stop->Push(seq.detok->Push(token));
    ev.text = std::move(r.emit);
    if (r.stopped) {
      stopped_by_string = true;
      reason = FinishReason::kStop;
    } else if (static_cast<int>(seq.generated.size()) >= sp.max_tokens) {
      reason = FinishReason::kLength;
    }
  }
  {
    absl::MutexLock lock(&mu_);
    stats_.generated_tokens += ev.tokens.size();
  }
  if (reason == FinishReason::kNone) {
    if (!ev.tokens.empty()) seq.callback(std::move(ev));
    return;
  }
  if (!stopped_by_string) {
    // Natural end (EOS, stop token, length): release the text held back for UTF-8 completion
    // and stop-string matching; a stop string may still complete inside it.
    StopMatcher::Result r = seq.stop->Push(seq.detok->Flush());
    ev.text += r.emit;
    if (!r.stopped) ev.text += seq.stop->Flush();
  }
  if (!ev.tokens.empty() || !ev.text.empty()) seq.callback(std::move(ev));
  FinishSequence(seq, absl::OkStatus(), reason);
}

void Engine::FinishSequence(Sequence& seq, absl::Status status, FinishReason reason) {
  if (seq.finished) return;
  seq.finished = true;
  GenerateEvent ev{.final = true, .status = std::move(status), .finish_reason = reason};
  const absl::Time now = absl::Now();
  ev.usage.context_tokens = seq.context ? seq.context->summary.num_tokens : 0;
  ev.usage.context_tokens_reused = ev.usage.context_tokens;
  ev.usage.query_tokens = static_cast<int64_t>(seq.input.size());
  ev.usage.completion_tokens = static_cast<int64_t>(seq.generated.size());
  ev.usage.kv_budget = seq.squeezed ? seq.squeezed->realised_budget() : seq.recent_budget;
  ev.mode_used = seq.mode;
  const absl::Time admitted = seq.admitted == absl::Time() ? now : seq.admitted;
  ev.timings.queue_seconds = Seconds(admitted - seq.enqueued);
  if (seq.first_token != absl::Time()) {
    ev.timings.ttft_seconds = Seconds(seq.first_token - seq.enqueued);
    ev.timings.prefill_seconds = Seconds(seq.prefill_done - admitted);
    ev.timings.decode_seconds = Seconds(now - seq.prefill_done);
  }
  ev.timings.total_seconds = Seconds(now - seq.enqueued);
  seq.callback(std::move(ev));
  absl::MutexLock lock(&mu_);
  --queued_requests_;
  ++stats_.requests_finished;
}

void Engine::FinishRegistrationPrefill(std::unique_ptr<Registration> reg) {
  absl::MutexLock lock(&mu_);
  indexer_queue_.push_back(std::move(reg));
  indexer_cv_.Signal();
}

void Engine::IndexerLoop() {
  while (true) {
    std::unique_ptr<Registration> reg;
    {
      absl::MutexLock lock(&mu_);
      while (!stop_ && indexer_queue_.empty()) indexer_cv_.Wait(&mu_);
      if (indexer_queue_.empty()) return;
      reg = std::move(indexer_queue_.front());
      indexer_queue_.pop_front();
    }
    BuildAndPublish(*reg);
    absl::MutexLock lock(&mu_);
    --active_registrations_;
  }
}

void Engine::BuildAndPublish(Registration& reg) {
  auto fail = [&](absl::Status st) {
    store_->Unreserve(reg.request.tenant, reg.request.name, st);
    reg.callback(RegisterEvent{.final = true, .status = std::move(st)});
  };
  auto context = std::make_shared<RegisteredContext>();
  const int S = static_cast<int>(reg.tokens.size());
  context->kv = ContextKV::FromSequence(reg.kv, S);
  ContextSummary& s = context->summary;
  if (reg.request.build_index) {
    auto progress = [&](std::string_view stage, double fraction) {
      if (reg.handle->cancelled()) return;
      reg.callback(RegisterEvent{.stage = stage == "calibrating" ? RegisterStage::kCalibrating
                                                                 : RegisterStage::kClustering,
                                 .progress = fraction,
                                 .tokens_done = S,
                                 .tokens_total = S});
    };
    BuildTimings build_timings;
    // The backend's k-means (the GPU's) when it has one; it runs on this (indexer) thread.
    // The prefill's KV, still in device memory, is clustered in place by a GPU solver.
    Backend* be = reg.kv.backend();
    const bool on_device = be != nullptr && !be->host_memory();
    auto index = BuildSqueezeIndex(
        &context->kv, reg.capture, model_config().num_heads, reg.request.index, progress,
        &build_timings, model_->backend().kmeans_solver(), on_device ? &reg.kv : nullptr);
    if (!index.ok()) return fail(index.status());
    reg.timings.clustering_seconds = build_timings.clustering_seconds;
    reg.timings.calibration_seconds = build_timings.calibration_seconds;
    context->index = std::make_unique<SqueezeIndex>(std::move(*index));
    s.num_centroids = context->index->num_centroids();
    s.num_coarse_centroids = context->index->num_coarse_centroids();
  }
  if (reg.handle->cancelled()) return fail(absl::CancelledError("registration cancelled"));
  s.tenant = reg.request.tenant;
  s.name = reg.request.name;
  s.num_tokens = S;
  s.content_hash = reg.hash;
  s.kv_bytes = static_cast<int64_t>(context->kv.bytes());
  s.has_index = context->index != nullptr;
  s.index_options = reg.request.index;
  s.created_unix = absl::ToUnixSeconds(absl::Now());
  context->tokens = std::move(reg.tokens);
  reg.callback(RegisterEvent{
      .stage = RegisterStage::kPersisting, .progress = 0, .tokens_done = S, .tokens_total = S});
  s.timings = reg.timings;
  double persist_seconds = 0;
  // The summary is final before publication (the published context is immutable).
  s.timings.total_seconds = Seconds(absl::Now() - reg.start);
  ContextSummary summary = s;
  absl::Status st = store_->Publish(context, &persist_seconds);
  if (!st.ok()) {
    reg.callback(RegisterEvent{.final = true, .status = st});
    return;
  }
  // The prefill's KV in device memory becomes the context's resident copy (gathered into
  // storage order on the engine thread) rather than being uploaded again at first use.
  if (Backend* be = reg.kv.backend(); be != nullptr && !be->host_memory()) {
    absl::MutexLock lock(&mu_);
    adoptions_.push_back({context, std::move(reg.kv)});
  }
  reg.kv = SequenceKV();
  summary.timings.persist_seconds = persist_seconds;
  summary.timings.total_seconds = Seconds(absl::Now() - reg.start);
  spdlog::info(
      "registered context '{}': {} tokens, {:.2f} s (prefill {:.2f}, clustering {:.2f}, "
      "calibration {:.2f})",
      summary.name, S, summary.timings.total_seconds, summary.timings.prefill_seconds,
      summary.timings.clustering_seconds, summary.timings.calibration_seconds);
  reg.callback(RegisterEvent{.stage = RegisterStage::kDone,
                             .progress = 1,
                             .tokens_done = S,
                             .tokens_total = S,
                             .final = true,
                             .status = absl::OkStatus(),
                             .context = summary});
}

}  // namespace squeeze
