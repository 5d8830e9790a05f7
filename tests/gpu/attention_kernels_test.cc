// GPU decode attention kernels (kernels/) against the CPU reference on the same inputs: the
// kernels read bf16 K/V/centroids, the reference reads the same values converted to fp32.
//   Dense decode (decode_attention.cuh) vs AttentionPartial.
//   Squeezed decode (squeezed_decode.cuh: centroid lookup + sparse + dynamic + merge) vs
//   SqueezedFixedContextAttention::Select (kept clusters), ClusterScorer (scores) and
//   AttentionPartial over the kept ranges merged with the dynamic part by
//   MergeAttentionPartials.
// Tolerances: ||out - ref|| / ||ref|| <= 1e-3 for fp32 output (both sides compute in fp32 from
// identical inputs) and <= 1e-2 for bf16 output (one bf16 rounding); |lse - ref| <= 1e-3 (1 +
// |ref|); cluster scores within 1e-4 relative; kept-cluster sets identical except ties: clusters
// whose CPU score lies within 1e-5 relative of tau, or on the other side of tau from the GPU
// score by no more than their difference (fp32 summation order). Outputs and the whole workspace
// are poisoned (0xFF bytes: NaN floats, -1 ints) before every launch; every output must be finite;
// repeated launches and a CUDA-graph replay must be bitwise identical.
// Without a CUDA device the binary prints a message and exits with 77 (ctest: skipped).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "engine/backend/attention_reference.h"
#include "engine/squeeze/cluster_scores.h"
#include "engine/squeeze/score_distribution.h"
#include "engine/squeeze/selection.h"
#include "engine/squeeze/squeeze_index.h"
#include "kernels/attention/decode_attention.cuh"
#include "kernels/squeeze/squeezed_decode.cuh"
#include "tests/gpu/attention_test_util.h"
#include "tests/gpu/gpu_test_util.h"

namespace squeeze {
namespace {

using gpu::bf16;
using namespace gpu_testing;        // NOLINT(build/namespaces): test helpers
using namespace attention_testing;  // NOLINT(build/namespaces): test helpers

// Device output [n] of fp32 or bf16, read back as floats.
std::vector<float> DownloadOut(const DeviceArray<float>& out32, const DeviceArray<bf16>& out16,
                               bool as_bf16) {
  if (!as_bf16) return out32.Download();
  const std::vector<bf16> raw = out16.Download();
  std::vector<float> out(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) out[i] = __bfloat162float(raw[i]);
  return out;
}

int ConcurrentCtas(int d, int group) {
  int ctas = 0;
  CUDA_OK(gpu::DecodeAttentionConcurrentCtas(d, group, &ctas));
  return ctas;
}

// ---------------------------------------------------------------------------------------------
// Dense decode.

struct DenseCase {
  int d, group, hkv;
  std::vector<int> lens;
  bool out_bf16;
  float q_scale;
  bool tiny_splits;  // also run with 64 keys per split (many partials for the combine)
  // Per sequence, the rows of a second key set attended as the launch's tail (a fixed context's
  // decode with the sequence's own rows); empty: no tail.
  std::vector<int> tail_lens = {};
};

void RunDense(const DenseCase& c, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "d=" << c.d << " G=" << c.group << " Hkv=" << c.hkv
                                    << " B=" << c.lens.size() << " out_bf16=" << c.out_bf16);
  Rng rng(seed);
  const int B = static_cast<int>(c.lens.size()), hq = c.hkv * c.group, d = c.d;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  std::vector<HostKv> kvs;
  std::vector<std::unique_ptr<DeviceArray<bf16>>> dev_k, dev_v;
  std::vector<gpu::DecodeKv> descs(B);
  int max_len = 0;
  for (int b = 0; b < B; ++b) {
    kvs.push_back(MakeKv(c.hkv, c.lens[b], d, rng));
    dev_k.push_back(std::make_unique<DeviceArray<bf16>>(kvs[b].k.dev));
    dev_v.push_back(std::make_unique<DeviceArray<bf16>>(kvs[b].v.dev));
    descs[b].k = dev_k[b]->get();
    descs[b].v = dev_v[b]->get();
    descs[b].head_stride = static_cast<int64_t>(kvs[b].cap) * d;
    descs[b].len = c.lens[b];
    max_len = std::max(max_len, c.lens[b]);
  }
  // The tail key sets, when the case has them.
  const bool with_tail = !c.tail_lens.empty();
  std::vector<HostKv> tails;
  std::vector<std::unique_ptr<DeviceArray<bf16>>> tail_k, tail_v;
  std::vector<gpu::DecodeKv> tail_descs(with_tail ? B : 0);
  int max_tail = 0;
  for (int b = 0; b < B && with_tail; ++b) {
    tails.push_back(MakeKv(c.hkv, c.tail_lens[b], d, rng));
    tail_k.push_back(std::make_unique<DeviceArray<bf16>>(tails[b].k.dev));
    tail_v.push_back(std::make_unique<DeviceArray<bf16>>(tails[b].v.dev));
    tail_descs[b] = {tail_k[b]->get(), tail_v[b]->get(), static_cast<int64_t>(tails[b].cap) * d,
                     c.tail_lens[b]};
    max_tail = std::max(max_tail, c.tail_lens[b]);
  }
  const std::vector<float> q = RandomQueries(B, hq, d, c.q_scale, rng);
  DeviceArray<float> dev_q(q);
  DeviceArray<gpu::DecodeKv> dev_descs(descs);
  DeviceArray<gpu::DecodeKv> dev_tail_descs(tail_descs);

  // Reference, per sequence.
  std::vector<float> ref_out(q.size()), ref_lse(static_cast<size_t>(B) * hq);
  for (int b = 0; b < B; ++b) {
    const AttentionShape shape{1, hq, c.hkv, d, scale};
    AttentionKeys keys;
    keys.kv = KvSlice{kvs[b].k.ref.data(), kvs[b].v.ref.data(), static_cast<size_t>(kvs[b].cap) * d,
                      c.lens[b]};
    AttentionPartial(shape, q.data() + static_cast<size_t>(b) * hq * d, keys,
                     ref_out.data() + static_cast<size_t>(b) * hq * d,
                     ref_lse.data() + static_cast<size_t>(b) * hq);
    if (with_tail) {  // the tail's partial, merged by the reference merge
      std::vector<float> tail_out(static_cast<size_t>(hq) * d), tail_lse(hq);
      AttentionKeys tail_keys;
      tail_keys.kv = KvSlice{tails[b].k.ref.data(), tails[b].v.ref.data(),
                             static_cast<size_t>(tails[b].cap) * d, c.tail_lens[b]};
      AttentionPartial(shape, q.data() + static_cast<size_t>(b) * hq * d, tail_keys,
                       tail_out.data(), tail_lse.data());
      MergeAttentionPartials(ref_out.data() + static_cast<size_t>(b) * hq * d,
                             ref_lse.data() + static_cast<size_t>(b) * hq, tail_out.data(),
                             tail_lse.data(), hq, d);
    }
  }

  std::vector<gpu::DecodeSplitPlan> plans = {
      gpu::PlanDecodeSplits(B, c.hkv, max_len, ConcurrentCtas(d, c.group))};
  if (c.tiny_splits) plans.push_back(gpu::DecodeSplitPlan{64, (max_len + 63) / 64});
  for (const gpu::DecodeSplitPlan& plan : plans) {
    // The tail in splits of the same size (as the backend plans it).
    const gpu::DecodeSplitPlan tail_plan{
        plan.keys_per_split, (max_tail + plan.keys_per_split - 1) / plan.keys_per_split};
    SCOPED_TRACE(::testing::Message()
                 << "keys_per_split=" << plan.keys_per_split << " splits=" << plan.max_splits
                 << " tail splits=" << (with_tail ? tail_plan.max_splits : 0));
    DeviceArray<char> ws(
        gpu::DecodeAttentionWorkspaceBytes(B, hq, d, plan, with_tail ? tail_plan.max_splits : 0));
    DeviceArray<float> out32(c.out_bf16 ? 0 : q.size());
    DeviceArray<bf16> out16(c.out_bf16 ? q.size() : 0);
    DeviceArray<float> lse(ref_lse.size());
    gpu::DecodeAttentionParams p;
    p.batch = B;
    p.num_q_heads = hq;
    p.num_kv_heads = c.hkv;
    p.head_dim = d;
    p.scale = scale;
    p.q = dev_q.get();
    p.kv = dev_descs.get();
    p.plan = plan;
    if (with_tail) {
      p.tail = dev_tail_descs.get();
      p.tail_plan = tail_plan;
    }
    std::vector<float> first_out, first_lse;
    for (int rep = 0; rep < 2; ++rep) {
      ws.Poison();
      out32.Poison();
      out16.Poison();
      lse.Poison();
      void* out = c.out_bf16 ? static_cast<void*>(out16.get()) : static_cast<void*>(out32.get());
      CUDA_OK(gpu::LaunchDecodeAttention(p, ws.get(), out, c.out_bf16, lse.get(), nullptr));
      CUDA_OK(cudaDeviceSynchronize());
      const std::vector<float> got = DownloadOut(out32, out16, c.out_bf16);
      const std::vector<float> got_lse = lse.Download();
      if (rep == 0) {
        const double tol = c.out_bf16 ? 1e-2 : 1e-3;
        for (int b = 0; b < B; ++b) {
          const Errors e =
              Compare(got, got_lse, ref_out, ref_lse, static_cast<size_t>(b) * hq, hq, d);
          EXPECT_TRUE(e.finite) << "sequence " << b << " (len " << c.lens[b] << ")";
          EXPECT_LE(e.rel, tol) << "sequence " << b << " (len " << c.lens[b] << ")";
          EXPECT_LE(e.lse_abs, 1e-3) << "sequence " << b << " (len " << c.lens[b] << ")";
        }
        first_out = got;
        first_lse = got_lse;
      } else {
        EXPECT_EQ(0, std::memcmp(first_out.data(), got.data(), got.size() * sizeof(float)))
            << "repeated launch differs";
        EXPECT_EQ(0, std::memcmp(first_lse.data(), got_lse.data(), got_lse.size() * 4))
            << "repeated launch differs (lse)";
      }
    }
    // fp32 output without lse: with one split per entry the partials are the output (no combine).
    if (!c.out_bf16) {
      ws.Poison();
      out32.Poison();
      CUDA_OK(gpu::LaunchDecodeAttention(p, ws.get(), out32.get(), false, nullptr, nullptr));
      CUDA_OK(cudaDeviceSynchronize());
      const std::vector<float> got = out32.Download();
      for (int b = 0; b < B; ++b) {
        const Errors e =
            Compare(got, ref_lse, ref_out, ref_lse, static_cast<size_t>(b) * hq, hq, d);
        EXPECT_TRUE(e.finite) << "no lse: sequence " << b;
        EXPECT_LE(e.rel, 1e-3) << "no lse: sequence " << b << " (len " << c.lens[b] << ")";
      }
    }
  }
}

TEST(DenseDecodeAttention, ShortAndTileBoundaryLengths) {
  RunDense({128, 4, 2, {1}, false, 3.0f, true}, 1);
  RunDense({128, 4, 2, {63, 64, 65, 127, 129, 1000}, false, 3.0f, true}, 2);
  RunDense({128, 2, 3, {1000, 2, 257}, true, 3.0f, true}, 3);
}

TEST(DenseDecodeAttention, HeadDimsAndGroups) {
  RunDense({64, 1, 4, {5, 777, 4096, 20001}, true, 3.0f, true}, 4);
  RunDense({128, 8, 1, {33000, 129}, false, 3.0f, true}, 5);
  RunDense({64, 8, 2, {3000}, false, 3.0f, true}, 6);
  RunDense({64, 4, 2, {1500, 31}, false, 3.0f, false}, 7);
  RunDense({128, 1, 2, {2048, 70}, true, 3.0f, false}, 8);
}

// Groups that are not a template value run padded (3 -> 4, 5..7 -> 8, 9..16 -> 16): the padding
// rows must neither read another KV head's queries nor be written; and head dim 96 (12 chunks,
// 3 output dims per lane, no K swizzle; the combine leaves 16 threads idle).
TEST(DenseDecodeAttention, PaddedGroupsAndHeadDim96) {
  RunDense({96, 1, 2, {777, 64}, false, 3.0f, true}, 40);
  RunDense({96, 3, 2, {1000, 65}, true, 3.0f, true}, 41);
  RunDense({128, 3, 3, {2000, 1}, false, 3.0f, true}, 42);
  RunDense({64, 5, 2, {1500, 129}, false, 3.0f, true}, 43);
  RunDense({128, 6, 2, {700}, false, 3.0f, false}, 44);
  RunDense({96, 7, 1, {3000, 129}, false, 3.0f, true}, 45);
  RunDense({64, 12, 2, {2000, 3}, true, 3.0f, false}, 46);
  RunDense({128, 16, 1, {4096, 33}, false, 3.0f, true}, 47);
  RunDense({96, 16, 2, {513, 2}, true, 3.0f, true}, 48);
  RunDense({96, 5, 2, {5000, 17}, false, 60.0f, false}, 49);  // peaky
}

TEST(DenseDecodeAttention, PeakySoftmaxNeedsMaxSubtraction) {
  // Logits of tens: exp without the max subtracted would overflow fp32.
  RunDense({128, 4, 2, {5000, 17}, false, 60.0f, true}, 9);
}

TEST(DenseDecodeAttention, MixedBatchOf32) {
  Rng rng(10);
  std::vector<int> lens(32);
  for (int& l : lens) l = rng.Int(1, 3000);
  RunDense({128, 4, 2, lens, false, 3.0f, true}, 11);
}

// A fixed context's decode and the sequence's own rows in one launch (the tail splits after the
// plan's), merged by one combine; empty sets on either side; single-split launches that write the
// output directly.
TEST(DenseDecodeAttention, TailOfOwnRows) {
  RunDense({128, 4, 2, {1}, false, 3.0f, false, {1}}, 50);
  RunDense({128, 4, 2, {100, 3000, 0, 5}, false, 3.0f, true, {7, 1, 300, 0}}, 51);
  RunDense({64, 8, 1, {20000, 129}, true, 3.0f, true, {2000, 65}}, 52);
  RunDense({96, 3, 2, {777, 64}, false, 3.0f, true, {1, 513}}, 53);
  RunDense({128, 1, 8, {131072}, false, 3.0f, false, {40}}, 54);
}

TEST(DenseDecodeAttention, LongContext128K) {
  RunDense({128, 4, 2, {131072}, false, 3.0f, false}, 12);
  RunDense({64, 2, 1, {131071}, true, 3.0f, false}, 13);
}

// ---------------------------------------------------------------------------------------------
// Squeezed decode.

struct SqueezeCase {
  int d, group, hkv;
  bool centroids_bf16;
  bool out_bf16;
  std::vector<SeqSpec> seqs;
  bool graph = false;            // also capture the step in a CUDA graph and replay it
  bool two_pass_lookup = false;  // the two-launch lookup instead of the one-launch kernel
};

void RunSqueezed(const SqueezeCase& c, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "d=" << c.d << " G=" << c.group << " Hkv=" << c.hkv << " B="
                                    << c.seqs.size() << " centroids_bf16=" << c.centroids_bf16);
  Rng rng(seed);
  const int B = static_cast<int>(c.seqs.size()), hkv = c.hkv, G = c.group, hq = hkv * G;
  const int d = c.d;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));

  // ---- Inputs.
  std::vector<Context> ctx;
  std::vector<HostKv> dyn;
  std::vector<std::unique_ptr<DeviceArray<bf16>>> keep16;
  std::vector<std::unique_ptr<DeviceArray<float>>> keep32;
  std::vector<std::unique_ptr<DeviceArray<int32_t>>> keep_i;
  std::vector<gpu::SqueezeHeadDesc> heads(static_cast<size_t>(B) * hkv);
  std::vector<gpu::DecodeKv> dyn_descs(B);
  int max_clusters = 0, max_dyn = 0, max_rows = 0;
  int64_t total_rows = 0;
  for (int b = 0; b < B; ++b) {
    const SeqSpec& s = c.seqs[b];
    ctx.push_back(MakeContext(s, hkv, hq, d, c.centroids_bf16, rng));
    const Context& cx = ctx.back();
    keep16.push_back(std::make_unique<DeviceArray<bf16>>(cx.k.dev));
    const bf16* k = keep16.back()->get();
    keep16.push_back(std::make_unique<DeviceArray<bf16>>(cx.v.dev));
    const bf16* v = keep16.back()->get();
    for (int h = 0; h < hkv; ++h) {
      const SqueezeHeadIndex& hi = cx.index.heads[h];
      gpu::SqueezeHeadDesc& hd = heads[static_cast<size_t>(b) * hkv + h];
      hd.k = k + static_cast<size_t>(h) * s.rows * d;
      hd.v = v + static_cast<size_t>(h) * s.rows * d;
      if (c.centroids_bf16) {
        keep16.push_back(std::make_unique<DeviceArray<bf16>>(cx.centroids16[h]));
        hd.centroids = keep16.back()->get();
      } else {
        keep32.push_back(std::make_unique<DeviceArray<float>>(hi.centroids));
        hd.centroids = keep32.back()->get();
      }
      keep_i.push_back(std::make_unique<DeviceArray<int32_t>>(hi.sizes));
      hd.sizes = keep_i.back()->get();
      keep_i.push_back(std::make_unique<DeviceArray<int32_t>>(hi.offsets));
      hd.offsets = keep_i.back()->get();
      hd.num_clusters = hi.num_clusters();
      hd.num_rows = s.rows;
      hd.sinks = s.sinks;
      hd.window = s.window;
      max_clusters = std::max(max_clusters, hi.num_clusters());
    }
    total_rows += s.rows;
    max_rows = std::max(max_rows, s.rows);
    dyn.push_back(MakeKv(hkv, s.dyn_len, d, rng));
    keep16.push_back(std::make_unique<DeviceArray<bf16>>(dyn[b].k.dev));
    dyn_descs[b].k = keep16.back()->get();
    keep16.push_back(std::make_unique<DeviceArray<bf16>>(dyn[b].v.dev));
    dyn_descs[b].v = keep16.back()->get();
    dyn_descs[b].head_stride = static_cast<int64_t>(dyn[b].cap) * d;
    dyn_descs[b].len = s.dyn_len;
    max_dyn = std::max(max_dyn, s.dyn_len);
  }
  const std::vector<float> q = RandomQueries(B, hq, d, 3.0f, rng);

  // ---- CPU selection (tau per sequence from its context's calibrated distribution).
  std::vector<float> tau(B);
  std::vector<LayerSelection> cpu_sel(B);
  std::vector<std::vector<float>> cpu_scores(static_cast<size_t>(B) * hkv);
  ClusterScorer scorer;
  for (int b = 0; b < B; ++b) {
    SelectionOptions opt;
    opt.budget = c.seqs[b].budget;
    SqueezedFixedContextAttention sel(ctx[b].index, opt);
    tau[b] = sel.fine_threshold();
    const float* qb = q.data() + static_cast<size_t>(b) * hq * d;
    sel.Select(0, qb, 1, &cpu_sel[b]);
    for (int h = 0; h < hkv; ++h) {
      const SqueezeHeadIndex& hi = ctx[b].index.heads[h];
      std::vector<float>& sc = cpu_scores[static_cast<size_t>(b) * hkv + h];
      sc.resize(hi.num_clusters());
      if (hi.num_clusters() > 0) {
        scorer.Average(qb + static_cast<size_t>(h) * G * d, 1, G, static_cast<size_t>(hq) * d,
                       hi.centroids.data(), hi.sizes.data(), hi.num_clusters(), d, sc.data());
      }
    }
  }

  // ---- GPU step.
  gpu::SqueezedDecodeShape shape;
  shape.batch = B;
  shape.num_q_heads = hq;
  shape.num_kv_heads = hkv;
  shape.head_dim = d;
  shape.max_dynamic_len = max_dyn;
  shape.max_clusters = max_clusters;
  shape.max_fixed_rows = total_rows;
  shape.max_context_rows = max_rows;
  shape.with_scores = true;
  shape.one_launch_lookup = !c.two_pass_lookup;
  gpu::SqueezedDecodePlan plan;
  CUDA_OK(gpu::PlanSqueezedDecode(shape, &plan));
  DeviceArray<char> ws(plan.workspace_bytes);
  DeviceArray<float> dev_q(q), dev_tau(tau), lse(static_cast<size_t>(B) * hq);
  DeviceArray<gpu::SqueezeHeadDesc> dev_heads(heads);
  DeviceArray<gpu::DecodeKv> dev_dyn(dyn_descs);
  DeviceArray<float> out32(c.out_bf16 ? 0 : q.size());
  DeviceArray<bf16> out16(c.out_bf16 ? q.size() : 0);
  gpu::SqueezedDecodeParams p;
  p.scale = scale;
  p.q = dev_q.get();
  p.dynamic_kv = max_dyn > 0 ? dev_dyn.get() : nullptr;
  p.heads = dev_heads.get();
  p.centroids_bf16 = c.centroids_bf16;
  p.tau = dev_tau.get();
  p.out = c.out_bf16 ? static_cast<void*>(out16.get()) : static_cast<void*>(out32.get());
  p.out_bf16 = c.out_bf16;
  p.lse = lse.get();

  cudaStream_t stream;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  auto poison = [&] {
    ws.Poison();
    out32.Poison();
    out16.Poison();
    lse.Poison();
    CUDA_OK(gpu::InitSqueezedDecodeWorkspace(plan, ws.get(), stream));
  };
  // Everything but the kernels' counters, which each launch must leave at zero itself.
  const size_t counter_bytes = plan.counter_bytes;
  auto poison_keep_counters = [&] {
    std::vector<char> counters(counter_bytes);
    CUDA_OK(cudaMemcpy(counters.data(), ws.get() + plan.counters, counter_bytes,
                       cudaMemcpyDeviceToHost));
    ws.Poison();
    CUDA_OK(cudaMemcpy(ws.get() + plan.counters, counters.data(), counter_bytes,
                       cudaMemcpyHostToDevice));
    out32.Poison();
    out16.Poison();
    lse.Poison();
  };
  poison();
  CUDA_OK(gpu::LaunchSqueezedDecode(plan, p, ws.get(), stream));
  CUDA_OK(cudaStreamSynchronize(stream));
  const std::vector<float> got = DownloadOut(out32, out16, c.out_bf16);
  const std::vector<float> got_lse = lse.Download();

  // ---- Selection.
  const gpu::SqueezeSelection gs = gpu::SelectionInWorkspace(plan, ws.get());
  const size_t BH = static_cast<size_t>(B) * hkv;
  auto download = [](const auto* ptr, size_t n) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(ptr)>>;
    std::vector<T> host(n);
    CUDA_OK(cudaMemcpy(host.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  };
  const auto num_kept = download(gs.num_kept_clusters, BH);
  const auto kept = download(gs.kept_clusters, BH * gs.cluster_stride);
  const auto num_ranges = download(gs.num_ranges, BH);
  const auto row_begin = download(gs.range_row_begin, BH * gs.range_stride);
  const auto key_begin = download(gs.range_key_begin, BH * (gs.range_stride + 1));
  const auto kept_keys = download(gs.kept_keys, BH);
  const auto scores = download(gs.scores, BH * gs.cluster_stride);
  const auto chunk_begin = download(gs.chunk_begin, BH + 1);
  const auto range_of_key = download(gs.range_of_key, BH * gs.key_index_stride);
  const auto chunk_info = download(gs.chunk_info, 3);
  EXPECT_EQ(chunk_info[2], 0) << "sparse plan overflow";
  EXPECT_GE(chunk_info[0], gpu::kSparseMinChunkKeys);
  EXPECT_LE(chunk_info[0], gpu::kSparseMaxChunkKeys);
  EXPECT_EQ(chunk_begin[0], 0);
  EXPECT_EQ(chunk_begin[BH], chunk_info[1]);
  EXPECT_LE(chunk_info[1], plan.max_chunks);

  std::vector<std::vector<std::vector<KeyRange>>> gpu_ranges(B);
  int ties = 0;
  int64_t gpu_kept_total = 0, rows_total = 0;
  for (int b = 0; b < B; ++b) {
    const SeqSpec& s = c.seqs[b];
    gpu_ranges[b].resize(hkv);
    for (int h = 0; h < hkv; ++h) {
      SCOPED_TRACE(::testing::Message() << "sequence " << b << " kv head " << h);
      const size_t bh = static_cast<size_t>(b) * hkv + h;
      const SqueezeHeadIndex& hi = ctx[b].index.heads[h];
      const int C = hi.num_clusters();
      // CPU kept set from its ranges (clusters are all-in or all-out).
      std::vector<char> row_kept(s.rows, 0);
      for (const KeyRange& r : cpu_sel[b].ranges[h]) {
        for (int x = r.begin; x < r.end; ++x) row_kept[x] = 1;
      }
      std::vector<char> cpu_kept(C), gpu_kept(C, 0);
      for (int cl = 0; cl < C; ++cl) cpu_kept[cl] = row_kept[hi.offsets[cl]];
      ASSERT_GE(num_kept[bh], 0);
      ASSERT_LE(num_kept[bh], C);
      for (int i = 0; i < num_kept[bh]; ++i) {
        const int cl = kept[bh * gs.cluster_stride + i];
        ASSERT_TRUE(cl >= 0 && cl < C) << "kept cluster id " << cl;
        if (i > 0) {
          EXPECT_LT(kept[bh * gs.cluster_stride + i - 1], cl) << "not ascending";
        }
        gpu_kept[cl] = 1;
      }
      const bool scored = std::isfinite(tau[b]) && C > 0;
      for (int cl = 0; cl < C; ++cl) {
        const float cs = cpu_scores[bh][cl];
        if (scored) {
          const float gsc = scores[bh * gs.cluster_stride + cl];
          EXPECT_NEAR(gsc, cs, 1e-4 * std::abs(cs)) << "score of cluster " << cl;
          // A tie: within 1e-5 of tau, or the two scores straddle tau by rounding alone.
          if (std::abs(cs - tau[b]) <=
              std::max(1e-5 * std::abs(tau[b]), static_cast<double>(std::abs(gsc - cs)))) {
            ++ties;
            continue;
          }
        }
        EXPECT_EQ(gpu_kept[cl], cpu_kept[cl])
            << "cluster " << cl << " score " << cs << " tau " << tau[b];
      }
      if (s.budget <= 0.0) {
        EXPECT_EQ(num_kept[bh], 0);
      }
      if (s.budget >= 1.0) {
        EXPECT_EQ(num_kept[bh], C);
      }
      for (int x = 0; x < s.sinks; ++x) EXPECT_TRUE(row_kept[x]) << "CPU dropped a sink";
      // Ranges: [sinks] kept clusters [window], key prefix sums consistent.
      const int R = num_ranges[bh];
      const int expect_r = (s.sinks > 0) + num_kept[bh] + (s.window > 0);
      ASSERT_EQ(R, expect_r);
      std::vector<KeyRange>& ranges = gpu_ranges[b][h];
      int key = 0, next_cluster = 0;
      for (int r = 0; r < R; ++r) {
        const int row = row_begin[bh * gs.range_stride + r];
        const int kb = key_begin[bh * (gs.range_stride + 1) + r];
        int len = 0;
        if (r == 0 && s.sinks > 0) {
          EXPECT_EQ(row, 0);
          len = s.sinks;
        } else if (r == R - 1 && s.window > 0) {
          EXPECT_EQ(row, s.rows - s.window);
          len = s.window;
        } else {
          const int cl = kept[bh * gs.cluster_stride + next_cluster++];
          EXPECT_EQ(row, hi.offsets[cl]);
          len = hi.sizes[cl];
        }
        EXPECT_EQ(kb, key) << "range " << r;
        ranges.push_back(KeyRange{row, row + len});
        key += len;
      }
      EXPECT_EQ(key_begin[bh * (gs.range_stride + 1) + R], key);
      EXPECT_EQ(kept_keys[bh], key);
      for (int i = 0; i * gpu::kSparseKeyIndexStep < key; ++i) {
        const int r = range_of_key[bh * gs.key_index_stride + i];
        ASSERT_TRUE(r >= 0 && r < R) << "range_of_key[" << i << "] = " << r;
        EXPECT_LE(key_begin[bh * (gs.range_stride + 1) + r], i * gpu::kSparseKeyIndexStep);
        EXPECT_GT(key_begin[bh * (gs.range_stride + 1) + r + 1], i * gpu::kSparseKeyIndexStep);
      }
      // Kept-key chunks, then the dynamic rows' chunks; at least one per head.
      const int64_t chunks = chunk_begin[bh + 1] - chunk_begin[bh];
      const int64_t ck = chunk_info[0], dyn_rows = max_dyn > 0 ? s.dyn_len : 0;
      EXPECT_EQ(chunks, std::max<int64_t>(1, (key + ck - 1) / ck + (dyn_rows + ck - 1) / ck));
      gpu_kept_total += key;
      rows_total += s.rows;
    }
  }
  EXPECT_LE(ties, 4) << "more ties than rounding explains";

  // ---- Attention reference over the GPU's kept ranges, merged with the dynamic part.
  std::vector<float> ref_out(q.size()), ref_lse(static_cast<size_t>(B) * hq);
  std::vector<float> dyn_out(static_cast<size_t>(hq) * d), dyn_lse(hq);
  for (int b = 0; b < B; ++b) {
    const SeqSpec& s = c.seqs[b];
    const AttentionShape sh{1, hq, hkv, d, scale};
    const float* qb = q.data() + static_cast<size_t>(b) * hq * d;
    float* ob = ref_out.data() + static_cast<size_t>(b) * hq * d;
    float* lb = ref_lse.data() + static_cast<size_t>(b) * hq;
    AttentionKeys fixed;
    fixed.kv =
        KvSlice{ctx[b].k.ref.data(), ctx[b].v.ref.data(), static_cast<size_t>(s.rows) * d, s.rows};
    fixed.ranges = gpu_ranges[b];
    AttentionPartial(sh, qb, fixed, ob, lb);
    if (s.dyn_len > 0) {
      AttentionKeys dk;
      dk.kv = KvSlice{dyn[b].k.ref.data(), dyn[b].v.ref.data(), static_cast<size_t>(dyn[b].cap) * d,
                      s.dyn_len};
      AttentionPartial(sh, qb, dk, dyn_out.data(), dyn_lse.data());
      MergeAttentionPartials(ob, lb, dyn_out.data(), dyn_lse.data(), hq, d);
    }
    if (s.budget >= 1.0) {  // every cluster kept: must equal dense attention over all rows
      std::vector<float> dense_out(static_cast<size_t>(hq) * d), dense_lse(hq);
      AttentionKeys all;
      all.kv = fixed.kv;
      AttentionPartial(sh, qb, all, dense_out.data(), dense_lse.data());
      if (s.dyn_len > 0) {
        MergeAttentionPartials(dense_out.data(), dense_lse.data(), dyn_out.data(), dyn_lse.data(),
                               hq, d);
      }
      std::vector<float> got_b(got.begin() + static_cast<ptrdiff_t>(b) * hq * d,
                               got.begin() + static_cast<ptrdiff_t>(b + 1) * hq * d);
      std::vector<float> lse_b(got_lse.begin() + static_cast<ptrdiff_t>(b) * hq,
                               got_lse.begin() + static_cast<ptrdiff_t>(b + 1) * hq);
      const Errors e = Compare(got_b, lse_b, dense_out, dense_lse, 0, hq, d);
      EXPECT_LE(e.rel, c.out_bf16 ? 1e-2 : 1e-3) << "budget 1 differs from dense, sequence " << b;
    }
  }
  const double tol = c.out_bf16 ? 1e-2 : 1e-3;
  for (int b = 0; b < B; ++b) {
    const Errors e = Compare(got, got_lse, ref_out, ref_lse, static_cast<size_t>(b) * hq, hq, d);
    EXPECT_TRUE(e.finite) << "sequence " << b;
    EXPECT_LE(e.rel, tol) << "sequence " << b;
    EXPECT_LE(e.lse_abs, 1e-3) << "sequence " << b;
  }
  std::printf(
      "  squeezed B=%d d=%d G=%d Hkv=%d: kept %.4f of %lld fixed rows, %d chunks of %d, lookup in "
      "%s (%d clusters per CTA)\n",
      B, d, G, hkv, rows_total > 0 ? double(gpu_kept_total) / rows_total : 0.0,
      static_cast<long long>(rows_total), chunk_info[1], chunk_info[0],
      plan.lookup.one_launch ? "one launch" : "two launches", plan.lookup.clusters_per_block);
  EXPECT_EQ(plan.lookup.one_launch, !c.two_pass_lookup);

  // ---- Repeat (counters must have been reset) and graph replay: bitwise identical.
  poison_keep_counters();
  CUDA_OK(gpu::LaunchSqueezedDecode(plan, p, ws.get(), stream));
  CUDA_OK(cudaStreamSynchronize(stream));
  EXPECT_EQ(got, DownloadOut(out32, out16, c.out_bf16)) << "repeated launch differs";
  if (c.graph) {
    CUDA_OK(cudaStreamSynchronize(stream));
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    CUDA_OK(gpu::LaunchSqueezedDecode(plan, p, ws.get(), stream));
    CUDA_OK(cudaStreamEndCapture(stream, &graph));
    CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
    for (int rep = 0; rep < 2; ++rep) {
      poison_keep_counters();
      CUDA_OK(cudaGraphLaunch(exec, stream));
      CUDA_OK(cudaStreamSynchronize(stream));
      EXPECT_EQ(got, DownloadOut(out32, out16, c.out_bf16)) << "graph replay " << rep;
    }
    CUDA_OK(cudaGraphExecDestroy(exec));
    CUDA_OK(cudaGraphDestroy(graph));
  }
  CUDA_OK(cudaStreamDestroy(stream));
}

TEST(SqueezedDecode, BudgetsZeroSomeAllInOneBatch) {
  // Per-sequence tau: budget 0 (window + sinks only), 0.1, 1 (every cluster: equals dense).
  RunSqueezed({128,
               4,
               2,
               false,
               false,
               {{20000, 4, 100, Clusters::kMixed, 37, 0.0},
                {20000, 4, 100, Clusters::kMixed, 37, 0.1},
                {20000, 4, 100, Clusters::kMixed, 37, 1.0}},
               true},
              21);
}

TEST(SqueezedDecode, TinyClustersBf16CentroidsD64) {
  RunSqueezed({64,
               1,
               4,
               true,
               true,
               {{3000, 0, 32, Clusters::kTiny, 1, 0.1},
                {9000, 2, 16, Clusters::kTiny, 64, 0.2},
                {150, 0, 32, Clusters::kTiny, 200, 0.5}}},
              22);
}

TEST(SqueezedDecode, GiantClusterGroup8) {
  RunSqueezed(
      {128,
       8,
       1,
       false,
       false,
       {{30000, 0, 100, Clusters::kGiant, 5, 0.1}, {12000, 4, 100, Clusters::kGiant, 300, 0.3}}},
      23);
  RunSqueezed({64, 8, 1, true, false, {{8000, 0, 64, Clusters::kGiant, 20, 0.05}}}, 24);
}

// Padded groups (the lookup's mean over the real G, the sparse kernel's per-head merge of G * d
// outputs in passes) and head dim 96, with both lookup paths.
TEST(SqueezedDecode, PaddedGroupsAndHeadDim96) {
  const std::vector<SeqSpec> seqs = {{6000, 4, 100, Clusters::kMixed, 37, 0.1},
                                     {3000, 0, 64, Clusters::kTiny, 5, 1.0},
                                     {9000, 2, 100, Clusters::kGiant, 200, 0.3}};
  RunSqueezed({96, 1, 2, false, false, seqs}, 60);
  RunSqueezed({96, 3, 2, false, false, seqs}, 61);
  RunSqueezed({128, 3, 2, true, true, seqs, false, /*two_pass_lookup=*/true}, 62);
  RunSqueezed({64, 5, 1, true, false, seqs}, 63);
  RunSqueezed({128, 6, 2, false, false, {{8000, 0, 100, Clusters::kMixed, 20, 0.2}}}, 64);
  RunSqueezed({96, 7, 1, true, false, seqs, false, /*two_pass_lookup=*/true}, 65);
  RunSqueezed({64, 12, 1, false, true, {{5000, 4, 64, Clusters::kTiny, 9, 0.1}}}, 66);
  RunSqueezed({128, 16, 1, false, false, seqs, /*graph=*/true}, 67);
  RunSqueezed({128, 16, 2, true, false, seqs, false, /*two_pass_lookup=*/true}, 68);
  RunSqueezed({96, 16, 1, true, true, {{20000, 4, 100, Clusters::kMixed, 300, 0.05}}}, 69);
}

TEST(SqueezedDecode, MixedBatchOf32) {
  Rng rng(25);
  std::vector<SeqSpec> seqs;
  const double budgets[] = {0.05, 0.2, 1.0, 0.0};
  const Clusters kinds[] = {Clusters::kMixed, Clusters::kTiny, Clusters::kGiant};
  for (int b = 0; b < 32; ++b) {
    seqs.push_back({rng.Int(200, 6000), b % 3, 100, kinds[b % 3], rng.Int(1, 300), budgets[b % 4]});
  }
  RunSqueezed({128, 4, 2, true, false, seqs}, 26);
  RunSqueezed({128, 4, 2, true, false, seqs, false, /*two_pass_lookup=*/true}, 26);
}

TEST(SqueezedDecode, NoClustersAndNoFixedKeys) {
  RunSqueezed({64,
               2,
               2,
               false,
               false,
               {{100, 0, 100, Clusters::kMixed, 3, 0.1},  // M = 0: window only
                {50, 10, 40, Clusters::kMixed, 1, 0.5},   // M = 0: sinks + window
                {500, 0, 0, Clusters::kMixed, 7, 0.0},    // nothing kept: dynamic only
                {700, 0, 0, Clusters::kTiny, 9, 0.3},     // clusters only
                {900, 2, 8, Clusters::kMixed, 0, 0.2}}},  // no dynamic rows
              27);
}

TEST(SqueezedDecode, LongContext128KInAGraph) {
  RunSqueezed({128, 4, 2, false, false, {{131072, 4, 100, Clusters::kMixed, 100, 0.05}}, true}, 28);
}

TEST(SqueezedDecode, LongContext512K) {
  // The 512K end of the context range (the index of kMixed clusters; one KV head).
  RunSqueezed({128, 4, 1, true, false, {{524288, 4, 100, Clusters::kMixed, 300, 0.05}}}, 29);
}

}  // namespace
}  // namespace squeeze
