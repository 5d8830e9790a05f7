#include "engine/squeeze/squeeze_index.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <numeric>
#include <optional>
#include <random>
#include <thread>

#include "absl/strings/str_format.h"
#include "engine/backend/kmeans.h"
#include "engine/common/bfloat16.h"
#include "engine/common/parallel_for.h"
#include "engine/common/status_macros.h"
#include "engine/squeeze/calibration.h"

namespace squeeze {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Independent, platform-stable PRNG stream per (seed, layer, kv head, level); level 0 = fine
// k-means over keys, 1 = coarse k-means over fine centroids.
std::mt19937_64 StreamFor(uint64_t seed, int layer, int kv_head, int level) {
  uint64_t s = SplitMix64(seed);
  s = SplitMix64(s ^ static_cast<uint64_t>(layer));
  s = SplitMix64(s ^ static_cast<uint64_t>(kv_head));
  s = SplitMix64(s ^ static_cast<uint64_t>(level));
  return std::mt19937_64(s);
}

// The clusters of one (layer, KV head) plus the row permutation that puts the slice's clustered
// rows into cluster order: new clustered row r comes from token sinks + perm[r].
struct HeadPlan {
  SqueezeHeadIndex index;
  std::vector<int32_t> perm;  // [M]
};

// The M clustered keys of one (layer, KV head) as fp32: from the host copy when there is one,
// else from the sequence's storage (a device's rows copied to the host, bf16 widened exactly).
const float* KeysF32(const ContextKeys& keys, int layer, int kv_head, int sinks, int M,
                     std::vector<float>* scratch) {
  if (keys.host != nullptr) return keys.host->KeysF32(layer, kv_head, sinks, M, scratch);
  const SequenceKV& seq = *keys.device;
  const int d = keys.shape.head_dim;
  const size_t n = static_cast<size_t>(M) * d;
  const void* src = seq.key_data(layer, kv_head, sinks);
  std::vector<char> raw(n * DTypeBytes(seq.dtype()));
  Backend* be = seq.backend();
  if (be == nullptr || be->host_memory()) {
    std::memcpy(raw.data(), src, raw.size());
  } else {
    be->CopyToHostUnordered(raw.data(), src, raw.size());
  }
  scratch->resize(n);
  if (seq.dtype() == DType::kF32) {
    std::memcpy(scratch->data(), raw.data(), n * sizeof(float));
  } else {
    const auto* b = reinterpret_cast<const uint16_t*>(raw.data());
    for (size_t i = 0; i < n; ++i) (*scratch)[i] = BFloat16ToFloat32(b[i]);
  }
  return scratch->data();
}

// Fine k-means of the M clustered keys of every KV head of one layer ([M][d] each, token
// order), each head on its own PRNG stream: one batched call when a solver is given (the GPU
// clusters all heads of the layer at once, the device keys in place when it can), the CPU
// reference head by head otherwise.
std::vector<KMeansResult> ClusterLayer(const ContextKeys& keys, int layer, int M,
                                       const SqueezeOptions& options, KMeansSolver* solver) {
  const int Hkv = keys.shape.num_kv_heads, d = keys.shape.head_dim;
  std::vector<KMeansResult> fine(Hkv);
  if (M == 0) return fine;
  const int k = NumClustersFor(options.centroid_fraction, M);
  const KMeansLimits limits(options.max_iterations, options.kmeans_min_changed);
  std::vector<std::mt19937_64> rngs;
  std::vector<std::mt19937_64*> rng_of(Hkv);
  rngs.reserve(Hkv);
  for (int h = 0; h < Hkv; ++h) {
    rngs.push_back(StreamFor(options.seed, layer, options.kv_head_offset + h, 0));
    rng_of[h] = &rngs.back();
  }
  if (solver != nullptr) {
    // The same keys in the solver's device memory (the prefill's KV, token order): clustered
    // in place when the solver can.
    const SequenceKV* device_keys = keys.device;
    const Backend* be = device_keys != nullptr ? device_keys->backend() : nullptr;
    if (be != nullptr && !be->host_memory() && Hkv > 0) {
      KMeansSolver::DevicePoints points;
      points.data = device_keys->key_data(layer, 0, options.sinks);
      points.bf16 = device_keys->dtype() == DType::kBF16;
      const size_t bytes = DTypeBytes(device_keys->dtype());
      points.problem_stride = Hkv > 1
                                  ? (static_cast<const char*>(device_keys->key_data(layer, 1, 0)) -
                                     static_cast<const char*>(device_keys->key_data(layer, 0, 0))) /
                                        static_cast<int64_t>(bytes)
                                  : int64_t{M} * d;
      points.row_stride = d;
      auto in_place = solver->RunBatchInPlace(points, Hkv, M, d, k, limits, rng_of);
      if (in_place) return *std::move(in_place);
    }
    // The keys as fp32 on the host (bf16 storage widened exactly: the same values the device
    // holds).
    std::vector<std::vector<float>> scratch(Hkv);
    std::vector<const float*> points(Hkv);
    for (int h = 0; h < Hkv; ++h) {
      points[h] = KeysF32(keys, layer, h, options.sinks, M, &scratch[h]);
    }
    fine = solver->RunBatch(points, M, d, k, limits, rng_of);
  } else {
    std::vector<float> scratch;
    for (int h = 0; h < Hkv; ++h) {
      fine[h] = SphericalKMeans(KeysF32(keys, layer, h, options.sinks, M, &scratch), M, d, k,
                                limits, rngs[h]);
    }
  }
  return fine;
}

// Coarse k-means of every KV head's fine centroids of one layer (hierarchical indexes), each head
// on its own PRNG stream. The raw-mean fine centroids are clustered (normalised inside); the
// coarse centroid is the raw mean of its member fine centroids, i.e. their unweighted mean
// (PAPER_NOTES §3.5). With a solver (the GPU's), heads with the same number of fine clusters
// (usually all of them) go in one batched call: at 128K tokens a head has ~6.5K fine and ~1.3K
// coarse clusters, small problems whose launches and per-step synchronisation cost more than
// their FLOPs when run head by head.
std::vector<KMeansResult> CoarseLayer(std::span<const KMeansResult> fine, int M, int d, int layer,
                                      const SqueezeOptions& options, KMeansSolver* solver) {
  const int Hkv = static_cast<int>(fine.size());
  std::vector<KMeansResult> coarse(Hkv);
  const KMeansLimits limits(options.max_iterations, options.kmeans_min_changed);
  std::vector<std::mt19937_64> rngs;
  rngs.reserve(Hkv);
  for (int h = 0; h < Hkv; ++h) {
    rngs.push_back(StreamFor(options.seed, layer, options.kv_head_offset + h, 1));
  }
  auto clusters_of = [&](int h) {
    const int C = fine[h].num_clusters;
    return std::min(NumClustersFor(options.coarse_fraction, M), C);
  };
  if (solver == nullptr) {
    for (int h = 0; h < Hkv; ++h) {
      coarse[h] = SphericalKMeans(fine[h].centroids.data(), fine[h].num_clusters, d, clusters_of(h),
                                  limits, rngs[h]);
    }
    return coarse;
  }
  std::vector<bool> done(Hkv, false);
  for (int first = 0; first < Hkv; ++first) {
    if (done[first]) continue;
    const int C = fine[first].num_clusters;
    std::vector<int> group;
    std::vector<const float*> points;
    std::vector<std::mt19937_64*> rng_of;
    for (int h = first; h < Hkv; ++h) {
      if (done[h] || fine[h].num_clusters != C) continue;
      done[h] = true;
      group.push_back(h);
      points.push_back(fine[h].centroids.data());
      rng_of.push_back(&rngs[h]);
    }
    std::vector<KMeansResult> results =
        solver->RunBatch(points, C, d, clusters_of(first), limits, rng_of);
    for (size_t i = 0; i < group.size(); ++i) coarse[group[i]] = std::move(results[i]);
  }
  return coarse;
}

// Plans the storage order of one slice from the fine clustering of its M keys and, for a
// hierarchical index, the coarse clustering of its fine centroids.
HeadPlan PlanHead(const KMeansResult& fine, const KMeansResult* coarse, int M, int d, int sinks,
                  const SqueezeOptions& options) {
  HeadPlan plan;
  SqueezeHeadIndex& head = plan.index;
  head.offsets.push_back(sinks);
  if (options.hierarchical) head.coarse_offsets.push_back(0);
  if (M == 0) return plan;
  const int C = fine.num_clusters;

  // order[i] = k-means index of the i-th stored fine cluster. Flat: k-means order. Hierarchical:
  // grouped by coarse cluster (stable within a group), so each coarse cluster is a contiguous
  // range of fine clusters and therefore of rows.
  std::vector<int32_t> order(C);
  std::iota(order.begin(), order.end(), 0);
  if (options.hierarchical) {
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return coarse->labels[a] < coarse->labels[b]; });
    head.coarse_centroids = coarse->centroids;
    int fine_begin = 0;
    for (int g = 0; g < coarse->num_clusters; ++g) {
      int64_t keys_under = 0;
      for (int i = fine_begin; i < fine_begin + coarse->sizes[g]; ++i) {
        keys_under += fine.sizes[order[i]];
      }
      fine_begin += coarse->sizes[g];
      head.coarse_offsets.push_back(fine_begin);
      head.coarse_sizes.push_back(static_cast<int32_t>(keys_under));
    }
  }

  // Members of each k-means cluster in token order (counting sort by label).
  std::vector<int32_t> member_begin(C + 1, 0);
  for (int t = 0; t < M; ++t) ++member_begin[fine.labels[t] + 1];
  for (int c = 0; c < C; ++c) member_begin[c + 1] += member_begin[c];
  std::vector<int32_t> members(M), fill(member_begin.begin(), member_begin.end() - 1);
  for (int t = 0; t < M; ++t) members[fill[fine.labels[t]]++] = t;

  plan.perm.reserve(M);
  head.centroids.resize(static_cast<size_t>(C) * d);
  for (int i = 0; i < C; ++i) {
    const int c = order[i];
    plan.perm.insert(plan.perm.end(), members.begin() + member_begin[c],
                     members.begin() + member_begin[c + 1]);
    head.sizes.push_back(fine.sizes[c]);
    head.offsets.push_back(head.offsets.back() + fine.sizes[c]);
    std::memcpy(&head.centroids[static_cast<size_t>(i) * d],
                &fine.centroids[static_cast<size_t>(c) * d], sizeof(float) * d);
  }
  return plan;
}

// Moves the clustered rows [sinks, sinks + M) of one slice into the planned order (rows of
// either dtype: a permutation of whole rows).
void ApplyPlan(const std::vector<int32_t>& perm, int layer, int kv_head, int sinks, ContextKV* kv) {
  const int M = static_cast<int>(perm.size());
  if (M == 0) return;
  const size_t row_bytes = static_cast<size_t>(kv->shape.head_dim) * DTypeBytes(kv->dtype());
  const size_t base = kv->Offset(layer, kv_head, sinks);
  for (HostKvTensor* t : {&kv->k, &kv->v}) {
    char* rows = static_cast<char*>(t->at(base));
    const std::vector<char> old(rows, rows + static_cast<size_t>(M) * row_bytes);
    for (int r = 0; r < M; ++r) {
      std::memcpy(rows + static_cast<size_t>(r) * row_bytes,
                  old.data() + static_cast<size_t>(perm[r]) * row_bytes, row_bytes);
    }
  }
  const size_t tok_base =
      (static_cast<size_t>(layer) * kv->shape.num_kv_heads + kv_head) * kv->num_tokens + sinks;
  std::vector<int32_t> tok_old(kv->token_of.begin() + tok_base,
                               kv->token_of.begin() + tok_base + M);
  for (int r = 0; r < M; ++r) kv->token_of[tok_base + r] = tok_old[perm[r]];
}

absl::Status CheckFinite(const float* x, size_t n, const char* what, int layer, int head) {
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i])) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: non-finite value %g at layer %d, head %d (element %d)", what, x[i], layer, head, i));
    }
  }
  return absl::OkStatus();
}

// Validates the context tensors; they must be consistent and in token order.
absl::Status CheckContext(const ContextKV& kv) {
  const KvShape& s = kv.shape;
  if (s.num_layers <= 0 || s.num_kv_heads <= 0 || s.head_dim <= 0 || kv.num_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("context KV: bad shape (layers %d, kv heads %d, head dim %d, tokens %d)",
                        s.num_layers, s.num_kv_heads, s.head_dim, kv.num_tokens));
  }
  const size_t rows = static_cast<size_t>(s.num_layers) * s.num_kv_heads * kv.num_tokens;
  if (kv.k.size() != rows * s.head_dim || kv.v.size() != rows * s.head_dim ||
      kv.token_of.size() != rows || kv.k.dtype() != kv.v.dtype()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "context KV: tensor sizes (k %d %s, v %d %s, token_of %d) do not match the shape (%d "
        "rows x %d, one dtype)",
        kv.k.size(), DTypeName(kv.k.dtype()), kv.v.size(), DTypeName(kv.v.dtype()),
        kv.token_of.size(), rows, s.head_dim));
  }
  for (size_t r = 0; r < rows; ++r) {
    if (kv.token_of[r] != static_cast<int32_t>(r % kv.num_tokens)) {
      return absl::FailedPreconditionError(
          "context KV: rows are not in token order (already clustered?); build the index from "
          "the KV as ContextKV::FromSequence makes it");
    }
  }
  return absl::OkStatus();
}

// Scans every (layer, head)'s clustered keys [sinks, sinks + M) side by side (a 128K context of
// an 8B model holds 8.6 GB of keys); the first bad head in (layer, head) order is the one
// reported.
absl::Status CheckKeysFinite(const ContextKV& kv, int sinks, int M) {
  const int L = kv.shape.num_layers, Hkv = kv.shape.num_kv_heads;
  const size_t n = static_cast<size_t>(M) * kv.shape.head_dim;
  std::vector<size_t> bad(static_cast<size_t>(L) * Hkv, n);
  ParallelFor(bad.size(), [&](size_t slot) {
    const int l = static_cast<int>(slot / Hkv), h = static_cast<int>(slot % Hkv);
    bad[slot] = kv.k.FindNonFinite(kv.Offset(l, h, sinks), n);
  });
  for (size_t slot = 0; slot < bad.size(); ++slot) {
    if (bad[slot] == n) continue;
    const int l = static_cast<int>(slot / Hkv), h = static_cast<int>(slot % Hkv);
    float value;
    kv.k.ReadFloats(kv.Offset(l, h, sinks) + bad[slot], 1, &value);
    return absl::InvalidArgumentError(
        absl::StrFormat("context keys: non-finite value %g at layer %d, head %d (element %d)",
                        value, l, h, bad[slot]));
  }
  return absl::OkStatus();
}

bool SameShape(const KvShape& a, const KvShape& b) {
  return a.num_layers == b.num_layers && a.num_kv_heads == b.num_kv_heads &&
         a.head_dim == b.head_dim;
}

}  // namespace

absl::Status ValidateSqueezeOptions(const SqueezeOptions& o) {
  if (!(o.centroid_fraction > 0.0 && o.centroid_fraction <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "squeeze option centroid_fraction must be in (0, 1], got %g", o.centroid_fraction));
  }
  if (!(o.coarse_fraction > 0.0 && o.coarse_fraction <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "squeeze option coarse_fraction must be in (0, 1], got %g", o.coarse_fraction));
  }
  if (o.window < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("squeeze option window must be >= 0, got %d", o.window));
  }
  if (o.kv_head_offset < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("squeeze option kv_head_offset must be >= 0, got %d", o.kv_head_offset));
  }
  if (o.sinks < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("squeeze option sinks must be >= 0, got %d", o.sinks));
  }
  if (o.max_iterations < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("squeeze option max_iterations must be >= 1, got %d", o.max_iterations));
  }
  if (!(o.kmeans_min_changed >= 0.0 && o.kmeans_min_changed < 1.0)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "squeeze option kmeans_min_changed must be in [0, 1), got %g", o.kmeans_min_changed));
  }
  return absl::OkStatus();
}

int NumClustersFor(double fraction, int num_keys) {
  if (num_keys <= 0) return 0;
  const double c = std::ceil(fraction * num_keys - 1e-9);
  return static_cast<int>(std::clamp(c, 1.0, static_cast<double>(num_keys)));
}

int64_t SqueezeIndex::num_centroids() const {
  int64_t total = 0;
  for (const SqueezeHeadIndex& h : heads) total += h.num_clusters();
  return total;
}

int64_t SqueezeIndex::num_coarse_centroids() const {
  int64_t total = 0;
  for (const SqueezeHeadIndex& h : heads) total += h.num_coarse();
  return total;
}

namespace {

// Called once a layer is clustered, with the plan so far: that layer's permutations are
// plan.perms[l * Hkv + h] (the callee may take them).
using LayerPlanned = std::function<void(int layer, SqueezePlan& plan)>;

absl::StatusOr<SqueezePlan> PlanIndex(const ContextKeys& keys, const QueryCapture& window,
                                      int num_q_heads, const SqueezeOptions& options,
                                      const SqueezeProgress& progress, BuildTimings* timings,
                                      KMeansSolver* solver, WindowScorer* scorer,
                                      const LayerPlanned& on_layer) {
  // ---- Validate everything before clustering.
  if (absl::Status s = ValidateSqueezeOptions(options); !s.ok()) return s;
  if (keys.host == nullptr && keys.device == nullptr) {
    return absl::InvalidArgumentError("context keys: neither a host copy nor a sequence given");
  }
  if (keys.host != nullptr) {
    if (absl::Status s = CheckContext(*keys.host); !s.ok()) return s;
  }
  const KvShape& shape = keys.shape;
  const int L = shape.num_layers, Hkv = shape.num_kv_heads, d = shape.head_dim;
  const int S = keys.num_tokens;
  if (L <= 0 || Hkv <= 0 || d <= 0 || S < 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "context KV: bad shape (layers %d, kv heads %d, head dim %d, tokens %d)", L, Hkv, d, S));
  }
  if (keys.host != nullptr && (!SameShape(keys.host->shape, shape) || keys.host->num_tokens != S)) {
    return absl::InvalidArgumentError("context keys: the host copy's shape or length differs");
  }
  if (keys.device != nullptr &&
      (!SameShape(keys.device->shape(), shape) || keys.device->length() < S)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("context keys: the sequence's shape differs or it holds %d of %d tokens",
                        keys.device->length(), S));
  }
  if (num_q_heads <= 0 || num_q_heads % Hkv != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "num_q_heads %d must be a positive multiple of the %d KV heads", num_q_heads, Hkv));
  }
  if (static_cast<int64_t>(options.sinks) + options.window > S) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "squeeze options sinks (%d) + window (%d) exceed the context length %d tokens",
        options.sinks, options.window, S));
  }
  const int M = S - options.sinks - options.window;
  const int W = options.window;
  if (M > 0 && W == 0) {
    return absl::InvalidArgumentError(
        "squeeze option window must be >= 1 to calibrate (its queries set the threshold)");
  }

  // Window queries: locate positions S-W .. S-1 in the capture.
  std::vector<const float*> window_q(L, nullptr);
  SqueezePlan plan;
  if (M > 0) {
    const size_t row_floats = static_cast<size_t>(num_q_heads) * d;
    const auto first = std::find(window.positions.begin(), window.positions.end(), S - W);
    const size_t i0 = first - window.positions.begin();
    bool consecutive = first != window.positions.end() && i0 + W <= window.positions.size();
    for (int i = 0; consecutive && i < W; ++i) {
      consecutive = window.positions[i0 + i] == S - W + i;
    }
    if (!consecutive) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "window queries: the capture must hold positions %d..%d consecutively (the last %d "
          "context tokens)",
          S - W, S - 1, W));
    }
    if (static_cast<int>(window.q.size()) != L) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "window queries: captured %d layers, the context has %d", window.q.size(), L));
    }
    for (int l = 0; l < L; ++l) {
      if (window.q[l].size() != window.positions.size() * row_floats) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "window queries: layer %d holds %d floats, expected %d positions x %d heads x %d", l,
            window.q[l].size(), window.positions.size(), num_q_heads, d));
      }
      window_q[l] = window.q[l].data() + i0 * row_floats;
      if (absl::Status s = CheckFinite(window_q[l], W * row_floats, "window queries", l, -1);
          !s.ok()) {
        return s;
      }
    }
    if (keys.host != nullptr) {
      if (absl::Status s = CheckKeysFinite(*keys.host, options.sinks, M); !s.ok()) return s;
    }
  }
  plan.keys_checked = keys.host != nullptr;

  SqueezeIndex& index = plan.index;
  index.num_layers = L;
  index.num_kv_heads = Hkv;
  index.num_q_heads = num_q_heads;
  index.head_dim = d;
  index.num_tokens = S;
  index.sinks = options.sinks;
  index.window = W;
  index.num_clustered = M;
  index.options = options;
  index.heads.reserve(static_cast<size_t>(L) * Hkv);

  BuildTimings local_timings;
  if (timings == nullptr) timings = &local_timings;

  // ---- Cluster every slice; keep the row permutations for ApplySqueezePlan. With a device
  // scorer, each layer is calibrated on a thread of its own as soon as its clusters exist (the
  // scorer has its own stream), beside the next layers' clustering.
  Clock::time_point t0 = Clock::now();
  plan.perms.resize(static_cast<size_t>(L) * Hkv);  // sized once: a layer's are read meanwhile
  std::optional<LayerCalibrator> calibrator;
  if (scorer != nullptr && M > 0) calibrator.emplace(window_q, index, scorer);
  // The previous layer's calibration (one at a time: it takes far less than a layer's k-means).
  // A std::async future waits for its task when destroyed, so no way out leaves it running.
  std::future<absl::Status> calibrating;
  for (int l = 0; l < L; ++l) {
    const std::vector<KMeansResult> fine = ClusterLayer(keys, l, M, options, solver);
    std::vector<KMeansResult> coarse;
    if (options.hierarchical && M > 0) coarse = CoarseLayer(fine, M, d, l, options, solver);
    // The heads' storage orders are independent host work (sorts of M labels each).
    std::vector<HeadPlan> heads(Hkv);
    ParallelFor(Hkv, [&](size_t h) {
      heads[h] =
          PlanHead(fine[h], coarse.empty() ? nullptr : &coarse[h], M, d, options.sinks, options);
    });
    for (int h = 0; h < Hkv; ++h) {
      index.heads.push_back(std::move(heads[h].index));
      plan.perms[static_cast<size_t>(l) * Hkv + h] = std::move(heads[h].perm);
    }
    if (calibrator) {
      if (calibrating.valid()) RETURN_IF_ERROR(calibrating.get());
      // The heads vector was reserved whole: layer l's elements stay where they are.
      const std::span<const SqueezeHeadIndex> heads(&index.heads[static_cast<size_t>(l) * Hkv],
                                                    Hkv);
      calibrating = std::async(std::launch::async,
                               [&calibrator, l, heads] { return calibrator->Score(l, heads); });
    }
    if (on_layer) on_layer(l, plan);
    if (progress) progress("clustering", static_cast<double>(l + 1) / L);
  }
  timings->clustering_seconds = SecondsSince(t0);

  // ---- Calibrate (needs only centroids and sizes): what the device calibration has left, or
  // all of it on the host.
  t0 = Clock::now();
  if (calibrator) {
    if (calibrating.valid()) RETURN_IF_ERROR(calibrating.get());
    calibrator->Finish(&index);
    if (progress) progress("calibrating", 1.0);
  } else if (M > 0) {
    RETURN_IF_ERROR(CalibrateSqueezeIndex(window_q, &index, progress, scorer));
  }
  timings->calibration_seconds = SecondsSince(t0);
  return plan;
}

}  // namespace

absl::StatusOr<SqueezePlan> PlanSqueezeIndex(const ContextKeys& keys, const QueryCapture& window,
                                             int num_q_heads, const SqueezeOptions& options,
                                             const SqueezeProgress& progress, BuildTimings* timings,
                                             KMeansSolver* solver, WindowScorer* scorer) {
  return PlanIndex(keys, window, num_q_heads, options, progress, timings, solver, scorer, nullptr);
}

absl::StatusOr<SqueezeIndex> ApplySqueezePlan(SqueezePlan plan, ContextKV* kv,
                                              BuildTimings* timings) {
  SqueezeIndex& index = plan.index;
  if (absl::Status s = CheckContext(*kv); !s.ok()) return s;
  if (!SameShape(kv->shape, KvShape{index.num_layers, index.num_kv_heads, index.head_dim}) ||
      kv->num_tokens != index.num_tokens || plan.perms.size() != index.heads.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "context KV: %d layers x %d KV heads x %d tokens (head dim %d) is not the planned %d x "
        "%d x %d (%d)",
        kv->shape.num_layers, kv->shape.num_kv_heads, kv->num_tokens, kv->shape.head_dim,
        index.num_layers, index.num_kv_heads, index.num_tokens, index.head_dim));
  }
  if (!plan.keys_checked && index.num_clustered > 0) {
    if (absl::Status s = CheckKeysFinite(*kv, index.sinks, index.num_clustered); !s.ok()) {
      return s;
    }
  }
  // Each (layer, head) slice is permuted on its own: spread over the cores.
  const Clock::time_point t0 = Clock::now();
  const int Hkv = index.num_kv_heads;
  ParallelFor(plan.perms.size(), [&](size_t slot) {
    ApplyPlan(plan.perms[slot], static_cast<int>(slot / Hkv), static_cast<int>(slot % Hkv),
              index.sinks, kv);
  });
  kv->resident.value.reset();  // a backend copy of the old row order is stale
  if (timings != nullptr) {
    timings->reorder_seconds = SecondsSince(t0);
    timings->clustering_seconds += timings->reorder_seconds;
  }
  return std::move(index);
}

absl::StatusOr<SqueezeIndex> BuildSqueezeIndex(ContextKV* kv, const QueryCapture& window,
                                               int num_q_heads, const SqueezeOptions& options,
                                               const SqueezeProgress& progress,
                                               BuildTimings* timings, KMeansSolver* solver,
                                               const SequenceKV* device_keys) {
  const ContextKeys keys{
      .shape = kv->shape, .num_tokens = kv->num_tokens, .host = kv, .device = device_keys};
  ASSIGN_OR_RETURN(SqueezePlan plan,
                   PlanSqueezeIndex(keys, window, num_q_heads, options, progress, timings, solver));
  return ApplySqueezePlan(std::move(plan), kv, timings);
}

absl::StatusOr<IndexedContext> BuildIndexedContext(const SequenceKV& seq, int num_tokens,
                                                   const QueryCapture& window, int num_q_heads,
                                                   const SqueezeOptions& options,
                                                   const SqueezeProgress& progress,
                                                   BuildTimings* timings, KMeansSolver* solver,
                                                   WindowScorer* scorer) {
  BuildTimings local_timings;
  if (timings == nullptr) timings = &local_timings;
  IndexedContext out;
  const int M = num_tokens - options.sinks - options.window;
  const bool clustered = options.sinks >= 0 && options.window >= 0 && M > 0;
  const int Hkv = seq.shape().num_kv_heads;
  // Three things side by side: the copy to the host (the copy engines, then its keys' check),
  // the plan (the GPU k-means reads the sequence in place; calibration), and the row reorder of
  // the copy, layer by layer as soon as both the copy and that layer's plan are there.
  std::mutex mu;
  std::condition_variable cv;
  bool copied = false, planned = false;
  std::deque<int> ready;  // planned layers not yet reordered
  std::vector<std::vector<int32_t>> perms(static_cast<size_t>(seq.shape().num_layers) * Hkv);
  absl::Status keys_status;
  double copy_seconds = 0, reorder_seconds = 0;
  std::thread copier([&] {
    const Clock::time_point t0 = Clock::now();
    ContextKV kv = ContextKV::FromSequence(seq, num_tokens);
    absl::Status st = clustered ? CheckKeysFinite(kv, options.sinks, M) : absl::OkStatus();
    std::lock_guard<std::mutex> lock(mu);
    out.kv = std::move(kv);
    keys_status = std::move(st);
    copy_seconds = SecondsSince(t0);
    copied = true;
    cv.notify_all();
  });
  std::thread reorderer([&] {
    while (true) {
      int layer;
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return (copied && !ready.empty()) || (planned && ready.empty()); });
        if (ready.empty()) return;
        layer = ready.front();
        ready.pop_front();
        if (!keys_status.ok()) continue;  // the copy stays as it is; the error is returned
      }
      const Clock::time_point t0 = Clock::now();
      ParallelFor(static_cast<size_t>(Hkv), [&](size_t h) {
        ApplyPlan(perms[static_cast<size_t>(layer) * Hkv + h], layer, static_cast<int>(h),
                  options.sinks, &out.kv);
      });
      reorder_seconds += SecondsSince(t0);
    }
  });
  auto on_layer = [&](int layer, SqueezePlan& p) {
    std::lock_guard<std::mutex> lock(mu);
    for (int h = 0; h < Hkv; ++h) {
      const size_t slot = static_cast<size_t>(layer) * Hkv + h;
      perms[slot] = std::move(p.perms[slot]);
    }
    ready.push_back(layer);
    cv.notify_all();
  };
  const ContextKeys keys{.shape = seq.shape(), .num_tokens = num_tokens, .device = &seq};
  absl::StatusOr<SqueezePlan> plan =
      PlanIndex(keys, window, num_q_heads, options, progress, timings, solver, scorer, on_layer);
  const Clock::time_point planned_at = Clock::now();
  {
    std::lock_guard<std::mutex> lock(mu);
    planned = true;
    cv.notify_all();
  }
  reorderer.join();
  copier.join();
  timings->host_copy_seconds = copy_seconds;
  timings->reorder_seconds = reorder_seconds;
  // Bad options or inputs first; then non-finite keys, which cluster into non-finite centroids
  // (an Internal error of the calibration): the key is named, not the symptom.
  if (!plan.ok() && plan.status().code() != absl::StatusCode::kInternal) return plan.status();
  if (!keys_status.ok()) return keys_status;
  if (!plan.ok()) return plan.status();
  timings->reorder_wait_seconds = SecondsSince(planned_at);  // the reorder's part not hidden
  timings->clustering_seconds += timings->reorder_wait_seconds;
  out.kv.resident.value.reset();
  out.index = std::move(plan->index);
  return out;
}

}  // namespace squeeze
