#include "client/client.h"

#include <grpcpp/generic/generic_stub.h>

#include <chrono>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <sstream>

namespace squeeze::client {
namespace {

void SetTimeout(grpc::ClientContext* ctx, double seconds) {
  if (seconds > 0) {
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)));
  }
}

absl::StatusOr<std::string> ReadPem(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(std::string(what) + " '" + path + "' cannot be read");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Routing: the context name travels as metadata as well as in the request (see kContextHeader).
void SetContextRouting(grpc::ClientContext* ctx, const std::string& context) {
  if (!context.empty()) ctx->AddMetadata(kContextHeader, context);
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateChannel(const std::string& target,
                                                             const ClientOptions& options) {
  if (!options.tls) {
    if (!options.ca_file.empty() || !options.cert_file.empty() || !options.key_file.empty()) {
      return absl::InvalidArgumentError("TLS files given without TLS (set --tls)");
    }
    return grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  }
  if (options.cert_file.empty() != options.key_file.empty()) {
    return absl::InvalidArgumentError(
        "the client certificate and key (mutual TLS) must be given together");
  }
  grpc::SslCredentialsOptions ssl;
  for (auto [path, pem, what] : {std::tuple{&options.ca_file, &ssl.pem_root_certs, "CA file"},
                                 std::tuple{&options.cert_file, &ssl.pem_cert_chain, "certificate"},
                                 std::tuple{&options.key_file, &ssl.pem_private_key, "key"}}) {
    if (path->empty()) continue;
    absl::StatusOr<std::string> text = ReadPem(*path, what);
    if (!text.ok()) return text.status();
    *pem = std::move(*text);
  }
  return grpc::CreateChannel(target, grpc::SslCredentials(ssl));
}

SqueezeClient::SqueezeClient(const std::string& target)
    : SqueezeClient(grpc::CreateChannel(target, grpc::InsecureChannelCredentials())) {}

SqueezeClient::SqueezeClient(std::shared_ptr<grpc::Channel> channel, std::string api_key)
    : channel_(std::move(channel)),
      api_key_(std::move(api_key)),
      stub_(v1::Squeeze::NewStub(channel_)) {}

void SqueezeClient::Prepare(grpc::ClientContext* ctx) const {
  if (!api_key_.empty()) ctx->AddMetadata("authorization", "Bearer " + api_key_);
}

grpc::Status SqueezeClient::RegisterContext(
    const v1::RegisterContextRequest& request,
    const std::function<void(const v1::RegisterContextEvent&)>& on_event, v1::ContextInfo* info,
    double timeout_seconds) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  SetTimeout(&ctx, timeout_seconds);
  SetContextRouting(&ctx, request.name());
  auto reader = stub_->RegisterContext(&ctx, request);
  v1::RegisterContextEvent event;
  while (reader->Read(&event)) {
    if (on_event) on_event(event);
    if (event.stage() == v1::RegisterContextEvent::DONE && info) *info = event.context();
  }
  return reader->Finish();
}

grpc::Status SqueezeClient::Generate(
    const v1::GenerateRequest& request,
    const std::function<bool(const v1::GenerateResponse&)>& on_response, double timeout_seconds) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  SetTimeout(&ctx, timeout_seconds);
  SetContextRouting(&ctx, request.context());
  auto reader = stub_->Generate(&ctx, request);
  v1::GenerateResponse response;
  while (reader->Read(&response)) {
    if (on_response && !on_response(response)) {
      ctx.TryCancel();
      break;
    }
  }
  return reader->Finish();
}

grpc::Status SqueezeClient::GetContext(const std::string& name, v1::ContextInfo* info) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  SetContextRouting(&ctx, name);
  v1::GetContextRequest req;
  req.set_name(name);
  return stub_->GetContext(&ctx, req, info);
}

grpc::Status SqueezeClient::ListContexts(v1::ListContextsResponse* response) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  return stub_->ListContexts(&ctx, v1::ListContextsRequest(), response);
}

grpc::Status SqueezeClient::DeleteContext(const std::string& name) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  SetContextRouting(&ctx, name);
  v1::DeleteContextRequest req;
  req.set_name(name);
  v1::DeleteContextResponse resp;
  return stub_->DeleteContext(&ctx, req, &resp);
}

grpc::Status SqueezeClient::Tokenize(const std::string& text, bool add_bos,
                                     v1::TokenizeResponse* response) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::TokenizeRequest req;
  req.set_text(text);
  req.set_add_bos(add_bos);
  return stub_->Tokenize(&ctx, req, response);
}

grpc::Status SqueezeClient::CheckHealth(const std::string& service, bool* serving) {
  // grpc.health.v1.Health/Check called through the generic stub, so the client needs no
  // generated health proto: request = {string service = 1}, response = {enum status = 1}.
  grpc::GenericStub generic(channel_);
  std::string request;
  if (!service.empty()) {
    request.push_back(0x0a);
    request.push_back(static_cast<char>(service.size()));
    request += service;
  }
  grpc::Slice slice(request);
  grpc::ByteBuffer send(&slice, 1), recv;
  grpc::ClientContext ctx;
  Prepare(&ctx);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::Status status;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  generic.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &send, &recv,
                    [&](grpc::Status s) {
                      std::lock_guard<std::mutex> lock(mu);
                      status = std::move(s);
                      done = true;
                      cv.notify_one();
                    });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
  if (!status.ok()) return status;
  std::vector<grpc::Slice> slices;
  (void)recv.Dump(&slices);
  std::string bytes;
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  // SERVING = 1, encoded as field 1 varint: 0x08 0x01.
  *serving = bytes.size() >= 2 && bytes[0] == 0x08 && bytes[1] == 0x01;
  return grpc::Status::OK;
}

}  // namespace squeeze::client
