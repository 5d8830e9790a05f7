// Serves registered Collectables as Prometheus text on their own HTTP(S) port, like
// prometheus-cpp's Exposer (which runs civetweb): cpp-httplib's server with a worker per
// connection, so idle or slow clients never queue a scrape behind them.
//   GET|HEAD /metrics  -> 200, text/plain; version=0.0.4
//   GET|HEAD a path added with AddPath -> its handler's code and text (health probes)
//   other method       -> 405;  other path -> 404;  request head over the limit -> 431
// Every connection is closed after one response, reads and writes have a deadline, the request
// head is bounded, and a scrape only takes the metric and stats locks briefly, so a hostile
// client costs a worker for one deadline and never reaches the engine.
#pragma once

#include <atomic>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/metrics_registry.h"

struct ssl_ctx_st;  // OpenSSL's SSL_CTX

namespace httplib {
class Server;
}

namespace squeeze::metrics {

struct ExposerOptions {
  size_t max_request_bytes = 8192;               // request line + headers
  absl::Duration io_timeout = absl::Seconds(2);  // wait for a request; each read and write
  int max_workers = 128;                         // connections served at once; more wait
  // Set: HTTPS. Configures the server's SSL_CTX (certificates, client verification); false
  // refuses to start.
  std::function<bool(ssl_ctx_st&)> tls_setup;
};

class Exposer {
 public:
  // Binds `address` ("host:port", "[v6]:port" or ":port" for every interface; port 0 picks a
  // free one; never shared with another process) and starts serving.
  static absl::StatusOr<std::unique_ptr<Exposer>> Start(const std::string& address,
                                                        ExposerOptions options = {});
  // Stops accepting, lets in-flight connections end (at most one io_timeout) and joins.
  ~Exposer();
  Exposer(const Exposer&) = delete;
  Exposer& operator=(const Exposer&) = delete;

  // Scraped in registration order; expired ones are skipped and forgotten.
  void RegisterCollectable(const std::weak_ptr<Collectable>& collectable);
  // Serves GET/HEAD `path` with the handler's status code and plain-text body. The handler runs
  // on a connection's worker and must be quick.
  using PathHandler = std::function<std::pair<int, std::string>()>;
  void AddPath(const std::string& path, PathHandler handler);

  int port() const { return port_; }
  uint64_t scrapes() const { return scrapes_.load(); }  // 200 responses to GET/HEAD /metrics

 private:
  Exposer() = default;
  std::string Render();
  PathHandler FindPath(const std::string& path);  // null when none was added

  ExposerOptions options_;  // tls_setup may own state the SSL_CTX's callbacks point to
  std::unique_ptr<httplib::Server> http_;
  int port_ = 0;
  std::mutex mu_;
  std::vector<std::weak_ptr<Collectable>> collectables_;  // guarded by mu_
  std::map<std::string, PathHandler> paths_;              // guarded by mu_
  std::atomic<uint64_t> scrapes_{0};
  std::thread thread_;
};

}  // namespace squeeze::metrics
