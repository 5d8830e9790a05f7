// RegisterContext: the content tokenized, a finished context with the same content reused,
// the prefill queued for the engine thread (chunked, between decode steps), then clustering,
// calibration and publication on the indexer thread.
#include "engine/common/status_macros.h"
#include "engine/scheduler/engine_internal.h"
#include "spdlog/spdlog.h"

namespace squeeze {

using engine_internal::CheckTokens;
using engine_internal::Seconds;

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
  ContextSummary& s = context->summary;
  if (!reg.request.build_index) {
    context->kv = ContextKV::FromSequence(reg.kv, S);
  } else {
    auto progress = [&](std::string_view stage, double fraction) {
      if (reg.handle->cancelled()) return;
      reg.callback(RegisterEvent{.stage = stage == "calibrating" ? RegisterStage::kCalibrating
                                                                 : RegisterStage::kClustering,
                                 .progress = fraction,
                                 .tokens_done = S,
                                 .tokens_total = S});
    };
    BuildTimings build_timings;
    // The backend's k-means and window scorer (the GPU's) when it has them; they run on this
    // (indexer) thread, the k-means on the prefill's KV in place, while the host copy is made
    // beside it.
    auto built = BuildIndexedContext(
        reg.kv, S, reg.capture, model_config().num_heads, reg.request.index, progress,
        &build_timings, model_->backend().kmeans_solver(), model_->backend().window_scorer());
    if (!built.ok()) return fail(built.status());
    reg.timings.clustering_seconds = build_timings.clustering_seconds;
    reg.timings.calibration_seconds = build_timings.calibration_seconds;
    spdlog::info("context '{}': KV copied to the host in {:.2f} s beside the clustering",
                 reg.request.name, build_timings.host_copy_seconds);
    context->kv = std::move(built->kv);
    context->index = std::make_unique<SqueezeIndex>(std::move(built->index));
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
