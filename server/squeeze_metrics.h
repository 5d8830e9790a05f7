// The Squeeze metric families (registered once, at construction) and the code that turns engine
// state into them. Two sources, as in vLLM's server:
//  - per request: the service hands every Generate / RegisterContext outcome to Observe*(); the
//    final engine event carries usage and timings (TTFT, queue, e2e, decode, realised budget);
//  - engine state: on every scrape, Collect() reads Engine::stats() and the context list into the
//    gauges and the step / token counters, so the values are current without a polling thread.
// The engine knows nothing of metrics; it only emits EngineStats and events.
//
// Label values: status is the canonical code name (OK, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...);
// finish_reason is length | stop | eos for completed requests and abort for any other outcome;
// mode is squeezed | dense | recent | pages.
#pragma once

#include <cstdint>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "engine/scheduler/engine.h"
#include "server/metrics_registry.h"

namespace squeeze::server {

class SqueezeMetrics final : public metrics::Collectable {
 public:
  // `engine` (may be null: no engine-state metrics) must outlive this object's Collect() calls.
  explicit SqueezeMetrics(const Engine* engine);

  // A Generate RPC ended: `final_event` is the engine's last event (status, usage, timings).
  void ObserveGenerate(const GenerateEvent& final_event);
  // A Generate RPC refused before the engine ran it (validation, queue full, draining).
  void ObserveGenerateRejected(const absl::Status& status);
  // A RegisterContext RPC ended with the engine's final event.
  void ObserveRegistration(const RegisterEvent& final_event);
  void ObserveRegistrationRejected(const absl::Status& status);
  // The time between two consecutive tokens of one stream, observed as each token is emitted
  // (a per-request mean would hide a stall).
  void ObserveInterTokenGap(double seconds);

  // Refreshes the engine-state metrics, then snapshots every family.
  std::vector<metrics::MetricFamily> Collect() const override;

  metrics::Registry& registry() { return *registry_; }

 private:
  void RefreshFromEngine() const;
  metrics::Counter& RequestCounter(const absl::Status& status, FinishReason reason);

  const Engine* const engine_;
  const std::shared_ptr<metrics::Registry> registry_;

  // Families (owned by registry_) and the references the hot path keeps.
  metrics::Family<metrics::Counter>& requests_;
  metrics::Counter* requests_ok_[3];  // length, stop, eos
  metrics::Counter& prompt_tokens_;
  metrics::Counter& context_tokens_;
  metrics::Counter& generation_tokens_;
  metrics::Histogram& ttft_;
  metrics::Histogram& e2e_latency_;
  metrics::Histogram& queue_time_;
  metrics::Histogram& inter_token_latency_;
  metrics::Histogram* kv_budget_[4];  // squeezed, dense, recent, pages
  metrics::Gauge& running_;
  metrics::Gauge& waiting_;
  metrics::Gauge& registrations_running_;
  metrics::Gauge& resident_contexts_;
  metrics::Gauge& context_kv_bytes_;
  metrics::Family<metrics::Counter>& registrations_;
  metrics::Counter& registrations_reused_;
  metrics::Histogram* registration_seconds_[6];  // tokenize, prefill, clustering, calibration,
                                                 // persist, total
  metrics::Counter& engine_steps_;

  // Engine counters already turned into metric increments (the engine's are cumulative).
  mutable absl::Mutex refresh_mu_;
  mutable int64_t seen_steps_ ABSL_GUARDED_BY(refresh_mu_) = 0;
  mutable int64_t seen_generated_ ABSL_GUARDED_BY(refresh_mu_) = 0;
};

}  // namespace squeeze::server
