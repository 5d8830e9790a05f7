#include "server/metrics_exposer.h"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "spdlog/spdlog.h"

namespace squeeze::metrics {
namespace {

// Splits "host:port", "[v6]:port" or ":port"; an empty host means every interface.
absl::Status ParseAddress(const std::string& address, std::string* host, std::string* port) {
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
  *port = address.substr(colon + 1);
  int value = 0;
  if (!absl::SimpleAtoi(*port, &value) || value < 0 || value > 65535) {
    return bad("port must be a number in 0..65535");
  }
  return absl::OkStatus();
}

absl::Status ErrnoError(const std::string& what, int err) {
  return absl::UnavailableError(absl::StrCat(what, ": ", std::strerror(err)));
}

void CloseFd(int fd) {
  if (fd >= 0) ::close(fd);
}

const char* ReasonPhrase(int code) {
  switch (code) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 431:
      return "Request Header Fields Too Large";
    case 503:
      return "Service Unavailable";
  }
  return "Error";
}

}  // namespace

absl::StatusOr<std::unique_ptr<Exposer>> Exposer::Start(const std::string& address,
                                                        ExposerOptions options) {
  std::string host, port;
  if (absl::Status st = ParseAddress(address, &host, &port); !st.ok()) return st;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &found);
      rc != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address '", address, "': ", gai_strerror(rc)));
  }
  int fd = -1;
  int err = 0;
  for (addrinfo* ai = found; ai != nullptr && fd < 0; ai = ai->ai_next) {
    fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      err = errno;
      continue;
    }
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd, 64) != 0) {
      err = errno;
      CloseFd(fd);
      fd = -1;
    }
  }
  freeaddrinfo(found);
  if (fd < 0) return ErrnoError(absl::StrCat("cannot listen on metrics address ", address), err);

  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len) != 0) {
    err = errno;
    CloseFd(fd);
    return ErrnoError("getsockname on the metrics socket", err);
  }
  const int bound_port = bound.ss_family == AF_INET6
                             ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                             : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  int wake[2];
  if (::pipe2(wake, O_CLOEXEC | O_NONBLOCK) != 0) {
    err = errno;
    CloseFd(fd);
    return ErrnoError("pipe for the metrics server", err);
  }
  std::unique_ptr<Exposer> exposer(new Exposer(fd, bound_port, wake[0], wake[1], options));
  exposer->thread_ = std::thread([e = exposer.get()] { e->AcceptLoop(); });
  spdlog::info("serving Prometheus metrics on port {} at /metrics", bound_port);
  return exposer;
}

Exposer::Exposer(int listen_fd, int port, int wake_read, int wake_write, ExposerOptions options)
    : listen_fd_(listen_fd),
      port_(port),
      wake_read_(wake_read),
      wake_write_(wake_write),
      options_(options) {}

Exposer::~Exposer() {
  // The pipe stays readable from now on, so every poll in the loop returns and it exits.
  const char byte = 1;
  while (::write(wake_write_, &byte, 1) < 0 && errno == EINTR) {
  }
  if (thread_.joinable()) thread_.join();
  CloseFd(listen_fd_);
  CloseFd(wake_read_);
  CloseFd(wake_write_);
}

void Exposer::RegisterCollectable(const std::weak_ptr<Collectable>& collectable) {
  std::lock_guard<std::mutex> lock(mu_);
  collectables_.push_back(collectable);
}

void Exposer::AddPath(const std::string& path, PathHandler handler) {
  std::lock_guard<std::mutex> lock(mu_);
  paths_[path] = std::move(handler);
}

void Exposer::AcceptLoop() {
  while (true) {
    pollfd fds[2] = {{.fd = listen_fd_, .events = POLLIN}, {.fd = wake_read_, .events = POLLIN}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      spdlog::error("metrics server stopped: poll: {}", std::strerror(errno));
      return;
    }
    if (fds[1].revents != 0) return;
    if ((fds[0].revents & POLLIN) == 0) continue;
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      // Out of descriptors and the like: back off instead of spinning on a readable socket.
      if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
        spdlog::warn("metrics server: accept: {}", std::strerror(errno));
        ::poll(fds + 1, 1, 100);
      }
      continue;
    }
    HandleConnection(fd);
    ::shutdown(fd, SHUT_WR);
    ::close(fd);
  }
}

namespace {

// Waits until `fd` has `events`; false on deadline, stop request or error.
bool WaitFor(int fd, short events, int wake_fd, absl::Time deadline) {
  while (true) {
    const int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (ms <= 0) return false;
    pollfd fds[2] = {{.fd = fd, .events = events}, {.fd = wake_fd, .events = POLLIN}};
    const int rc = ::poll(fds, 2, static_cast<int>(ms));
    if (rc < 0 && errno == EINTR) continue;
    if (rc <= 0 || fds[1].revents != 0) return false;
    return (fds[0].revents & events) != 0 || (fds[0].revents & (POLLHUP | POLLERR)) != 0;
  }
}

bool SendAll(int fd, std::string_view data, int wake_fd, absl::Time deadline) {
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n > 0) {
      data.remove_prefix(static_cast<size_t>(n));
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (!WaitFor(fd, POLLOUT, wake_fd, deadline)) return false;
    } else {
      return false;
    }
  }
  return true;
}

}  // namespace

void Exposer::HandleConnection(int fd) {
  const absl::Time deadline = absl::Now() + options_.io_timeout;
  // Read the request head (up to the blank line), never more than the limit.
  std::string head;
  char buf[2048];
  bool too_large = false;
  while (head.find("\r\n\r\n") == std::string::npos && head.find("\n\n") == std::string::npos) {
    if (head.size() >= options_.max_request_bytes) {
      too_large = true;
      break;
    }
    if (!WaitFor(fd, POLLIN, wake_read_, deadline)) return;
    const size_t want = std::min(sizeof(buf), options_.max_request_bytes - head.size());
    const ssize_t n = ::recv(fd, buf, want, 0);
    if (n == 0) return;  // the client went away
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      return;
    }
    head.append(buf, static_cast<size_t>(n));
  }

  int code = 200;
  std::string body;
  std::string_view content_type = "text/plain; charset=utf-8";
  std::string extra_headers;
  bool head_only = false;
  const std::string_view line = std::string_view(head).substr(0, head.find('\n'));
  const size_t sp1 = line.find(' ');
  const size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (too_large) {
    code = 431;
    body = absl::StrCat("request head exceeds ", options_.max_request_bytes, " bytes\n");
  } else if (sp2 == std::string_view::npos || !line.substr(sp2 + 1).starts_with("HTTP/")) {
    code = 400;
    body = "expected an HTTP/1.x request line\n";
  } else {
    const std::string_view method = line.substr(0, sp1);
    std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    target = target.substr(0, target.find('?'));
    PathHandler handler;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (auto it = paths_.find(std::string(target)); it != paths_.end()) handler = it->second;
    }
    if (handler && (method == "GET" || method == "HEAD")) {
      head_only = method == "HEAD";
      std::tie(code, body) = handler();
    } else if (target != "/metrics" && !handler) {
      code = 404;
      body = "not found; Prometheus metrics are served at /metrics\n";
    } else if (method != "GET" && method != "HEAD") {
      code = 405;
      body = "only GET and HEAD are allowed\n";
      extra_headers = "Allow: GET, HEAD\r\n";
    } else {
      head_only = method == "HEAD";
      body = Render();
      content_type = kTextContentType;
    }
  }
  const std::string response_head = absl::StrCat(
      "HTTP/1.1 ", code, " ", ReasonPhrase(code), "\r\nContent-Type: ", std::string(content_type),
      "\r\nContent-Length: ", body.size(), "\r\n", extra_headers, "Connection: close\r\n\r\n");
  if (!SendAll(fd, response_head, wake_read_, deadline)) return;
  if (!head_only && !SendAll(fd, body, wake_read_, deadline)) return;
  if (code == 200 && content_type == kTextContentType) scrapes_.fetch_add(1);
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
