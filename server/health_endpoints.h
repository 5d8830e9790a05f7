// Kubernetes probes on the metrics port, one meaning each (deploy/helm/squeeze uses them):
//   /startupz  200 once the server serves: model, tokenizer and persisted contexts loaded and
//              the gRPC port open. 503 before (and the port itself opens only after the model
//              is loaded, so a probe during a long load fails to connect: still "starting").
//   /readyz    200 while new work is accepted; 503 while starting, draining (after SIGTERM) or
//              faulted. Readiness off takes the replica out of its Service.
//   /livez     200 unless the engine faulted (a CUDA error: only a restart helps); a draining
//              server stays live so its running streams can finish.
#pragma once

#include <atomic>

#include "engine/scheduler/engine.h"
#include "server/metrics_exposer.h"

namespace squeeze::server {

enum class ServingPhase { kStarting, kServing, kDraining };

// `phase` is set by the server as it starts and stops; `engine` and `phase` must outlive the
// exposer.
void AddHealthEndpoints(metrics::Exposer& exposer, const Engine* engine,
                        const std::atomic<ServingPhase>* phase);

}  // namespace squeeze::server
