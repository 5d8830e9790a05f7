#include "engine/squeeze/calibration.h"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "engine/common/parallel_for.h"
#include "engine/common/serial_blas.h"
#include "engine/common/status_macros.h"
#include "engine/squeeze/cluster_scores.h"

namespace squeeze {

namespace {

// One head's window scores per fine (and coarse) cluster, or why they could not be had.
struct HeadScores {
  std::vector<float> fine, coarse;
  absl::Status status;
};

using Pairs = std::vector<std::pair<float, int64_t>>;  // (score, keys carrying it)

// Appends the heads' (score, keys) pairs of both levels, in head order; the first head that
// could not be scored is returned instead.
absl::Status AppendPairs(std::span<const HeadScores> scored,
                         std::span<const SqueezeHeadIndex> heads, Pairs* fine, Pairs* coarse) {
  for (size_t h = 0; h < scored.size(); ++h) {
    const HeadScores& hs = scored[h];
    if (!hs.status.ok()) return hs.status;
    for (size_t c = 0; c < hs.fine.size(); ++c) fine->emplace_back(hs.fine[c], heads[h].sizes[c]);
    for (size_t c = 0; c < hs.coarse.size(); ++c) {
      coarse->emplace_back(hs.coarse[c], heads[h].coarse_sizes[c]);
    }
  }
  return absl::OkStatus();
}

// Fails (Internal) on the first non-finite score of a head's level, naming it.
void CheckFinite(HeadScores& out, bool is_coarse, int l, int h) {
  const std::vector<float>& scores = is_coarse ? out.coarse : out.fine;
  for (size_t c = 0; c < scores.size(); ++c) {
    if (!std::isfinite(scores[c]) && out.status.ok()) {
      out.status = absl::InternalError(
          absl::StrFormat("calibration: non-finite %s score %g at layer %d, kv head %d, cluster %d",
                          is_coarse ? "coarse" : "fine", scores[c], l, h, c));
    }
  }
}

}  // namespace

LayerCalibrator::LayerCalibrator(std::span<const float* const> window_q, const SqueezeIndex& index,
                                 WindowScorer* scorer)
    : window_q_(window_q.begin(), window_q.end()),
      num_kv_heads_(index.num_kv_heads),
      num_q_heads_(index.num_q_heads),
      head_dim_(index.head_dim),
      window_(index.window),
      hierarchical_(index.hierarchical()),
      scorer_(scorer),
      fine_runs_(index.num_layers),
      coarse_runs_(index.num_layers) {}

absl::Status LayerCalibrator::Score(int l, std::span<const SqueezeHeadIndex> heads) {
  const int Hkv = num_kv_heads_;
  std::vector<HeadScores> scored(Hkv);
  for (int level = 0; level < 2; ++level) {
    const bool is_coarse = level == 1;
    if (is_coarse && !hierarchical_) break;
    std::vector<std::span<const float>> cents(Hkv);
    std::vector<std::span<const int32_t>> sizes(Hkv);
    std::vector<std::span<float>> outs(Hkv);
    for (int h = 0; h < Hkv; ++h) {
      const SqueezeHeadIndex& head = heads[h];
      std::vector<float>& scores = is_coarse ? scored[h].coarse : scored[h].fine;
      scores.resize(is_coarse ? head.num_coarse() : head.num_clusters());
      cents[h] = is_coarse ? std::span<const float>(head.coarse_centroids)
                           : std::span<const float>(head.centroids);
      sizes[h] = is_coarse ? std::span<const int32_t>(head.coarse_sizes)
                           : std::span<const int32_t>(head.sizes);
      outs[h] = scores;
    }
    RETURN_IF_ERROR(
        scorer_->Average(window_q_[l], window_, num_q_heads_, head_dim_, cents, sizes, outs));
    for (int h = 0; h < Hkv; ++h) CheckFinite(scored[h], is_coarse, l, h);
  }
  // The layer's (score, keys) pairs, sorted here (beside the next layers' clustering) so that
  // Finish only merges.
  Pairs& fine = fine_runs_[l];
  Pairs& coarse = coarse_runs_[l];
  fine.clear();
  coarse.clear();
  RETURN_IF_ERROR(AppendPairs(scored, heads, &fine, &coarse));
  std::sort(fine.begin(), fine.end());
  std::sort(coarse.begin(), coarse.end());
  return absl::OkStatus();
}

void LayerCalibrator::Finish(SqueezeIndex* index) {
  index->fine_scores = ScoreDistribution::FromSortedRuns(std::move(fine_runs_));
  index->coarse_scores = ScoreDistribution::FromSortedRuns(std::move(coarse_runs_));
}

absl::Status CalibrateSqueezeIndex(std::span<const float* const> window_q, SqueezeIndex* index,
                                   const SqueezeProgress& progress, WindowScorer* scorer) {
  const int L = index->num_layers, Hkv = index->num_kv_heads, Hq = index->num_q_heads;
  const int d = index->head_dim, G = index->group_size(), W = index->window;
  if (static_cast<int>(window_q.size()) != L) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "calibration: window queries for %d layers, index has %d", window_q.size(), L));
  }
  const size_t token_stride = static_cast<size_t>(Hq) * d;
  if (scorer != nullptr) {
    // A layer's heads at once on the device, level by level.
    LayerCalibrator calibrator(window_q, *index, scorer);
    for (int l = 0; l < L; ++l) {
      RETURN_IF_ERROR(calibrator.Score(l, std::span<const SqueezeHeadIndex>(index->heads)
                                              .subspan(static_cast<size_t>(l) * Hkv, Hkv)));
      if (progress) progress("calibrating", static_cast<double>(l + 1) / L);
    }
    calibrator.Finish(index);
    return absl::OkStatus();
  }
  // On the host every (layer, KV head) is scored on its own (in parallel; each head's scores are
  // computed as they would be alone), then gathered in (layer, head) order, so the result does
  // not depend on the thread count.
  std::vector<HeadScores> per_head(static_cast<size_t>(L) * Hkv);
  // Progress from the worker threads, one call at a time (the callback need not be
  // thread-safe), once per finished layer's worth of heads.
  std::mutex progress_mu;
  int heads_done = 0;
  // The heads are spread over the cores; each one's products run on its own thread.
  const ScopedSerialBlas serial_blas;
  ParallelFor(per_head.size(), [&](size_t slot) {
    const int l = static_cast<int>(slot / Hkv), h = static_cast<int>(slot % Hkv);
    thread_local ClusterScorer host_scorer;
    const SqueezeHeadIndex& head = index->head(l, h);
    const float* q = window_q[l] + static_cast<size_t>(h) * G * d;  // head h*G of token 0
    HeadScores& out = per_head[slot];
    // Fine level, then (hierarchical) coarse level: same estimator, own sizes.
    for (int level = 0; level < 2; ++level) {
      const bool is_coarse = level == 1;
      if (is_coarse && !index->hierarchical()) break;
      const int C = is_coarse ? head.num_coarse() : head.num_clusters();
      std::vector<float>& scores = is_coarse ? out.coarse : out.fine;
      scores.resize(C);
      host_scorer.Average(
          q, W, G, token_stride, is_coarse ? head.coarse_centroids.data() : head.centroids.data(),
          is_coarse ? head.coarse_sizes.data() : head.sizes.data(), C, d, scores.data());
      CheckFinite(out, is_coarse, l, h);
    }
    if (progress) {
      std::lock_guard<std::mutex> lock(progress_mu);
      if (++heads_done % Hkv == 0) {
        progress("calibrating", static_cast<double>(heads_done) / (static_cast<double>(L) * Hkv));
      }
    }
  });
  Pairs fine, coarse;
  RETURN_IF_ERROR(AppendPairs(per_head, index->heads, &fine, &coarse));
  index->fine_scores = ScoreDistribution::FromWeightedScores(std::move(fine));
  index->coarse_scores = ScoreDistribution::FromWeightedScores(std::move(coarse));
  return absl::OkStatus();
}

}  // namespace squeeze
