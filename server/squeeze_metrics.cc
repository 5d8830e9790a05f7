#include "server/squeeze_metrics.h"

#include <algorithm>

namespace squeeze::server {
namespace {

using metrics::BucketBoundaries;
using metrics::BuildCounter;
using metrics::BuildGauge;
using metrics::BuildHistogram;
using metrics::Counter;
using metrics::Gauge;
using metrics::Histogram;
using metrics::Registry;

// vLLM's boundaries, extended downwards: a small model on a CPU answers in milliseconds.
const BucketBoundaries kTtftBuckets = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25, 0.5,
                                       0.75,  1.0,   2.5,  5.0,  7.5,  10.0, 20.0, 40.0, 80.0};
const BucketBoundaries kItlBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1,
                                      0.15,  0.2,    0.3,   0.4,  0.5,   0.75, 1.0,   2.5};
const BucketBoundaries kLatencyBuckets = {0.01, 0.05, 0.1,  0.3,  0.5,   0.8,  1.0,
                                          1.5,  2.0,  2.5,  5.0,  10.0,  15.0, 20.0,
                                          30.0, 40.0, 50.0, 60.0, 120.0, 300.0};
const BucketBoundaries kQueueBuckets = {0.0001, 0.001, 0.005, 0.01, 0.05, 0.1,  0.25,
                                        0.5,    1.0,   2.5,   5.0,  10.0, 30.0, 60.0};
// Registration stages of long documents run for minutes.
const BucketBoundaries kRegistrationBuckets = {0.01, 0.05, 0.1,  0.25,  0.5,   1.0,   2.5,   5.0,
                                               10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0};
// Realised KV budget: the fraction of the context's keys a request attended to.
const BucketBoundaries kBudgetBuckets = {0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25,
                                         0.3,  0.4,  0.5,  0.6,  0.7,   0.8, 0.9,  1.0};

Counter& NewCounter(Registry& r, const char* name, const char* help) {
  return BuildCounter().Name(name).Help(help).Register(r).Add({});
}
Gauge& NewGauge(Registry& r, const char* name, const char* help) {
  return BuildGauge().Name(name).Help(help).Register(r).Add({});
}
Histogram& NewHistogram(Registry& r, const char* name, const char* help,
                        const BucketBoundaries& buckets) {
  return BuildHistogram().Name(name).Help(help).Register(r).Add({}, buckets);
}

const char* FinishReasonLabel(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength:
      return "length";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kEos:
      return "eos";
    case FinishReason::kNone:
      break;
  }
  return "abort";
}

constexpr const char* kRegistrationStages[6] = {"tokenize",    "prefill", "clustering",
                                                "calibration", "persist", "total"};

}  // namespace

SqueezeMetrics::SqueezeMetrics(const Engine* engine)
    : engine_(engine),
      registry_(std::make_shared<Registry>()),
      requests_(BuildCounter()
                    .Name("squeeze_requests_total")
                    .Help("Generate requests ended, by finish reason (length|stop|eos; abort: "
                          "ended without completing) and status code")
                    .Register(*registry_)),
      prompt_tokens_(NewCounter(*registry_, "squeeze_prompt_tokens_total",
                                "Query (prompt) tokens of ended Generate requests")),
      context_tokens_(NewCounter(*registry_, "squeeze_context_tokens_total",
                                 "Fixed-context tokens attended by ended Generate requests, "
                                 "reused from registered KV (never recomputed)")),
      generation_tokens_(NewCounter(*registry_, "squeeze_generation_tokens_total",
                                    "Tokens generated (sampled and streamed)")),
      ttft_(NewHistogram(*registry_, "squeeze_time_to_first_token_seconds",
                         "Time from arrival to the first generated token", kTtftBuckets)),
      e2e_latency_(NewHistogram(*registry_, "squeeze_e2e_request_latency_seconds",
                                "Time from arrival to the last token of completed requests",
                                kLatencyBuckets)),
      queue_time_(NewHistogram(*registry_, "squeeze_request_queue_time_seconds",
                               "Time completed requests waited before joining the running batch",
                               kQueueBuckets)),
      inter_token_latency_(NewHistogram(
          *registry_, "squeeze_inter_token_latency_seconds",
          "Gap between consecutive generated tokens of a stream, each gap observed as it ends",
          kItlBuckets)),
      running_(NewGauge(*registry_, "squeeze_num_requests_running",
                        "Generate requests in the running batch")),
      waiting_(NewGauge(*registry_, "squeeze_num_requests_waiting",
                        "Generate requests queued and not yet running")),
      registrations_running_(NewGauge(*registry_, "squeeze_num_registrations_running",
                                      "Context registrations queued or in progress")),
      resident_contexts_(
          NewGauge(*registry_, "squeeze_resident_contexts", "Registered contexts held in memory")),
      context_kv_bytes_(NewGauge(*registry_, "squeeze_context_kv_bytes",
                                 "Bytes of KV cache held by registered contexts")),
      registrations_(BuildCounter()
                         .Name("squeeze_registrations_total")
                         .Help("RegisterContext calls ended, by status code")
                         .Register(*registry_)),
      registrations_reused_(NewCounter(*registry_, "squeeze_registrations_reused_total",
                                       "Registrations answered by an existing context with the "
                                       "same name and content (no work done)")),
      engine_steps_(NewCounter(*registry_, "squeeze_engine_steps_total",
                               "Engine schedule-execute-update iterations that ran the model")) {
  const FinishReason ok_reasons[3] = {FinishReason::kLength, FinishReason::kStop,
                                      FinishReason::kEos};
  for (int i = 0; i < 3; ++i) {
    requests_ok_[i] =
        &requests_.Add({{"finish_reason", FinishReasonLabel(ok_reasons[i])}, {"status", "OK"}});
  }
  auto& budget = BuildHistogram()
                     .Name("squeeze_kv_budget_realised")
                     .Help(
                         "Fraction of the fixed context's keys attended per completed request "
                         "with a context, by attention mode")
                     .Register(*registry_);
  const char* modes[4] = {"squeezed", "dense", "recent", "pages"};
  for (int i = 0; i < 4; ++i) kv_budget_[i] = &budget.Add({{"mode", modes[i]}}, kBudgetBuckets);
  auto& stages = BuildHistogram()
                     .Name("squeeze_registration_seconds")
                     .Help("Time spent per registration stage of newly registered contexts")
                     .Register(*registry_);
  for (int i = 0; i < 6; ++i) {
    registration_seconds_[i] =
        &stages.Add({{"stage", kRegistrationStages[i]}}, kRegistrationBuckets);
  }
  registrations_.Add({{"status", "OK"}});  // exposed at 0 from the start
}

Counter& SqueezeMetrics::RequestCounter(const absl::Status& status, FinishReason reason) {
  if (status.ok()) {
    switch (reason) {
      case FinishReason::kLength:
        return *requests_ok_[0];
      case FinishReason::kStop:
        return *requests_ok_[1];
      case FinishReason::kEos:
        return *requests_ok_[2];
      case FinishReason::kNone:
        break;
    }
  }
  // Failures are rare: a map lookup under the family mutex is fine.
  return requests_.Add({{"finish_reason", status.ok() ? FinishReasonLabel(reason) : "abort"},
                        {"status", absl::StatusCodeToString(status.code())}});
}

void SqueezeMetrics::ObserveGenerate(const GenerateEvent& e) {
  RequestCounter(e.status, e.finish_reason).Increment();
  prompt_tokens_.Increment(static_cast<double>(e.usage.query_tokens));
  context_tokens_.Increment(static_cast<double>(e.usage.context_tokens));
  if (!e.status.ok()) return;  // latencies describe completed requests only
  const GenerateTimings& t = e.timings;
  e2e_latency_.Observe(t.total_seconds);
  queue_time_.Observe(t.queue_seconds);
  if (e.usage.completion_tokens > 0) ttft_.Observe(t.ttft_seconds);
  if (e.usage.context_tokens > 0) {
    switch (e.mode_used) {
      case AttentionMode::kSqueezed:
        kv_budget_[0]->Observe(e.usage.kv_budget);
        break;
      case AttentionMode::kDense:
        kv_budget_[1]->Observe(e.usage.kv_budget);
        break;
      case AttentionMode::kRecent:
        kv_budget_[2]->Observe(e.usage.kv_budget);
        break;
      case AttentionMode::kPages:
        kv_budget_[3]->Observe(e.usage.kv_budget);
        break;
      case AttentionMode::kAuto:
        break;  // resolved by the engine; never reported
    }
  }
}

void SqueezeMetrics::ObserveGenerateRejected(const absl::Status& status) {
  RequestCounter(status, FinishReason::kNone).Increment();
}

void SqueezeMetrics::ObserveRegistration(const RegisterEvent& e) {
  registrations_.Add({{"status", absl::StatusCodeToString(e.status.code())}}).Increment();
  if (!e.status.ok()) return;
  if (e.context.reused) {
    registrations_reused_.Increment();
    return;
  }
  const RegistrationTimings& t = e.context.timings;
  const double seconds[6] = {t.tokenize_seconds,    t.prefill_seconds, t.clustering_seconds,
                             t.calibration_seconds, t.persist_seconds, t.total_seconds};
  for (int i = 0; i < 6; ++i) {
    // Clustering and calibration only run for contexts with an index.
    if ((i == 2 || i == 3) && !e.context.has_index) continue;
    registration_seconds_[i]->Observe(seconds[i]);
  }
}

void SqueezeMetrics::ObserveInterTokenGap(double seconds) { inter_token_latency_.Observe(seconds); }

void SqueezeMetrics::ObserveRegistrationRejected(const absl::Status& status) {
  registrations_.Add({{"status", absl::StatusCodeToString(status.code())}}).Increment();
}

void SqueezeMetrics::RefreshFromEngine() const {
  if (engine_ == nullptr) return;
  const EngineStats s = engine_->stats();
  // `running` is the last step's batch and may include sequences that finished in it.
  const int running = std::clamp(s.running, 0, s.queued);
  running_.Set(running);
  waiting_.Set(s.queued - running);
  registrations_running_.Set(s.registrations);
  int64_t contexts = 0, kv_bytes = 0;
  for (const ContextSummary& c : engine_->ResidentContexts()) {
    ++contexts;
    kv_bytes += c.kv_bytes;
  }
  resident_contexts_.Set(static_cast<double>(contexts));
  context_kv_bytes_.Set(static_cast<double>(kv_bytes));
  absl::MutexLock lock(&refresh_mu_);
  engine_steps_.Increment(static_cast<double>(s.steps - seen_steps_));
  generation_tokens_.Increment(static_cast<double>(s.generated_tokens - seen_generated_));
  seen_steps_ = std::max(seen_steps_, s.steps);
  seen_generated_ = std::max(seen_generated_, s.generated_tokens);
}

std::vector<metrics::MetricFamily> SqueezeMetrics::Collect() const {
  RefreshFromEngine();
  return registry_->Collect();
}

}  // namespace squeeze::server
