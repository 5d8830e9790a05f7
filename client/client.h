// A small synchronous C++ client for squeeze.v1.Squeeze (depends only on the generated proto).
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <string>

#include "squeeze/v1/squeeze.grpc.pb.h"

namespace squeeze::client {

// Metadata header naming the context a call is about. Every call that names a context sends it,
// so a proxy in front of several replicas can route all calls of one context to one replica by
// consistent hashing on it (deploy/helm/squeeze/files/nginx-affinity.conf.template).
inline constexpr char kContextHeader[] = "x-squeeze-context";

class SqueezeClient {
 public:
  // `target`: host:port.
  explicit SqueezeClient(const std::string& target);
  explicit SqueezeClient(std::shared_ptr<grpc::Channel> channel);

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
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Squeeze::Stub> stub_;
};

}  // namespace squeeze::client
