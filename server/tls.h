// TLS for the gRPC and metrics ports from PEM files, re-read while the server runs so that
// certificates rotate without a restart: gRPC's FileWatcherCertificateProvider for the gRPC
// port, an OpenSSL certificate callback over the same files for the metrics port.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"

namespace grpc {
class ServerCredentials;
}
struct ssl_ctx_st;  // OpenSSL's SSL_CTX

namespace squeeze::server {

struct TlsFiles {
  std::string cert_file;       // PEM certificate chain of the server; empty: no TLS
  std::string key_file;        // PEM private key of cert_file
  std::string client_ca_file;  // PEM CAs; set: clients must present a certificate they signed
  int reload_seconds = 60;     // how often the files are checked for changes

  bool enabled() const { return !cert_file.empty(); }
};

// Checks that the files are set together, readable, parse, and that the key matches the
// certificate (INVALID_ARGUMENT naming the --tls_* flag otherwise).
absl::Status ValidateTlsFiles(const TlsFiles& files);

std::shared_ptr<grpc::ServerCredentials> GrpcServerCredentials(const TlsFiles& files);

// Configures an SSL_CTX (metrics HTTPS): TLS >= 1.2, the certificate and key read from the
// files per handshake (re-read when they change, at most every reload_seconds), and client
// certificates required and verified when client_ca_file is set.
std::function<bool(ssl_ctx_st&)> MetricsTlsSetup(const TlsFiles& files);

}  // namespace squeeze::server
