// Serves registered Collectables as Prometheus text on their own HTTP port, like prometheus-cpp's
// Exposer: POSIX sockets, one acceptor thread that handles one connection at a time.
//   GET|HEAD /metrics  -> 200, text/plain; version=0.0.4
//   GET|HEAD a path added with AddPath -> its handler's code and text (health probes)
//   other method       -> 405;  other path -> 404;  request head over the limit -> 431
// Every connection is closed after one response (HTTP/1.1, `Connection: close`), reads and writes
// have a deadline, and the request head is bounded, so a slow or hostile client costs at most one
// deadline and never reaches the engine: a scrape only takes the metric and stats locks briefly.
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

namespace squeeze::metrics {

struct ExposerOptions {
  size_t max_request_bytes = 8192;               // request line + headers
  absl::Duration io_timeout = absl::Seconds(2);  // whole request read, and whole response write
};

class Exposer {
 public:
  // Binds `address` ("host:port", "[v6]:port" or ":port" for every interface; port 0 picks a
  // free one) and starts the acceptor thread.
  static absl::StatusOr<std::unique_ptr<Exposer>> Start(const std::string& address,
                                                        ExposerOptions options = {});
  // Stops accepting (an in-flight connection is abandoned at once) and joins the thread.
  ~Exposer();
  Exposer(const Exposer&) = delete;
  Exposer& operator=(const Exposer&) = delete;

  // Scraped in registration order; expired ones are skipped and forgotten.
  void RegisterCollectable(const std::weak_ptr<Collectable>& collectable);
  // Serves GET/HEAD `path` with the handler's status code and plain-text body. The handler runs
  // on the acceptor thread and must be quick.
  using PathHandler = std::function<std::pair<int, std::string>()>;
  void AddPath(const std::string& path, PathHandler handler);

  int port() const { return port_; }
  uint64_t scrapes() const { return scrapes_.load(); }  // 200 responses sent

 private:
  Exposer(int listen_fd, int port, int wake_read, int wake_write, ExposerOptions options);
  void AcceptLoop();
  void HandleConnection(int fd);
  std::string Render();

  const int listen_fd_;
  const int port_;
  const int wake_read_;  // self-pipe: the destructor writes a byte to stop the loop
  const int wake_write_;
  const ExposerOptions options_;
  std::mutex mu_;
  std::vector<std::weak_ptr<Collectable>> collectables_;  // guarded by mu_
  std::map<std::string, PathHandler> paths_;              // guarded by mu_
  std::atomic<uint64_t> scrapes_{0};
  std::thread thread_;
};

}  // namespace squeeze::metrics
