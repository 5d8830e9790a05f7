#include "server/service.h"

#include <atomic>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/proto_buffers.h"
#include "server/squeeze_metrics.h"
#include "server/status.h"
#include "server/stream_writer.h"
#include "spdlog/spdlog.h"

namespace squeeze::server {
namespace {

std::string NewRequestId() {
  static std::atomic<uint64_t> counter{0};
  return absl::StrCat("req-", absl::ToUnixMicros(absl::Now()), "-", counter.fetch_add(1));
}

grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* ctx, grpc::Status status) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(std::move(status));
  return reactor;
}

template <typename Message>
grpc::ServerUnaryReactor* Reply(grpc::CallbackServerContext* ctx, const Message& message,
                                grpc::ByteBuffer* response) {
  *response = ToByteBuffer(message);
  return FinishUnary(ctx, grpc::Status::OK);
}

// A streaming call refused before any work: its writer finishes at once with `status`.
template <typename Message>
StreamWriter<Message>* Refuse(const absl::Status& status) {
  auto* writer = new StreamWriter<Message>();
  writer->sink()->Finish(ToGrpcStatus(status));
  return writer;
}

}  // namespace

absl::StatusOr<std::string> SqueezeService::Authenticate(grpc::CallbackServerContext* ctx) const {
  if (!keys_) return std::string();
  const auto& metadata = ctx->client_metadata();
  auto it = metadata.find("authorization");
  const absl::string_view value = it == metadata.end()
                                      ? absl::string_view()
                                      : absl::string_view(it->second.data(), it->second.size());
  return keys_->Authenticate(value);
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* SqueezeService::RegisterContext(
    grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* raw) {
  using Writer = StreamWriter<v1::RegisterContextEvent>;
  auto refuse = [&](const absl::Status& st) {
    if (metrics_) metrics_->ObserveRegistrationRejected(st);
    return Refuse<v1::RegisterContextEvent>(st);
  };
  absl::StatusOr<std::string> tenant = Authenticate(ctx);
  if (!tenant.ok()) return refuse(tenant.status());
  v1::RegisterContextRequest req;
  if (absl::Status st = ParseRequest(*raw, &req); !st.ok()) return refuse(st);
  auto request = ConvertRegisterRequest(req, limits_);
  if (!request.ok()) return refuse(request.status());
  request->tenant = *tenant;

  auto* writer = new Writer();
  auto sink = writer->sink();
  v1::RegisterContextEvent tokenizing;
  tokenizing.set_stage(v1::RegisterContextEvent::TOKENIZING);
  sink->Push(std::move(tokenizing));
  const std::string name = request->name;
  SqueezeMetrics* metrics = metrics_;
  auto handle = engine_->Register(std::move(*request), [sink, name, metrics](RegisterEvent event) {
    if (event.final && metrics) metrics->ObserveRegistration(event);
    if (event.final && !event.status.ok()) {
      spdlog::warn("registration of '{}' failed: {}", name, event.status.ToString());
      sink->Finish(ToGrpcStatus(event.status));
      return;
    }
    sink->Push(ToProto(event));
    if (event.final) sink->Finish(grpc::Status::OK);
  });
  if (!handle.ok()) {
    if (metrics_) metrics_->ObserveRegistrationRejected(handle.status());
    sink->Finish(ToGrpcStatus(handle.status()));
    return writer;
  }
  // A client that cancels (or disconnects) abandons the registration and frees its name.
  writer->set_on_cancel([h = *handle]() { h->Cancel(); });
  return writer;
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* SqueezeService::Generate(
    grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* raw) {
  using Writer = StreamWriter<v1::GenerateResponse>;
  auto refuse = [&](const absl::Status& st) {
    if (metrics_) metrics_->ObserveGenerateRejected(st);
    return Refuse<v1::GenerateResponse>(st);
  };
  absl::StatusOr<std::string> tenant = Authenticate(ctx);
  if (!tenant.ok()) return refuse(tenant.status());
  v1::GenerateRequest req;
  if (absl::Status st = ParseRequest(*raw, &req); !st.ok()) return refuse(st);
  auto request = ConvertGenerateRequest(req, limits_);
  if (!request.ok()) return refuse(request.status());
  request->tenant = *tenant;
  if (request->request_id.empty()) request->request_id = NewRequestId();
  request->deadline = absl::FromChrono(ctx->deadline());

  auto* writer = new Writer();
  auto sink = writer->sink();
  const std::string id = request->request_id;
  SqueezeMetrics* metrics = metrics_;
  // Events arrive on the engine thread as each token is sampled: the time between two of them is
  // one inter-token gap (the first token's comes from prefill, so it starts the clock).
  absl::Time last_token;
  auto handle = engine_->Generate(
      std::move(*request), [sink, id, metrics, last_token](GenerateEvent event) mutable {
        if (metrics && !event.tokens.empty()) {
          const absl::Time now = absl::Now();
          if (last_token != absl::Time()) {
            metrics->ObserveInterTokenGap(absl::ToDoubleSeconds(now - last_token));
          }
          // Tokens of one event (none today) came out of one step: no gap between them.
          for (size_t i = 1; i < event.tokens.size(); ++i) metrics->ObserveInterTokenGap(0);
          last_token = now;
        }
        if (event.final && metrics) metrics->ObserveGenerate(event);
        if (event.final && !event.status.ok()) {
          spdlog::info("request {} ended: {}", id, event.status.ToString());
          sink->Finish(ToGrpcStatus(event.status));
          return;
        }
        v1::GenerateResponse resp = ToProto(event);
        resp.set_request_id(id);
        sink->Push(std::move(resp));
        if (event.final) sink->Finish(grpc::Status::OK);
      });
  if (!handle.ok()) {
    if (metrics_) metrics_->ObserveGenerateRejected(handle.status());
    sink->Finish(ToGrpcStatus(handle.status()));
    return writer;
  }
  writer->set_on_cancel([h = *handle]() { h->Cancel(); });
  return writer;
}

grpc::ServerUnaryReactor* SqueezeService::GetContext(grpc::CallbackServerContext* ctx,
                                                     const grpc::ByteBuffer* raw,
                                                     grpc::ByteBuffer* response) {
  absl::StatusOr<std::string> tenant = Authenticate(ctx);
  if (!tenant.ok()) return FinishUnary(ctx, ToGrpcStatus(tenant.status()));
  v1::GetContextRequest req;
  if (absl::Status st = ParseRequest(*raw, &req); !st.ok()) {
    return FinishUnary(ctx, ToGrpcStatus(st));
  }
  if (auto st = ValidateContextName(req.name()); !st.ok()) {
    return FinishUnary(ctx, ToGrpcStatus(st));
  }
  auto summary = engine_->GetContext(*tenant, req.name());
  if (!summary.ok()) return FinishUnary(ctx, ToGrpcStatus(summary.status()));
  return Reply(ctx, ToProto(*summary), response);
}

grpc::ServerUnaryReactor* SqueezeService::ListContexts(grpc::CallbackServerContext* ctx,
                                                       const grpc::ByteBuffer* raw,
                                                       grpc::ByteBuffer* response) {
  absl::StatusOr<std::string> tenant = Authenticate(ctx);
  if (!tenant.ok()) return FinishUnary(ctx, ToGrpcStatus(tenant.status()));
  v1::ListContextsRequest req;
  if (absl::Status st = ParseRequest(*raw, &req); !st.ok()) {
    return FinishUnary(ctx, ToGrpcStatus(st));
  }
  v1::ListContextsResponse resp;
  for (const ContextSummary& s : engine_->ListContexts(*tenant)) *resp.add_contexts() = ToProto(s);
  return Reply(ctx, resp, response);
}

grpc::ServerUnaryReactor* SqueezeService::DeleteContext(grpc::CallbackServerContext* ctx,
                                                        const grpc::ByteBuffer* raw,
                                                        grpc::ByteBuffer* response) {
  absl::StatusOr<std::string> tenant = Authenticate(ctx);
  if (!tenant.ok()) return FinishUnary(ctx, ToGrpcStatus(tenant.status()));
  v1::DeleteContextRequest req;
  if (absl::Status st = ParseRequest(*raw, &req); !st.ok()) {
    return FinishUnary(ctx, ToGrpcStatus(st));
  }
  if (auto st = ValidateContextName(req.name()); !st.ok()) {
    return FinishUnary(ctx, ToGrpcStatus(st));
  }
  absl::Status st = engine_->DeleteContext(*tenant, req.name());
  if (!st.ok()) return FinishUnary(ctx, ToGrpcStatus(st));
  v1::DeleteContextResponse resp;
  resp.set_deleted(true);
  return Reply(ctx, resp, response);
}

grpc::ServerUnaryReactor* SqueezeService::Tokenize(grpc::CallbackServerContext* ctx,
                                                   const grpc::ByteBuffer* raw,
                                                   grpc::ByteBuffer* response) {
  absl::StatusOr<std::string> tenant = Authenticate(ctx);
  if (!tenant.ok()) return FinishUnary(ctx, ToGrpcStatus(tenant.status()));
  v1::TokenizeRequest req;
  if (absl::Status st = ParseRequest(*raw, &req); !st.ok()) {
    return FinishUnary(ctx, ToGrpcStatus(st));
  }
  if (absl::Status st = CheckTextSize(req.text(), "text", limits_); !st.ok()) {
    return FinishUnary(ctx, ToGrpcStatus(st));
  }
  PromptInput input;
  input.text = req.text();
  auto ids = engine_->Tokenize(input, req.add_bos());
  if (!ids.ok()) return FinishUnary(ctx, ToGrpcStatus(ids.status()));
  v1::TokenizeResponse resp;
  for (int32_t id : *ids) {
    resp.add_ids(id);
    resp.add_pieces(engine_->tokenizer().TokenBytes(id));
  }
  return Reply(ctx, resp, response);
}

}  // namespace squeeze::server
