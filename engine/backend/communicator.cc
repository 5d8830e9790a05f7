#include "engine/backend/communicator.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"

namespace squeeze {

class InProcessGroup::MemberImpl : public Communicator {
 public:
  MemberImpl(InProcessGroup* group, int rank) : group_(group), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return group_->size(); }
  absl::Status AllReduceSum(Backend& backend, float* data, size_t count) override {
    return group_->AllReduceSum(rank_, backend, data, count);
  }
  void Abort(const absl::Status& why) override { group_->Abort(why); }

 private:
  InProcessGroup* group_;
  int rank_;
};

InProcessGroup::InProcessGroup(int size)
    : size_(std::max(size, 1)), data_(size_, nullptr), counts_(size_, 0) {}

std::unique_ptr<Communicator> InProcessGroup::Member(int rank) {
  if (rank < 0 || rank >= size_) return nullptr;
  return std::make_unique<MemberImpl>(this, rank);
}

absl::Status InProcessGroup::AllReduceSum(int rank, Backend& backend, float* data, size_t count) {
  if (!backend.host_memory()) {
    return absl::FailedPreconditionError(
        "InProcessGroup reduces host memory only; device backends need a device communicator");
  }
  RETURN_IF_ERROR(backend.Synchronize());  // the partial sums are written
  std::unique_lock<std::mutex> lock(mu_);
  // A rank that is fast to come back waits until every rank has copied the previous result.
  cv_.wait(lock, [&] { return leaving_ == 0 || !aborted_.ok(); });
  if (!aborted_.ok()) return aborted_;
  data_[rank] = data;
  counts_[rank] = count;
  const uint64_t round = round_;
  if (++arrived_ == size_) {
    round_status_ = absl::OkStatus();
    if (std::any_of(counts_.begin(), counts_.end(), [&](size_t c) { return c != counts_[0]; })) {
      round_status_ = absl::InvalidArgumentError(absl::StrCat(
          "AllReduceSum: the ranks passed different sizes (rank 0: ", counts_[0], ")"));
    } else {
      sum_.assign(count, 0.0f);
      for (int r = 0; r < size_; ++r) {  // rank order: the same sums for every rank
        for (size_t i = 0; i < count; ++i) sum_[i] += data_[r][i];
      }
    }
    arrived_ = 0;
    leaving_ = size_;
    ++round_;
    cv_.notify_all();
  } else {
    cv_.wait(lock, [&] { return round_ != round || !aborted_.ok(); });
    if (round_ == round) {  // aborted before every rank arrived: this round never completes
      --arrived_;
      return aborted_;
    }
  }
  const absl::Status status = round_status_;
  if (status.ok()) std::copy(sum_.begin(), sum_.end(), data);
  if (--leaving_ == 0) cv_.notify_all();
  return status;
}

void InProcessGroup::Abort(const absl::Status& why) {
  std::lock_guard<std::mutex> lock(mu_);
  if (aborted_.ok()) {
    aborted_ = why.ok() ? absl::CancelledError("the communicator group was aborted") : why;
  }
  cv_.notify_all();
}

}  // namespace squeeze
