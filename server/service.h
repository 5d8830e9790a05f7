// The squeeze.v1.Squeeze gRPC service (callback API). Handlers validate, hand work to the
// engine and stream its events back; they never block on the engine.
#pragma once

#include "engine/scheduler/engine.h"
#include "server/convert.h"
#include "squeeze/v1/squeeze.grpc.pb.h"

namespace squeeze::server {

class SqueezeMetrics;

class SqueezeService final : public v1::Squeeze::CallbackService {
 public:
  // `metrics` (may be null) observes every Generate / RegisterContext outcome; it must outlive
  // the engine's callbacks.
  SqueezeService(Engine* engine, RequestLimits limits, SqueezeMetrics* metrics = nullptr)
      : engine_(engine), limits_(limits), metrics_(metrics) {}

  grpc::ServerWriteReactor<v1::RegisterContextEvent>* RegisterContext(
      grpc::CallbackServerContext* ctx, const v1::RegisterContextRequest* req) override;
  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(grpc::CallbackServerContext* ctx,
                                                           const v1::GenerateRequest* req) override;
  grpc::ServerUnaryReactor* GetContext(grpc::CallbackServerContext* ctx,
                                       const v1::GetContextRequest* req,
                                       v1::ContextInfo* resp) override;
  grpc::ServerUnaryReactor* ListContexts(grpc::CallbackServerContext* ctx,
                                         const v1::ListContextsRequest* req,
                                         v1::ListContextsResponse* resp) override;
  grpc::ServerUnaryReactor* DeleteContext(grpc::CallbackServerContext* ctx,
                                          const v1::DeleteContextRequest* req,
                                          v1::DeleteContextResponse* resp) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* ctx,
                                     const v1::TokenizeRequest* req,
                                     v1::TokenizeResponse* resp) override;

 private:
  Engine* engine_;
  const RequestLimits limits_;
  SqueezeMetrics* const metrics_;
};

}  // namespace squeeze::server
