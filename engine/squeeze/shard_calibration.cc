#include "engine/squeeze/shard_calibration.h"

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"

namespace squeeze {
namespace {

constexpr int64_t kExactInFloat = int64_t{1} << 24;

// Sums `values` over the ranks, through backend memory.
absl::Status AllReduce(Communicator& comm, Backend& backend, std::vector<float>* values) {
  if (values->empty()) return absl::OkStatus();
  const size_t bytes = values->size() * sizeof(float);
  if (backend.host_memory()) return comm.AllReduceSum(backend, values->data(), values->size());
  ASSIGN_OR_RETURN(std::unique_ptr<Buffer> buffer, backend.Allocate(bytes));
  backend.CopyFromHost(buffer->data(), values->data(), bytes);
  RETURN_IF_ERROR(comm.AllReduceSum(backend, buffer->as<float>(), values->size()));
  backend.CopyToHost(values->data(), buffer->data(), bytes);
  return backend.Synchronize();
}

// The union over the ranks of their distributions' (score, keys) items.
absl::StatusOr<ScoreDistribution> Gather(Communicator& comm, Backend& backend,
                                         const ScoreDistribution& local) {
  const std::vector<float>& scores = local.scores();
  const std::vector<int64_t>& cumulative = local.cumulative_keys();
  if (static_cast<int64_t>(scores.size()) > kExactInFloat) {
    return absl::OutOfRangeError(
        absl::StrCat("ShareCalibration: ", scores.size(), " distinct scores, more than 2^24"));
  }
  std::vector<float> sizes(comm.size(), 0.0f);
  sizes[comm.rank()] = static_cast<float>(scores.size());
  RETURN_IF_ERROR(AllReduce(comm, backend, &sizes));
  size_t total = 0, offset = 0;
  for (int r = 0; r < comm.size(); ++r) {
    if (r == comm.rank()) offset = total;
    total += static_cast<size_t>(sizes[r]);
  }
  // [score, keys] pairs, each rank's in its own slot, zeros elsewhere: the sum is the gather.
  std::vector<float> items(2 * total, 0.0f);
  int64_t previous = 0;
  for (size_t i = 0; i < scores.size(); ++i) {
    const int64_t keys = cumulative[i] - previous;
    previous = cumulative[i];
    if (keys > kExactInFloat) {
      return absl::OutOfRangeError(
          absl::StrCat("ShareCalibration: a score carries ", keys, " keys, more than 2^24"));
    }
    items[2 * (offset + i)] = scores[i];
    items[2 * (offset + i) + 1] = static_cast<float>(keys);
  }
  RETURN_IF_ERROR(AllReduce(comm, backend, &items));
  std::vector<std::pair<float, int64_t>> merged;
  merged.reserve(total);
  for (size_t i = 0; i < total; ++i) {
    merged.emplace_back(items[2 * i], static_cast<int64_t>(items[2 * i + 1]));
  }
  return ScoreDistribution::FromWeightedScores(std::move(merged));
}

}  // namespace

absl::Status ShareCalibration(Communicator& comm, Backend& backend, SqueezeIndex* index) {
  if (comm.size() <= 1) return absl::OkStatus();
  ASSIGN_OR_RETURN(index->fine_scores, Gather(comm, backend, index->fine_scores));
  if (index->options.hierarchical) {
    ASSIGN_OR_RETURN(index->coarse_scores, Gather(comm, backend, index->coarse_scores));
  }
  return absl::OkStatus();
}

}  // namespace squeeze
