// Helpers for end-to-end tests that run the real squeeze-server binary as a child process, and
// for capturing the in-process server's log lines.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "spdlog/sinks/base_sink.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

namespace squeeze::testing {

// A child process with stdout and stderr going to one pipe, read into `output` by Wait().
class ChildProcess {
 public:
  explicit ChildProcess(const std::vector<std::string>& argv) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(fds[1], 1);
      ::dup2(fds[1], 2);
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    ::close(fds[1]);
    out_fd_ = fds[0];
    reader_ = std::thread([this] {
      char buf[4096];
      ssize_t n;
      while ((n = ::read(out_fd_, buf, sizeof(buf))) > 0) {
        std::lock_guard<std::mutex> lock(mu_);
        output_.append(buf, static_cast<size_t>(n));
      }
    });
  }
  ~ChildProcess() {
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGKILL);
      Wait();
    }
    if (reader_.joinable()) reader_.join();
    if (out_fd_ >= 0) ::close(out_fd_);
  }
  pid_t pid() const { return pid_; }
  void Signal(int signal) { ::kill(pid_, signal); }
  // The exit code (128 + signal when killed by one).
  int Wait() {
    int status = 0;
    ::waitpid(pid_, &status, 0);
    exited_ = true;
    if (reader_.joinable()) reader_.join();
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  std::string output() {
    std::lock_guard<std::mutex> lock(mu_);
    return output_;
  }

 private:
  pid_t pid_ = -1;
  int out_fd_ = -1;
  bool exited_ = false;
  std::thread reader_;
  std::mutex mu_;
  std::string output_;
};

// squeeze-server with `flags` on a free loopback port; port() waits for it to serve.
inline std::vector<std::string> ServerArgv(const std::string& port_file,
                                           const std::vector<std::string>& flags) {
  std::vector<std::string> argv = {SQUEEZE_SERVER_BINARY, "--model=" SQUEEZE_TEST_MODEL_DIR,
                                   "--device=cpu",        "--address=127.0.0.1:0",
                                   "--metrics_address=",  "--port_file=" + port_file};
  argv.insert(argv.end(), flags.begin(), flags.end());
  return argv;
}

inline int WaitForPortFile(const std::string& path, double seconds = 60) {
  const auto until = std::chrono::steady_clock::now() +
                     std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
  while (std::chrono::steady_clock::now() < until) {
    std::ifstream in(path);
    int port = 0;
    if (in >> port && port > 0) return port;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return 0;
}

// Copies every log line of the default logger while alive (install before starting servers).
class LogCapture {
 public:
  LogCapture() {
    sink_ = std::make_shared<Sink>();
    previous_ = spdlog::default_logger();
    auto logger = std::make_shared<spdlog::logger>(
        "capture",
        spdlog::sinks_init_list{std::make_shared<spdlog::sinks::stdout_color_sink_mt>(), sink_});
    logger->set_level(previous_->level());
    spdlog::set_default_logger(logger);
  }
  ~LogCapture() { spdlog::set_default_logger(previous_); }
  std::string text() { return sink_->text(); }

 private:
  class Sink : public spdlog::sinks::base_sink<std::mutex> {
   public:
    std::string text() {
      std::lock_guard<std::mutex> lock(this->mutex_);
      return text_;
    }

   protected:
    void sink_it_(const spdlog::details::log_msg& msg) override {
      text_.append(msg.payload.data(), msg.payload.size());
      text_ += "\n";
    }
    void flush_() override {}

   private:
    std::string text_;
  };
  std::shared_ptr<Sink> sink_;
  std::shared_ptr<spdlog::logger> previous_;
};

inline std::string TempDir(const std::string& name) {
  const std::string dir =
      ::testing::TempDir() + "/squeeze-" + name + "-" + std::to_string(getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace squeeze::testing
