#include "server/metrics_exposer.h"

#include <httplib.h>
#include <sys/socket.h>

#include <cmath>
#include <condition_variable>
#include <deque>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace squeeze::metrics {
namespace {

// Splits "host:port", "[v6]:port" or ":port"; an empty host means every interface.
absl::Status ParseAddress(const std::string& address, std::string* host, int* port) {
  const auto bad = [&](const char* why) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address '", address, "': ", why, " (expected host:port)"));
  };
  size_t colon;
  if (!address.empty() && address[0] == '[') {
    const size_t close = address.find(']');
    if (close == std::string::npos || close + 1 >= address.size() || address[close + 1] != ':') {
      return bad("unterminated IPv6 host");
    }
    *host = address.substr(1, close - 1);
    colon = close + 1;
  } else {
    colon = address.rfind(':');
    if (colon == std::string::npos) return bad("no port");
    *host = address.substr(0, colon);
  }
  if (!absl::SimpleAtoi(address.substr(colon + 1), port) || *port < 0 || *port > 65535) {
    return bad("port must be a number in 0..65535");
  }
  if (host->empty()) *host = "0.0.0.0";
  return absl::OkStatus();
}

// httplib's task queue: a worker per connection up to `max` (then connections wait), kept for
// later connections. httplib's own pool has a fixed size from build time, so as many idle
// clients as workers would queue every scrape behind their read deadline.
class WorkerPerConnection : public httplib::TaskQueue {
 public:
  explicit WorkerPerConnection(size_t max) : max_(max) {}
  ~WorkerPerConnection() override { shutdown(); }

  void enqueue(std::function<void()> fn) override {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(fn));
    if (queue_.size() > idle_ && workers_.size() < max_) {
      workers_.emplace_back([this] { Work(); });
    } else {
      cv_.notify_one();
    }
  }

  void shutdown() override {
    std::vector<std::thread> workers;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      workers.swap(workers_);
    }
    cv_.notify_all();
    for (auto& w : workers) w.join();
  }

 private:
  void Work() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      ++idle_;
      cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      --idle_;
      if (queue_.empty()) return;  // stopping, nothing left to serve
      std::function<void()> fn = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      fn();
      lock.lock();
    }
  }

  const size_t max_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  std::vector<std::thread> workers_;
  size_t idle_ = 0;
  bool stop_ = false;
};

// httplib's server with access to its listening socket: httplib listens with a backlog of 5, so
// a burst of connections would have SYNs dropped and retried a second later.
template <typename Base>
class Listening : public Base {
 public:
  using Base::Base;
  void WidenBacklog() { ::listen(this->svr_sock_, SOMAXCONN); }
};

}  // namespace

absl::StatusOr<std::unique_ptr<Exposer>> Exposer::Start(const std::string& address,
                                                        ExposerOptions options) {
  std::string host;
  int port = 0;
  if (absl::Status st = ParseAddress(address, &host, &port); !st.ok()) return st;
  std::unique_ptr<Exposer> exposer(new Exposer());
  exposer->options_ = options;
  if (options.tls_setup) {
    auto https = std::make_unique<Listening<httplib::SSLServer>>(
        [e = exposer.get()](SSL_CTX& ctx) { return e->options_.tls_setup(ctx); });
    if (!https->is_valid()) {
      return absl::InvalidArgumentError(
          "metrics TLS: the certificate, key or client CA could not be loaded");
    }
    exposer->http_ = std::move(https);
  } else {
    exposer->http_ = std::make_unique<Listening<httplib::Server>>();
  }
  httplib::Server& http = *exposer->http_;
  const size_t max_workers = static_cast<size_t>(std::max(1, options.max_workers));
  http.new_task_queue = [max_workers] { return new WorkerPerConnection(max_workers); };
  // SO_REUSEADDR only: httplib's default adds SO_REUSEPORT, which would let a second server
  // bind the same port and take half the scrapes.
  http.set_socket_options([](socket_t sock) {
    const int one = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  });
  const double io = absl::ToDoubleSeconds(options.io_timeout);
  http.set_keep_alive_max_count(1);  // one response per connection
  http.set_keep_alive_timeout(static_cast<time_t>(std::max(1.0, std::ceil(io))));
  http.set_read_timeout(std::chrono::microseconds(absl::ToInt64Microseconds(options.io_timeout)));
  http.set_write_timeout(std::chrono::microseconds(absl::ToInt64Microseconds(options.io_timeout)));
  http.set_payload_max_length(options.max_request_bytes);

  const size_t max_request = options.max_request_bytes;
  Exposer* self = exposer.get();
  // Before routing, so neither an oversized head nor another method's body is read further.
  http.set_pre_routing_handler(
      [self, max_request](const httplib::Request& req, httplib::Response& res) {
        size_t bytes = req.method.size() + req.target.size() + req.version.size() + 4;
        for (const auto& [key, value] : req.headers) bytes += key.size() + value.size() + 4;
        if (bytes > max_request) {
          res.status = 431;
          res.set_content(absl::StrCat("request head exceeds ", max_request, " bytes\n"),
                          "text/plain; charset=utf-8");
        } else if ((req.path == "/metrics" || self->FindPath(req.path)) && req.method != "GET" &&
                   req.method != "HEAD") {
          res.status = 405;
          res.set_header("Allow", "GET, HEAD");
          res.set_content("only GET and HEAD are allowed\n", "text/plain; charset=utf-8");
        } else {
          return httplib::Server::HandlerResponse::Unhandled;
        }
        return httplib::Server::HandlerResponse::Handled;
      });
  // GET handlers also answer HEAD (httplib sends the headers without the body).
  http.Get("/metrics", [self](const httplib::Request&, httplib::Response& res) {
    res.set_content(self->Render(), std::string(kTextContentType));
    self->scrapes_.fetch_add(1);
  });
  // Paths added later with AddPath (httplib's routes must not change while it serves).
  http.Get(".*", [self](const httplib::Request& req, httplib::Response& res) {
    PathHandler handler = self->FindPath(req.path);
    if (!handler) {
      res.status = 404;
      return;
    }
    auto [code, body] = handler();
    res.status = code;
    res.set_content(body, "text/plain; charset=utf-8");
  });
  http.set_error_handler([](const httplib::Request&, httplib::Response& res) {
    if (res.status == 404) {
      res.set_content("not found; Prometheus metrics are served at /metrics\n",
                      "text/plain; charset=utf-8");
    }
  });

  if (port == 0) {
    port = http.bind_to_any_port(host);
    if (port <= 0) port = -1;
  } else if (!http.bind_to_port(host, port)) {
    port = -1;
  }
  if (port < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on metrics address ", address,
                     " (the port is in use or the host is not an address of this machine)"));
  }
  if (options.tls_setup) {
    static_cast<Listening<httplib::SSLServer>&>(http).WidenBacklog();
  } else {
    static_cast<Listening<httplib::Server>&>(http).WidenBacklog();
  }
  exposer->port_ = port;
  exposer->thread_ = std::thread([self] { self->http_->listen_after_bind(); });
  // stop() is a no-op until the loop runs: wait for it so the destructor can always stop it.
  for (int i = 0; i < 5000 && !http.is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  spdlog::info("serving Prometheus metrics on port {} at /metrics{}", port,
               options.tls_setup ? " (HTTPS)" : "");
  return exposer;
}

Exposer::~Exposer() {
  if (http_) http_->stop();
  if (thread_.joinable()) thread_.join();
}

void Exposer::RegisterCollectable(const std::weak_ptr<Collectable>& collectable) {
  std::lock_guard<std::mutex> lock(mu_);
  collectables_.push_back(collectable);
}

void Exposer::AddPath(const std::string& path, PathHandler handler) {
  std::lock_guard<std::mutex> lock(mu_);
  paths_[path] = std::move(handler);
}

Exposer::PathHandler Exposer::FindPath(const std::string& path) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = paths_.find(path);
  return it == paths_.end() ? PathHandler() : it->second;
}

std::string Exposer::Render() {
  std::vector<std::shared_ptr<Collectable>> live;
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::erase_if(collectables_, [](const auto& c) { return c.expired(); });
    for (const auto& c : collectables_) {
      if (auto p = c.lock()) live.push_back(std::move(p));
    }
  }
  std::vector<MetricFamily> families;
  for (const auto& c : live) {
    std::vector<MetricFamily> part = c->Collect();
    families.insert(families.end(), std::make_move_iterator(part.begin()),
                    std::make_move_iterator(part.end()));
  }
  return SerializeText(families);
}

}  // namespace squeeze::metrics
