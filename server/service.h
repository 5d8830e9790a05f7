// The squeeze.v1.Squeeze gRPC service (callback API). Handlers authenticate, validate, hand work
// to the engine and stream its events back; they never block on the engine.
//
// Every method is raw (ByteBuffer in and out): the service parses requests itself so a malformed
// one gets INVALID_ARGUMENT with a reason (server/proto_buffers.h). With API keys, every call
// carries `authorization: Bearer <key>` and runs as the key's tenant, which sees, uses and
// deletes only its own contexts; health and reflection are other services and stay open.
#pragma once

#include <memory>

#include "engine/scheduler/engine.h"
#include "server/auth.h"
#include "server/convert.h"
#include "squeeze/v1/squeeze.grpc.pb.h"

namespace squeeze::server {

class SqueezeMetrics;

using RawSqueezeService = v1::Squeeze::WithRawCallbackMethod_RegisterContext<
    v1::Squeeze::WithRawCallbackMethod_Generate<v1::Squeeze::WithRawCallbackMethod_GetContext<
        v1::Squeeze::WithRawCallbackMethod_ListContexts<
            v1::Squeeze::WithRawCallbackMethod_DeleteContext<
                v1::Squeeze::WithRawCallbackMethod_Tokenize<v1::Squeeze::Service>>>>>>;

class SqueezeService final : public RawSqueezeService {
 public:
  // `metrics` (may be null) observes every Generate / RegisterContext outcome; it must outlive
  // the engine's callbacks. `keys` null: no authentication, every caller is tenant "".
  SqueezeService(Engine* engine, RequestLimits limits, SqueezeMetrics* metrics = nullptr,
                 std::shared_ptr<ApiKeys> keys = nullptr)
      : engine_(engine), limits_(limits), metrics_(metrics), keys_(std::move(keys)) {}

  grpc::ServerWriteReactor<grpc::ByteBuffer>* RegisterContext(
      grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* request) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Generate(grpc::CallbackServerContext* ctx,
                                                       const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* GetContext(grpc::CallbackServerContext* ctx,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ListContexts(grpc::CallbackServerContext* ctx,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* DeleteContext(grpc::CallbackServerContext* ctx,
                                          const grpc::ByteBuffer* request,
                                          grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* ctx,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;

 private:
  // The caller's tenant ("" without API keys), or UNAUTHENTICATED.
  absl::StatusOr<std::string> Authenticate(grpc::CallbackServerContext* ctx) const;

  Engine* engine_;
  const RequestLimits limits_;
  SqueezeMetrics* const metrics_;
  const std::shared_ptr<ApiKeys> keys_;
};

}  // namespace squeeze::server
