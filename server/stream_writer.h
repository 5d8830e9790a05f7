// A server-streaming reactor fed from another thread (the engine): it queues messages, keeps
// exactly one write in flight, and finishes once the queue is drained. The engine holds only a
// shared_ptr to the Sink, which outlives the reactor safely (pushes after the RPC ended are
// dropped). Messages are serialized when pushed: the service's methods are raw (ByteBuffer) so
// that it parses requests itself (server/proto_buffers.h).
#pragma once

#include <grpcpp/grpcpp.h>

#include <deque>
#include <functional>
#include <memory>
#include <optional>

#include "absl/synchronization/mutex.h"
#include "server/proto_buffers.h"

namespace squeeze::server {

template <typename Response>
class StreamWriter : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  class Sink {
   public:
    // Queues a message; returns false when the stream is gone.
    bool Push(Response message) {
      grpc::ByteBuffer buffer = ToByteBuffer(message);  // serialized outside the lock
      StreamWriter* start = nullptr;
      const grpc::ByteBuffer* first = nullptr;
      {
        absl::MutexLock lock(&mu_);
        if (writer_ == nullptr || finish_) return false;
        queue_.push_back(std::move(buffer));
        if (!writing_) {
          writing_ = true;
          start = writer_;
          first = &queue_.front();
        }
      }
      if (start) start->StartWrite(first);
      return true;
    }
    // Ends the stream once every queued message is written.
    void Finish(grpc::Status status) {
      StreamWriter* finish = nullptr;
      {
        absl::MutexLock lock(&mu_);
        if (writer_ == nullptr || finish_) return;
        finish_ = std::move(status);
        if (!writing_) {
          finishing_ = true;
          finish = writer_;
        }
      }
      if (finish) finish->Finish(*finish_);
    }

   private:
    friend class StreamWriter;
    absl::Mutex mu_;
    StreamWriter* writer_ = nullptr;      // null once the RPC is done
    std::deque<grpc::ByteBuffer> queue_;  // front is in flight while writing_
    bool writing_ = false;
    bool finishing_ = false;
    std::optional<grpc::Status> finish_;
  };

  StreamWriter() : sink_(std::make_shared<Sink>()) { sink_->writer_ = this; }

  std::shared_ptr<Sink> sink() { return sink_; }
  // Runs `on_cancel` at once when the RPC was already cancelled.
  void set_on_cancel(std::function<void()> on_cancel) {
    {
      absl::MutexLock lock(&cancel_mu_);
      if (!cancelled_) {
        on_cancel_ = std::move(on_cancel);
        return;
      }
    }
    on_cancel();
  }

  void OnWriteDone(bool ok) override {
    if (!ok) RunCancel();
    bool finish = false;
    const grpc::ByteBuffer* next = nullptr;
    {
      absl::MutexLock lock(&sink_->mu_);
      sink_->queue_.pop_front();
      if (!ok) {
        // The stream is broken: no more writes; finish with the status we have or CANCELLED.
        sink_->queue_.clear();
        if (!sink_->finish_)
          sink_->finish_ = grpc::Status(grpc::StatusCode::CANCELLED, "write failed");
      }
      if (!sink_->queue_.empty()) {
        next = &sink_->queue_.front();
      } else {
        sink_->writing_ = false;
        if (sink_->finish_ && !sink_->finishing_) {
          sink_->finishing_ = true;
          finish = true;
        }
      }
    }
    if (next) this->StartWrite(next);
    if (finish) this->Finish(*sink_->finish_);
  }

  void OnCancel() override { RunCancel(); }

  void OnDone() override {
    {
      absl::MutexLock lock(&sink_->mu_);
      sink_->writer_ = nullptr;
    }
    delete this;
  }

 private:
  void RunCancel() {
    std::function<void()> f;
    {
      absl::MutexLock lock(&cancel_mu_);
      cancelled_ = true;
      f = std::move(on_cancel_);
      on_cancel_ = nullptr;
    }
    if (f) f();
  }

  std::shared_ptr<Sink> sink_;
  absl::Mutex cancel_mu_;
  std::function<void()> on_cancel_;
  bool cancelled_ = false;
};

}  // namespace squeeze::server
