#include "engine/backend/cuda/cascade_attention.h"

#include <algorithm>

#include "kernels/attention/cascade_attention.cuh"
#include "kernels/attention/decode_attention.cuh"
#include "kernels/ops/rows.cuh"
#include "kernels/squeeze/group_selection.cuh"

namespace squeeze {
namespace {

size_t AlignUp(size_t x) { return (x + 255) / 256 * 256; }

// Consecutive 256-byte aligned pieces of one scratch area, sized by a first pass with base null.
class Carver {
 public:
  explicit Carver(void* base) : base_(static_cast<char*>(base)) {}
  template <typename T>
  T* Take(size_t count) {
    char* p = base_ != nullptr ? base_ + at_ : nullptr;
    at_ += AlignUp(count * sizeof(T));
    return reinterpret_cast<T*>(p);
  }
  size_t bytes() const { return at_; }

 private:
  char* base_;
  size_t at_ = 0;
};

}  // namespace

bool CascadeAttention::Eligible(const AttentionParams& p) {
  if (p.shape.num_queries != 1 || p.fixed.kv.num_rows <= 0) return false;
  if (p.fixed.selector == nullptr) return true;  // dense
  // Squeezed: the group selection thresholds while it scores, so not with the per-step policy
  // (its threshold needs every score of the step first).
  return p.fixed.policy.kind == ContextAttentionPolicy::Kind::kSqueezed &&
         !p.fixed.policy.squeezed.hierarchical && !p.fixed.policy.squeezed.per_step;
}

int CascadeAttention::CascadeCtas(int head_dim) {
  int& ctas = cascade_ctas_[head_dim == 128 ? 2 : head_dim == 96 ? 1 : 0];
  if (ctas == 0) dev_.Check(gpu::CascadeConcurrentCtas(head_dim, &ctas), "cascade occupancy");
  return std::max(ctas, 1);
}

void CascadeAttention::Run(std::span<const AttentionParams* const> calls, Kernel kernel) {
  if (!dev_.ok() || calls.empty()) return;
  const int n = static_cast<int>(calls.size());
  const AttentionParams& p0 = *calls[0];
  const AttentionShape& s = p0.shape;
  const int hq = s.num_q_heads, hkv = s.num_kv_heads, d = s.head_dim, G = hq / hkv;
  const KvSlice& kv = p0.fixed.kv;
  const int S = kv.num_rows;
  const bool squeezed = Squeezed(p0);
  const size_t row_floats = static_cast<size_t>(hq) * d;

  // Queries and outputs in place when the calls' rows are consecutive (decode steps in order),
  // else gathered into one array and scattered back.
  bool contiguous = true;
  for (int b = 0; b < n; ++b) {
    contiguous = contiguous && calls[b]->q == p0.q + b * row_floats &&
                 calls[b]->out == p0.out + b * row_floats;
  }
  dyn_.resize(n);
  tau_.resize(n);
  int max_dyn = 1;
  for (int b = 0; b < n; ++b) {
    const AttentionParams& p = *calls[b];
    dyn_[b] = DynamicDecodeKv(p);
    max_dyn = std::max(max_dyn, dyn_[b].len);
    tau_[b] = squeezed ? p.fixed.policy.squeezed.threshold : 0.0f;
  }
  heads_.resize(hkv);
  int max_clusters = 0;
  if (squeezed && !contexts_.HeadDescs(p0.fixed.policy.squeezed.tables, p0.fixed.layer, kv, hkv,
                                       /*coarse=*/false, heads_.data(), &max_clusters)) {
    return;
  }

  // Descriptors, taus and (gathered) queries and outputs.
  auto carve_desc = [&](Carver& c) {
    struct {
      gpu::SqueezeHeadDesc* heads;
      gpu::DecodeKv* dyn;
      float* tau;
      float *q, *out;
      const float** q_src;
      float** q_dst;
      const float** out_src;
      float** out_dst;
      void* packed_q;
    } a;
    a.heads = c.Take<gpu::SqueezeHeadDesc>(hkv);
    a.dyn = c.Take<gpu::DecodeKv>(n);
    a.tau = c.Take<float>(n);
    const size_t rows = contiguous ? 0 : n;
    a.q = c.Take<float>(rows * row_floats);
    a.out = c.Take<float>(rows * row_floats);
    a.q_src = c.Take<const float*>(rows);
    a.q_dst = c.Take<float*>(rows);
    a.out_src = c.Take<const float*>(rows);
    a.out_dst = c.Take<float*>(rows);
    a.packed_q = squeezed ? nullptr : c.Take<char>(gpu::CascadeWorkspaceBytes(n, hq, d));
    return a;
  };
  Carver size_desc(nullptr);
  carve_desc(size_desc);
  void* desc_base = dev_.Scratch(kCascadeDesc, size_desc.bytes());
  if (desc_base == nullptr) return;
  Carver at_desc(desc_base);
  const auto desc = carve_desc(at_desc);
  dev_.CopyFromHost(desc.dyn, dyn_.data(), sizeof(gpu::DecodeKv) * n);
  if (squeezed) {
    dev_.CopyFromHost(desc.heads, heads_.data(), sizeof(gpu::SqueezeHeadDesc) * hkv);
    dev_.CopyFromHost(desc.tau, tau_.data(), sizeof(float) * n);
  }
  const float* q = p0.q;
  float* out = p0.out;
  if (!contiguous) {
    q_src_.resize(n);
    q_dst_.resize(n);
    out_src_.resize(n);
    out_dst_.resize(n);
    for (int b = 0; b < n; ++b) {
      q_src_[b] = calls[b]->q;
      q_dst_[b] = desc.q + b * row_floats;
      out_src_[b] = desc.out + b * row_floats;
      out_dst_[b] = calls[b]->out;
    }
    dev_.CopyFromHost(desc.q_src, q_src_.data(), sizeof(float*) * n);
    dev_.CopyFromHost(desc.q_dst, q_dst_.data(), sizeof(float*) * n);
    dev_.CopyFromHost(desc.out_src, out_src_.data(), sizeof(float*) * n);
    dev_.CopyFromHost(desc.out_dst, out_dst_.data(), sizeof(float*) * n);
    dev_.Check(
        gpu::LaunchCopyRows(desc.q_src, desc.q_dst, n, static_cast<int>(row_floats), dev_.stream()),
        "cascade queries");
    q = desc.q;
    out = desc.out;
  }

  // Each sequence's dynamic rows (the new token's included): the dense decode kernel's partials.
  gpu::DecodeAttentionParams dp;
  dp.batch = n;
  dp.num_q_heads = hq;
  dp.num_kv_heads = hkv;
  dp.head_dim = d;
  dp.scale = s.scale;
  dp.q = q;
  dp.kv = desc.dyn;
  dp.plan = gpu::PlanDecodeSplits(n, hkv, max_dyn, dense_.DecodeCtas(d, G));
  const size_t dyn_slots = gpu::DecodePartialSlots(n, hkv, dp.plan);
  Carver size_dyn(nullptr);
  size_dyn.Take<float>(dyn_slots * G * d);
  size_dyn.Take<float>(dyn_slots * G);
  void* dyn_base = dev_.Scratch(kCascadeDynWs, size_dyn.bytes());
  if (dyn_base == nullptr) return;
  Carver at_dyn(dyn_base);
  dp.partial_out = at_dyn.Take<float>(dyn_slots * G * d);
  dp.partial_lse = at_dyn.Take<float>(dyn_slots * G);
  dev_.Check(gpu::LaunchDecodeAttentionPartials(dp, dev_.stream()), "cascade dynamic part");

  // The context's keys: every row, or the union of the clusters the group kept.
  gpu::CascadeAttentionParams cp;
  cp.num_seqs = n;
  cp.num_q_heads = hq;
  cp.num_kv_heads = hkv;
  cp.head_dim = d;
  cp.scale = s.scale;
  cp.q = q;
  cp.q_seq_stride = static_cast<int64_t>(row_floats);
  cp.k = static_cast<const gpu::bf16*>(kv.k);
  cp.v = static_cast<const gpu::bf16*>(kv.v);
  cp.head_stride = static_cast<int64_t>(kv.head_stride);
  if (squeezed) {
    const size_t sel_ws = gpu::GroupSelectionWorkspaceBytes(n, G, hkv, max_clusters);
    auto carve_keys = [&](Carver& c) {
      struct {
        char* ws;
        int32_t *kept_rows, *num_keys, *row_index;
        unsigned long long* key_mask;
      } a;
      a.ws = c.Take<char>(sel_ws);
      a.kept_rows = c.Take<int32_t>(static_cast<size_t>(n) * hkv);
      a.num_keys = c.Take<int32_t>(hkv);
      a.row_index = c.Take<int32_t>(static_cast<size_t>(hkv) * S);
      a.key_mask = c.Take<unsigned long long>(static_cast<size_t>(hkv) * S);
      return a;
    };
    Carver size_keys(nullptr);
    carve_keys(size_keys);
    void* keys_base = dev_.Scratch(kCascadeKeys, size_keys.bytes());
    if (keys_base == nullptr) return;
    Carver at_keys(keys_base);
    const auto keys = carve_keys(at_keys);
    // The selection's arrival counters (a prefix of its workspace) start at zero; the kernels
    // leave them zero, but the area may be new.
    dev_.Check(cudaMemsetAsync(keys.ws, 0, gpu::GroupSelectionCounterBytes(hkv), dev_.stream()),
               "cascade selection counters");
    gpu::GroupSelectionParams gs;
    gs.num_seqs = n;
    gs.num_q_heads = hq;
    gs.num_kv_heads = hkv;
    gs.head_dim = d;
    gs.scale = s.scale;
    gs.q = q;
    gs.q_seq_stride = static_cast<int64_t>(row_floats);
    gs.heads = desc.heads;
    gs.max_clusters = max_clusters;
    gs.tau = desc.tau;
    gs.workspace = keys.ws;
    gs.kept_rows = keys.kept_rows;
    gs.num_keys = keys.num_keys;
    gs.row_index = keys.row_index;
    gs.key_mask = keys.key_mask;
    gs.key_stride = S;
    dev_.Check(gpu::LaunchGroupSelection(gs, dev_.stream()), "cascade selection");
    kept_dst_.resize(n);
    for (int b = 0; b < n; ++b) kept_dst_[b] = calls[b]->fixed.kept_rows;
    dev_.CopyRowsToHostAtSync(kept_dst_, keys.kept_rows, sizeof(int32_t) * hkv);
    FoldLandedKeys();
    PendingKeys& pending = pending_keys_.emplace_back();
    pending.num_keys = std::make_unique<int32_t[]>(hkv);
    pending.heads = hkv;
    pending.rows_total = static_cast<int64_t>(hkv) * S;
    pending.epoch = dev_.epoch();
    dev_.CopyToHostAtSync(pending.num_keys.get(), keys.num_keys, sizeof(int32_t) * hkv);
    cp.num_keys = keys.num_keys;
    cp.row_index = keys.row_index;
    cp.key_mask = keys.key_mask;
    cp.key_stride = S;
  } else {
    cp.uniform_keys = S;
  }

  // The shared-context partials: about two waves of chunks, walked by one wave of CTAs.
  const int ctas = CascadeCtas(d);
  cp.target_chunks = 2 * ctas;
  cp.max_chunks = gpu::CascadeMaxChunks(cp.target_chunks, hkv);
  cp.grid = std::min(ctas, cp.target_chunks);
  // Key lists and masks (squeezed) have the mma.sync kernel only.
  cp.impl = squeezed || kernel == Kernel::kAuto ? gpu::CascadeImpl::kAuto
            : kernel == Kernel::kWgmma          ? gpu::CascadeImpl::kWgmma
                                                : gpu::CascadeImpl::kMmaSync;
  cp.workspace = desc.packed_q;
  const size_t slots = static_cast<size_t>(cp.max_chunks) * n;
  Carver size_part(nullptr);
  size_part.Take<float>(slots * G * d);
  size_part.Take<float>(slots * G);
  size_part.Take<int32_t>(hkv + 1);
  void* part_base = dev_.Scratch(kCascadePartials, size_part.bytes());
  if (part_base == nullptr) return;
  Carver at_part(part_base);
  cp.partial_out = at_part.Take<float>(slots * G * d);
  cp.partial_lse = at_part.Take<float>(slots * G);
  cp.chunk_begin = at_part.Take<int32_t>(hkv + 1);
  dev_.Check(gpu::LaunchCascadeAttention(cp, dev_.stream()), "cascade attention");

  // Each sequence's chunks merged with its dynamic partials.
  gpu::CombineParams cb;
  cb.batch = n;
  cb.num_q_heads = hq;
  cb.num_kv_heads = hkv;
  cb.head_dim = d;
  cb.dense_kv = desc.dyn;
  cb.dense_plan = dp.plan;
  cb.dense_out = dp.partial_out;
  cb.dense_lse = dp.partial_lse;
  cb.shared_chunk_begin = cp.chunk_begin;
  cb.sparse_out = cp.partial_out;
  cb.sparse_lse = cp.partial_lse;
  cb.out = out;
  dev_.Check(gpu::LaunchCombineAttention(cb, dev_.stream()), "cascade merge");
  if (!contiguous) {
    dev_.Check(gpu::LaunchCopyRows(desc.out_src, desc.out_dst, n, static_cast<int>(row_floats),
                                   dev_.stream()),
               "cascade outputs");
  }
}

void CascadeAttention::FoldLandedKeys() {
  const auto landed = [&](const PendingKeys& p) { return p.epoch < dev_.epoch(); };
  for (const PendingKeys& p : pending_keys_) {
    if (!landed(p)) continue;
    for (int h = 0; h < p.heads; ++h) landed_keys_.rows_read += p.num_keys[h];
    landed_keys_.rows_total += p.rows_total;
  }
  std::erase_if(pending_keys_, landed);
}

CascadeAttention::KeyStats CascadeAttention::TakeKeyStats() {
  FoldLandedKeys();
  const KeyStats stats = landed_keys_;
  landed_keys_ = {};
  return stats;
}

}  // namespace squeeze
