// The engine's lifecycle, its step loop (admission of queued work into the running batch,
// chunked prefill beside decode, sampling, retirement) and the context queries; Generate's
// admission is in admission.cc, RegisterContext's pipeline in registration.cc.
#include "engine/scheduler/engine.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/common/status_macros.h"
#include "engine/scheduler/engine_internal.h"
#include "spdlog/spdlog.h"

namespace squeeze {

using engine_internal::CheckTokens;
using engine_internal::Seconds;

namespace {

TokenLogprobs ToLogprobs(const SampleInfo& info) {
  TokenLogprobs lp{.logprob = info.logprob};
  for (const auto& t : info.top) lp.top.emplace_back(t.token, t.logprob);
  return lp;
}

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
    if (seq->request.prompt_logprobs >= 0) {
      // Each input row scores the input token after it (the last one has none).
      const std::span<const int32_t> input(seq->input);
      steps.back().score_targets = input.subspan(seq->prefilled + 1, last ? n - 1 : n);
      steps.back().score_top = seq->request.prompt_logprobs;
      steps.back().scores = &seq->prompt_scores;
    }
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
  }
  if (seq.request.prompt_logprobs >= 0 && !seq.prompt_scores_sent) {
    // With the first token: the input and the scores of its tokens after the first.
    seq.prompt_scores_sent = true;
    ev.prompt_tokens = seq.input;
    for (const SampleInfo& scored : seq.prompt_scores) {
      ev.prompt_logprobs.push_back(ToLogprobs(scored));
    }
    std::vector<SampleInfo>().swap(seq.prompt_scores);
  }
  if (!ev.tokens.empty()) {
    if (sp.return_logprobs) ev.logprobs.push_back(ToLogprobs(info));
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
    if (!ev.tokens.empty() || !ev.prompt_tokens.empty()) seq.callback(std::move(ev));
    return;
  }
  if (!stopped_by_string) {
    // Natural end (EOS, stop token, length): release the text held back for UTF-8 completion
    // and stop-string matching; a stop string may still complete inside it.
    StopMatcher::Result r = seq.stop->Push(seq.detok->Flush());
    ev.text += r.emit;
    if (!r.stopped) ev.text += seq.stop->Flush();
  }
  if (!ev.tokens.empty() || !ev.text.empty() || !ev.prompt_tokens.empty()) {
    seq.callback(std::move(ev));
  }
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

}  // namespace squeeze
