// A small synchronous C++ client for squeeze.v1.Squeeze (depends only on the generated proto).
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "squeeze/v1/squeeze.grpc.pb.h"

namespace squeeze::client {

// How to reach a server that uses TLS and/or API keys (README: Security).
struct ClientOptions {
  bool tls = false;
  std::string ca_file;    // PEM roots that sign the server's certificate (empty: system roots)
  std::string cert_file;  // PEM client certificate chain and key, for mutual TLS
  std::string key_file;
  std::string api_key;  // sent as `authorization: Bearer <key>` with every call
};

// A channel to `target` (host:port) with `options`' credentials; INVALID_ARGUMENT when a file
// cannot be read or cert/key are not given together.
absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateChannel(const std::string& target,
                                                             const ClientOptions& options);

// Metadata header naming the context a call is about. Every call that names a context sends it,
// so a proxy in front of several replicas can route all calls of one context to one replica by
// consistent hashing on it (deploy/helm/squeeze/files/nginx-affinity.conf.template).
inline constexpr char kContextHeader[] = "x-squeeze-context";

class SqueezeClient {
 public:
  // `target`: host:port; plaintext, no API key.
  explicit SqueezeClient(const std::string& target);
  // `api_key`: sent with every call (empty: none).
  explicit SqueezeClient(std::shared_ptr<grpc::Channel> channel, std::string api_key = "");

  // Streams progress events to `on_event`; returns the final status. `info` receives the
  // ContextInfo of the DONE event.
  grpc::Status RegisterContext(const v1::RegisterContextRequest& request,
                               const std::function<void(const v1::RegisterContextEvent&)>& on_event,
                               v1::ContextInfo* info, double timeout_seconds = 0);
  // Streams responses to `on_response`; returns the final status. `on_response` may return
  // false to cancel the call.
  grpc::Status Generate(const v1::GenerateRequest& request,
                        const std::function<bool(const v1::GenerateResponse&)>& on_response,
                        double timeout_seconds = 0);
  grpc::Status GetContext(const std::string& name, v1::ContextInfo* info);
  grpc::Status ListContexts(v1::ListContextsResponse* response);
  grpc::Status DeleteContext(const std::string& name);
  grpc::Status Tokenize(const std::string& text, bool add_bos, v1::TokenizeResponse* response);
  // grpc.health.v1 status of `service` ("" = the whole server): true when SERVING.
  grpc::Status CheckHealth(const std::string& service, bool* serving);

 private:
  // Every call's context: the API key's metadata.
  void Prepare(grpc::ClientContext* ctx) const;

  std::shared_ptr<grpc::Channel> channel_;
  std::string api_key_;
  std::unique_ptr<v1::Squeeze::Stub> stub_;
};

}  // namespace squeeze::client
