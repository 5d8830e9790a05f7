#include "server/service.h"

#include <atomic>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
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

}  // namespace

grpc::ServerWriteReactor<v1::RegisterContextEvent>* SqueezeService::RegisterContext(
    grpc::CallbackServerContext* ctx, const v1::RegisterContextRequest* req) {
  auto* writer = new StreamWriter<v1::RegisterContextEvent>();
  auto sink = writer->sink();
  auto request = ConvertRegisterRequest(*req, limits_);
  if (!request.ok()) {
    if (metrics_) metrics_->ObserveRegistrationRejected(request.status());
    sink->Finish(ToGrpcStatus(request.status()));
    return writer;
  }
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

grpc::ServerWriteReactor<v1::GenerateResponse>* SqueezeService::Generate(
    grpc::CallbackServerContext* ctx, const v1::GenerateRequest* req) {
  auto* writer = new StreamWriter<v1::GenerateResponse>();
  auto sink = writer->sink();
  auto request = ConvertGenerateRequest(*req, limits_);
  if (!request.ok()) {
    if (metrics_) metrics_->ObserveGenerateRejected(request.status());
    sink->Finish(ToGrpcStatus(request.status()));
    return writer;
  }
  if (request->request_id.empty()) request->request_id = NewRequestId();
  request->deadline = absl::FromChrono(ctx->deadline());
  const std::string id = request->request_id;
  SqueezeMetrics* metrics = metrics_;
  auto handle = engine_->Generate(std::move(*request), [sink, id, metrics](GenerateEvent event) {
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
                                                     const v1::GetContextRequest* req,
                                                     v1::ContextInfo* resp) {
  if (auto st = ValidateContextName(req->name()); !st.ok())
    return FinishUnary(ctx, ToGrpcStatus(st));
  auto summary = engine_->GetContext(req->name());
  if (!summary.ok()) return FinishUnary(ctx, ToGrpcStatus(summary.status()));
  *resp = ToProto(*summary);
  return FinishUnary(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* SqueezeService::ListContexts(grpc::CallbackServerContext* ctx,
                                                       const v1::ListContextsRequest*,
                                                       v1::ListContextsResponse* resp) {
  for (const ContextSummary& s : engine_->ListContexts()) *resp->add_contexts() = ToProto(s);
  return FinishUnary(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* SqueezeService::DeleteContext(grpc::CallbackServerContext* ctx,
                                                        const v1::DeleteContextRequest* req,
                                                        v1::DeleteContextResponse* resp) {
  if (auto st = ValidateContextName(req->name()); !st.ok())
    return FinishUnary(ctx, ToGrpcStatus(st));
  absl::Status st = engine_->DeleteContext(req->name());
  resp->set_deleted(st.ok());
  return FinishUnary(ctx, ToGrpcStatus(st));
}

grpc::ServerUnaryReactor* SqueezeService::Tokenize(grpc::CallbackServerContext* ctx,
                                                   const v1::TokenizeRequest* req,
                                                   v1::TokenizeResponse* resp) {
  PromptInput input;
  input.text = req->text();
  auto ids = engine_->Tokenize(input, req->add_bos());
  if (!ids.ok()) return FinishUnary(ctx, ToGrpcStatus(ids.status()));
  for (int32_t id : *ids) {
    resp->add_ids(id);
    resp->add_pieces(engine_->tokenizer().TokenBytes(id));
  }
  return FinishUnary(ctx, grpc::Status::OK);
}

}  // namespace squeeze::server
