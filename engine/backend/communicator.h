// Collectives between the ranks of a tensor-parallel model (each rank one backend holding one
// shard of the weights; engine/model/tensor_parallel.h). The interface is NCCL's all-reduce
// shaped: every rank calls the same collectives in the same order with the same sizes, and a
// collective returns once the result is in the caller's buffer (or, on a device backend, queued on
// its stream). InProcessGroup connects ranks that are threads of one process on host-memory
// backends: the CPU reference of the sharded arithmetic, and its tests.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "engine/backend/backend.h"

namespace squeeze {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // data[0, count) := the sum over all ranks of their data[0, count), in place; `data` is in
  // `backend`'s memory. Every rank gets bit-identical sums (the ranks' partials are added in rank
  // order), so replicated state (the residual stream, the logits) stays identical across ranks.
  virtual absl::Status AllReduceSum(Backend& backend, float* data, size_t count) = 0;
  // Ends the group for every rank (ncclCommAbort): collectives waiting now and every later one
  // return `why`. A rank that fails between collectives calls it, so the others never hang.
  virtual void Abort(const absl::Status& why) = 0;
};

// N ranks in one process, one thread each; host-memory backends only. A collective blocks until
// every rank has called it or the group is aborted.
class InProcessGroup {
 public:
  explicit InProcessGroup(int size);
  InProcessGroup(const InProcessGroup&) = delete;
  InProcessGroup& operator=(const InProcessGroup&) = delete;

  int size() const { return size_; }
  // Rank `rank`'s communicator (0 <= rank < size()); the group must outlive it.
  std::unique_ptr<Communicator> Member(int rank);

 private:
  class MemberImpl;
  absl::Status AllReduceSum(int rank, Backend& backend, float* data, size_t count);
  void Abort(const absl::Status& why);

  const int size_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<float*> data_;    // this round's buffers, by rank
  std::vector<size_t> counts_;  // and their sizes
  int arrived_ = 0;             // ranks in the current round
  int leaving_ = 0;             // ranks still to copy the previous round's result
  uint64_t round_ = 0;
  absl::Status round_status_;
  absl::Status aborted_;  // not OK once aborted
  std::vector<float> sum_;
};

}  // namespace squeeze
