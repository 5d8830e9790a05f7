#include "server/health_endpoints.h"

#include <string>
#include <utility>

namespace squeeze::server {

void AddHealthEndpoints(metrics::Exposer& exposer, const Engine* engine,
                        const std::atomic<ServingPhase>* phase) {
  exposer.AddPath("/startupz", [phase]() -> std::pair<int, std::string> {
    if (phase->load() != ServingPhase::kStarting) return {200, "started\n"};
    return {503, "starting: loading the model and persisted contexts\n"};
  });
  exposer.AddPath("/readyz", [engine, phase]() -> std::pair<int, std::string> {
    if (engine->faulted()) return {503, "faulted: the engine hit a device error\n"};
    if (phase->load() == ServingPhase::kDraining || engine->draining()) {
      return {503, "draining: finishing running streams, refusing new work\n"};
    }
    if (phase->load() == ServingPhase::kStarting) return {503, "starting\n"};
    return {200, "ready\n"};
  });
  exposer.AddPath("/livez", [engine]() -> std::pair<int, std::string> {
    if (engine->faulted()) return {503, "faulted: the engine hit a device error; restart it\n"};
    return {200, "live\n"};
  });
}

}  // namespace squeeze::server
