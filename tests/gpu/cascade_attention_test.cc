// Cascade decode attention of n sequences sharing one fixed context (kernels/attention/
// cascade_attention.cuh) and their group selection (kernels/squeeze/group_selection.cuh), against
// the CPU reference on the same inputs:
//   GroupSelection: every sequence's kept clusters equal SqueezedFixedContextAttention::Select's
//     (except ties: clusters whose CPU score lies within 1e-4 relative of the sequence's tau); the
//     key list is the sinks, the union of the kept clusters in ascending order (each cluster's
//     rows in order, its mask = the sequences that kept it) and the window; kept_rows per
//     sequence and head equal the rows its mask bits select.
//   Cascade: per sequence, AttentionPartial over the fixed rows it sees (every row, or the clusters
//     its mask bits select) with its query rounded to bf16 as the kernel rounds it, merged by
//     MergeAttentionPartials with its dynamic part (fp32 query, the decode kernel's partials).
//     ||out - ref|| / ||ref|| <= 1e-2 (P is rounded to bf16 for P.V), |lse - ref| <= 1e-3 (1 +
//     |ref|).
// Dense groups run on each cascade kernel (CascadeImpl::kMmaSync, and on Hopper kWgmma: the wgmma
// prefill kernel split over keys) against the same reference.
// Outputs and workspaces are poisoned (0xFF) before every launch; a repeated launch and a
// CUDA-graph replay must be bitwise identical. Without a CUDA device: exit 77 (skipped).
#include "kernels/attention/cascade_attention.cuh"

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "engine/backend/attention_reference.h"
#include "engine/squeeze/cluster_scores.h"
#include "engine/squeeze/selection.h"
#include "kernels/attention/decode_attention.cuh"
#include "kernels/attention/prefill_attention.cuh"
#include "kernels/squeeze/group_selection.cuh"
#include "tests/gpu/attention_test_util.h"
#include "tests/gpu/gpu_test_util.h"

namespace squeeze {
namespace {

using gpu::bf16;
using namespace gpu_testing;        // NOLINT(build/namespaces): test helpers
using namespace attention_testing;  // NOLINT(build/namespaces): test helpers

struct CascadeCase {
  int d, group, hkv;
  int rows, sinks, window;
  Clusters clusters;
  std::vector<int> dyn_lens;    // one per sequence; 0: no dynamic rows
  std::vector<double> budgets;  // squeezed: one per sequence; empty: dense
  bool graph = false;
};

float RoundBf16(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

void RunCascadeOn(const CascadeCase& c, uint64_t seed, gpu::CascadeImpl impl);

// Squeezed groups on the mma.sync kernel (the only one with key lists); dense on each kernel.
void RunCascade(const CascadeCase& c, uint64_t seed) {
  if (!c.budgets.empty()) return RunCascadeOn(c, seed, gpu::CascadeImpl::kAuto);
  RunCascadeOn(c, seed, gpu::CascadeImpl::kMmaSync);
  if (gpu::PrefillWgmmaSupported(c.d)) RunCascadeOn(c, seed, gpu::CascadeImpl::kWgmma);
}

void RunCascadeOn(const CascadeCase& c, uint64_t seed, gpu::CascadeImpl impl) {
  const int n = static_cast<int>(c.dyn_lens.size()), hkv = c.hkv, G = c.group, hq = hkv * G;
  const int d = c.d, S = c.rows;
  const bool squeezed = !c.budgets.empty();
  const char* kernel = impl == gpu::CascadeImpl::kWgmma     ? "wgmma"
                       : impl == gpu::CascadeImpl::kMmaSync ? "mma.sync"
                                                            : "auto";
  SCOPED_TRACE(::testing::Message()
               << "d=" << d << " G=" << G << " Hkv=" << hkv << " n=" << n << " S=" << S
               << (squeezed ? " squeezed" : " dense") << " " << kernel);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  Rng rng(seed);
  const Context ctx =
      MakeContext({S, c.sinks, c.window, c.clusters, 0, 0.1}, hkv, hq, d, true, rng);
  std::vector<HostKv> dyn;
  int max_dyn = 0;
  for (int len : c.dyn_lens) {
    dyn.push_back(MakeKv(hkv, len, d, rng));
    max_dyn = std::max(max_dyn, len);
  }
  const std::vector<float> q = RandomQueries(n, hq, d, 3.0f, rng);

  // ---- Device inputs.
  DeviceArray<bf16> dk(ctx.k.dev), dv(ctx.v.dev);
  std::vector<std::unique_ptr<DeviceArray<bf16>>> keep16;
  std::vector<std::unique_ptr<DeviceArray<int32_t>>> keep_i;
  std::vector<gpu::SqueezeHeadDesc> heads(hkv);
  int max_clusters = 0;
  for (int h = 0; h < hkv; ++h) {
    const SqueezeHeadIndex& hi = ctx.index.heads[h];
    gpu::SqueezeHeadDesc& e = heads[h];
    e.k = dk.get() + static_cast<size_t>(h) * S * d;
    e.v = dv.get() + static_cast<size_t>(h) * S * d;
    keep16.push_back(std::make_unique<DeviceArray<bf16>>(ctx.centroids16[h]));
    e.centroids = keep16.back()->get();
    keep_i.push_back(std::make_unique<DeviceArray<int32_t>>(hi.sizes));
    e.sizes = keep_i.back()->get();
    keep_i.push_back(std::make_unique<DeviceArray<int32_t>>(hi.offsets));
    e.offsets = keep_i.back()->get();
    e.num_clusters = hi.num_clusters();
    e.num_rows = S;
    e.sinks = c.sinks;
    e.window = c.window;
    max_clusters = std::max(max_clusters, hi.num_clusters());
  }
  DeviceArray<gpu::SqueezeHeadDesc> dev_heads(heads);
  std::vector<gpu::DecodeKv> dyn_descs(n);
  for (int s = 0; s < n; ++s) {
    keep16.push_back(std::make_unique<DeviceArray<bf16>>(dyn[s].k.dev));
    dyn_descs[s].k = keep16.back()->get();
    keep16.push_back(std::make_unique<DeviceArray<bf16>>(dyn[s].v.dev));
    dyn_descs[s].v = keep16.back()->get();
    dyn_descs[s].head_stride = static_cast<int64_t>(dyn[s].cap) * d;
    dyn_descs[s].len = dyn[s].len;
  }
  DeviceArray<gpu::DecodeKv> dev_dyn(dyn_descs);
  DeviceArray<float> dev_q(q);

  // ---- Group selection (squeezed).
  std::vector<float> tau(n, 0.0f);
  const size_t ks = static_cast<size_t>(S);
  DeviceArray<int32_t> kept_rows(static_cast<size_t>(n) * hkv), num_keys(hkv);
  DeviceArray<int32_t> row_index(squeezed ? hkv * ks : 0);
  DeviceArray<unsigned long long> key_mask(squeezed ? hkv * ks : 0);
  const size_t sel_bytes = gpu::GroupSelectionWorkspaceBytes(n, G, hkv, max_clusters);
  DeviceArray<char> sel_ws(squeezed ? sel_bytes : 0);
  gpu::GroupSelectionParams gs;
  std::vector<std::vector<char>> gpu_kept;  // [s * hkv + h][cluster]
  DeviceArray<float> dev_tau(n);
  if (squeezed) {
    for (int s = 0; s < n; ++s) {
      SelectionOptions opt;
      opt.budget = c.budgets[s];
      tau[s] = SqueezedFixedContextAttention(ctx.index, opt).fine_threshold();
    }
    dev_tau.Upload(tau);
    gs.num_seqs = n;
    gs.num_q_heads = hq;
    gs.num_kv_heads = hkv;
    gs.head_dim = d;
    gs.scale = scale;
    gs.q = dev_q.get();
    gs.q_seq_stride = static_cast<int64_t>(hq) * d;
    gs.heads = dev_heads.get();
    gs.max_clusters = max_clusters;
    gs.tau = dev_tau.get();
    gs.workspace = sel_ws.get();
    gs.kept_rows = kept_rows.get();
    gs.num_keys = num_keys.get();
    gs.row_index = row_index.get();
    gs.key_mask = key_mask.get();
    gs.key_stride = static_cast<int64_t>(ks);
    sel_ws.Poison();
    CUDA_OK(cudaMemset(sel_ws.get(), 0, gpu::GroupSelectionCounterBytes(hkv)));
    kept_rows.Poison();
    num_keys.Poison();
    row_index.Poison();
    key_mask.Poison();
    CUDA_OK(gpu::LaunchGroupSelection(gs, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    const std::vector<int32_t> nk = num_keys.Download(), kr = kept_rows.Download();
    const std::vector<int32_t> ri = row_index.Download();
    const std::vector<unsigned long long> km = key_mask.Download();
    const unsigned long long all = n >= 64 ? ~0ull : (1ull << n) - 1;
    ClusterScorer scorer;
    int ties = 0;
    gpu_kept.assign(static_cast<size_t>(n) * hkv, {});
    for (int h = 0; h < hkv; ++h) {
      SCOPED_TRACE(::testing::Message() << "kv head " << h);
      const SqueezeHeadIndex& hi = ctx.index.heads[h];
      const int C = hi.num_clusters();
      // Walk the key list: sinks, the kept clusters ascending, the window.
      const int32_t* rows = ri.data() + h * ks;
      const unsigned long long* masks = km.data() + h * ks;
      ASSERT_GE(nk[h], c.sinks + c.window);
      ASSERT_LE(nk[h], S);
      int key = 0;
      for (int j = 0; j < c.sinks; ++j, ++key) {
        EXPECT_EQ(rows[key], j);
        EXPECT_EQ(masks[key], all);
      }
      std::vector<unsigned long long> cluster_mask(C, 0);
      int last = -1;
      while (key < nk[h] - c.window) {
        const int row = rows[key];
        const int cl =
            static_cast<int>(std::upper_bound(hi.offsets.begin(), hi.offsets.end(), row) -
                             hi.offsets.begin()) -
            1;
        ASSERT_TRUE(cl >= 0 && cl < C && row == hi.offsets[cl]) << "key " << key << " row " << row;
        ASSERT_GT(cl, last) << "clusters not ascending";
        last = cl;
        cluster_mask[cl] = masks[key];
        EXPECT_NE(masks[key], 0ull);
        for (int j = 0; j < hi.sizes[cl]; ++j, ++key) {
          ASSERT_EQ(rows[key], hi.offsets[cl] + j);
          ASSERT_EQ(masks[key], cluster_mask[cl]);
        }
      }
      ASSERT_EQ(key, nk[h] - c.window);
      for (int j = 0; j < c.window; ++j, ++key) {
        EXPECT_EQ(rows[key], S - c.window + j);
        EXPECT_EQ(masks[key], all);
      }
      for (int s = 0; s < n; ++s) {
        std::vector<char>& kept = gpu_kept[static_cast<size_t>(s) * hkv + h];
        kept.assign(C, 0);
        int expect_rows = c.sinks + c.window;
        for (int cl = 0; cl < C; ++cl) {
          kept[cl] = (cluster_mask[cl] >> s) & 1;
          if (kept[cl]) expect_rows += hi.sizes[cl];
        }
        EXPECT_EQ(kr[static_cast<size_t>(s) * hkv + h], expect_rows) << "sequence " << s;
        // Against the CPU scores of this sequence.
        std::vector<float> scores(C);
        if (C > 0) {
          scorer.Average(q.data() + (static_cast<size_t>(s) * hq + h * G) * d, 1, G,
                         static_cast<size_t>(hq) * d, hi.centroids.data(), hi.sizes.data(), C, d,
                         scores.data());
        }
        for (int cl = 0; cl < C; ++cl) {
          const bool cpu = scores[cl] > tau[s];
          if (std::isfinite(tau[s]) && std::abs(scores[cl] - tau[s]) <= 1e-4 * std::abs(tau[s])) {
            ++ties;
            continue;
          }
          EXPECT_EQ(static_cast<bool>(kept[cl]), cpu)
              << "sequence " << s << " cluster " << cl << " score " << scores[cl] << " tau "
              << tau[s];
        }
      }
    }
    EXPECT_LE(ties, 4) << "more ties than rounding explains";
  }

  // ---- Attention: dynamic partials, cascade partials, combine.
  int ctas = 0;
  CUDA_OK(gpu::CascadeConcurrentCtas(d, &ctas));
  const int target = 2 * ctas;
  const int max_chunks = gpu::CascadeMaxChunks(target, hkv);
  DeviceArray<float> part_out(static_cast<size_t>(max_chunks) * n * G * d);
  DeviceArray<float> part_lse(static_cast<size_t>(max_chunks) * n * G);
  DeviceArray<int32_t> chunk_begin(hkv + 1);
  gpu::CascadeAttentionParams cp;
  cp.num_seqs = n;
  cp.num_q_heads = hq;
  cp.num_kv_heads = hkv;
  cp.head_dim = d;
  cp.scale = scale;
  cp.q = dev_q.get();
  cp.q_seq_stride = static_cast<int64_t>(hq) * d;
  cp.k = dk.get();
  cp.v = dv.get();
  cp.head_stride = static_cast<int64_t>(S) * d;
  if (squeezed) {
    cp.num_keys = num_keys.get();
    cp.row_index = row_index.get();
    cp.key_mask = key_mask.get();
    cp.key_stride = static_cast<int64_t>(ks);
  } else {
    cp.uniform_keys = S;
  }
  cp.target_chunks = target;
  cp.grid = std::min(ctas, target);
  cp.partial_out = part_out.get();
  cp.partial_lse = part_lse.get();
  cp.max_chunks = max_chunks;
  cp.chunk_begin = chunk_begin.get();
  DeviceArray<char> packed_q(gpu::CascadeWorkspaceBytes(n, hq, d));
  cp.impl = impl;
  cp.workspace = packed_q.get();

  const bool with_dyn = max_dyn > 0;
  gpu::DecodeAttentionParams dp;
  int dense_ctas = 0;
  if (with_dyn) CUDA_OK(gpu::DecodeAttentionConcurrentCtas(d, G, &dense_ctas));
  dp.batch = n;
  dp.num_q_heads = hq;
  dp.num_kv_heads = hkv;
  dp.head_dim = d;
  dp.scale = scale;
  dp.q = dev_q.get();
  dp.kv = dev_dyn.get();
  dp.plan = gpu::PlanDecodeSplits(n, hkv, max_dyn, std::max(dense_ctas, 1));
  const size_t dyn_slots = gpu::DecodePartialSlots(n, hkv, dp.plan);
  DeviceArray<float> dyn_out(with_dyn ? dyn_slots * G * d : 0),
      dyn_lse(with_dyn ? dyn_slots * G : 0);
  dp.partial_out = dyn_out.get();
  dp.partial_lse = dyn_lse.get();
  DeviceArray<float> out(q.size()), lse(static_cast<size_t>(n) * hq);
  gpu::CombineParams cb;
  cb.batch = n;
  cb.num_q_heads = hq;
  cb.num_kv_heads = hkv;
  cb.head_dim = d;
  if (with_dyn) {
    cb.dense_kv = dev_dyn.get();
    cb.dense_plan = dp.plan;
    cb.dense_out = dyn_out.get();
    cb.dense_lse = dyn_lse.get();
  }
  cb.shared_chunk_begin = chunk_begin.get();
  cb.sparse_out = part_out.get();
  cb.sparse_lse = part_lse.get();
  cb.out = out.get();
  cb.lse = lse.get();

  cudaStream_t stream;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  auto step = [&] {
    if (with_dyn) CUDA_OK(gpu::LaunchDecodeAttentionPartials(dp, stream));
    CUDA_OK(gpu::LaunchCascadeAttention(cp, stream));
    CUDA_OK(gpu::LaunchCombineAttention(cb, stream));
  };
  auto poison = [&] {
    part_out.Poison();
    part_lse.Poison();
    chunk_begin.Poison();
    packed_q.Poison();
    dyn_out.Poison();
    dyn_lse.Poison();
    out.Poison();
    lse.Poison();
  };
  poison();
  step();
  CUDA_OK(cudaStreamSynchronize(stream));
  const std::vector<float> got = out.Download(), got_lse = lse.Download();
  const std::vector<int32_t> cbeg = chunk_begin.Download();
  EXPECT_EQ(cbeg[0], 0);
  EXPECT_LE(cbeg[hkv], max_chunks);

  // ---- Reference per sequence.
  std::vector<float> ref_out(q.size()), ref_lse(static_cast<size_t>(n) * hq);
  std::vector<float> q16(static_cast<size_t>(hq) * d);
  std::vector<float> dyn_o(static_cast<size_t>(hq) * d), dyn_l(hq);
  int64_t seen_rows = 0;
  for (int s = 0; s < n; ++s) {
    const AttentionShape sh{1, hq, hkv, d, scale};
    const float* qs = q.data() + static_cast<size_t>(s) * hq * d;
    for (size_t i = 0; i < q16.size(); ++i) q16[i] = RoundBf16(qs[i]);
    float* os = ref_out.data() + static_cast<size_t>(s) * hq * d;
    float* ls = ref_lse.data() + static_cast<size_t>(s) * hq;
    AttentionKeys fixed;
    fixed.kv = KvSlice{ctx.k.ref.data(), ctx.v.ref.data(), static_cast<size_t>(S) * d, S};
    std::vector<std::vector<KeyRange>> ranges(hkv);
    if (squeezed) {
      for (int h = 0; h < hkv; ++h) {
        const SqueezeHeadIndex& hi = ctx.index.heads[h];
        if (c.sinks > 0) ranges[h].push_back({0, c.sinks});
        const std::vector<char>& kept = gpu_kept[static_cast<size_t>(s) * hkv + h];
        for (int cl = 0; cl < hi.num_clusters(); ++cl) {
          if (kept[cl]) ranges[h].push_back({hi.offsets[cl], hi.offsets[cl + 1]});
        }
        if (c.window > 0) ranges[h].push_back({S - c.window, S});
        for (const KeyRange& r : ranges[h]) seen_rows += r.size();
      }
      fixed.ranges = ranges;
    } else {
      seen_rows += static_cast<int64_t>(S) * hkv;
    }
    AttentionPartial(sh, q16.data(), fixed, os, ls);
    if (dyn[s].len > 0) {
      AttentionKeys dk2;
      dk2.kv = KvSlice{dyn[s].k.ref.data(), dyn[s].v.ref.data(),
                       static_cast<size_t>(dyn[s].cap) * d, dyn[s].len};
      AttentionPartial(sh, qs, dk2, dyn_o.data(), dyn_l.data());
      MergeAttentionPartials(os, ls, dyn_o.data(), dyn_l.data(), hq, d);
    }
  }
  for (int s = 0; s < n; ++s) {
    const Errors e = Compare(got, got_lse, ref_out, ref_lse, static_cast<size_t>(s) * hq, hq, d);
    EXPECT_TRUE(e.finite) << "sequence " << s;
    EXPECT_LE(e.rel, 1e-2) << "sequence " << s;
    EXPECT_LE(e.lse_abs, 1e-3) << "sequence " << s;
  }
  std::printf(
      "  cascade %s (%s) n=%d d=%d G=%d Hkv=%d S=%d: %d chunks, each sequence saw %.4f of the "
      "rows\n",
      squeezed ? "squeezed" : "dense", kernel, n, d, G, hkv, S, cbeg[hkv],
      double(seen_rows) / (double(n) * S * hkv));

  // ---- Repeat and graph replay: bitwise identical.
  poison();
  step();
  CUDA_OK(cudaStreamSynchronize(stream));
  EXPECT_EQ(got, out.Download()) << "repeated launch differs";
  if (c.graph) {
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    if (squeezed) CUDA_OK(gpu::LaunchGroupSelection(gs, stream));
    step();
    CUDA_OK(cudaStreamEndCapture(stream, &graph));
    CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
    for (int rep = 0; rep < 2; ++rep) {
      poison();
      CUDA_OK(cudaGraphLaunch(exec, stream));
      CUDA_OK(cudaStreamSynchronize(stream));
      EXPECT_EQ(got, out.Download()) << "graph replay " << rep;
    }
    CUDA_OK(cudaGraphExecDestroy(exec));
    CUDA_OK(cudaGraphDestroy(graph));
  }
  CUDA_OK(cudaStreamDestroy(stream));
}

TEST(CascadeAttention, DenseSharedContext) {
  RunCascade({128, 4, 2, 20000, 0, 100, Clusters::kMixed, {1, 37, 300, 0, 5, 64, 2, 9}, {}}, 41);
  RunCascade({64, 8, 2, 9000, 4, 32, Clusters::kTiny, {3, 3}, {}}, 42);
}

TEST(CascadeAttention, DenseRowPassesAndAnyGroup) {
  // 33 sequences x G = 4 = 132 rows (two row passes); G = 3 without dynamic rows.
  std::vector<int> lens(33);
  Rng rng(43);
  for (int& l : lens) l = rng.Int(1, 500);
  RunCascade({128, 4, 2, 12000, 0, 100, Clusters::kMixed, lens, {}}, 44);
  RunCascade({64, 3, 2, 7000, 0, 64, Clusters::kMixed, std::vector<int>(10, 0), {}}, 45);
}

// Groups of many rows, what kAuto gives the wgmma kernel: 64 x 4 = 256 rows (two row tiles), 20 x
// 8 = 160 rows at d = 64; key counts that are no multiple of the 128-key tile; a context shorter
// than one tile; graph replay.
TEST(CascadeAttention, DenseManyRows) {
  std::vector<int> lens(64);
  Rng rng(60);
  for (int& l : lens) l = rng.Int(0, 300);
  RunCascade({128, 4, 8, 40000, 0, 100, Clusters::kMixed, lens, {}, /*graph=*/true}, 61);
  RunCascade({64, 8, 2, 5003, 4, 64, Clusters::kTiny, std::vector<int>(20, 7), {}}, 62);
  RunCascade({128,
              4,
              2,
              100,
              0,
              32,
              Clusters::kTiny,
              {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
              {}},
             63);
}

TEST(CascadeAttention, SqueezedGroupMixedBudgets) {
  const std::vector<double> budgets = {0.0, 0.05, 0.1, 0.3, 1.0, 0.1, 0.02, 0.5};
  RunCascade({128,
              4,
              2,
              30000,
              4,
              100,
              Clusters::kMixed,
              {1, 2, 3, 100, 7, 0, 64, 9},
              budgets,
              /*graph=*/true},
             46);
  RunCascade({64, 2, 3, 8000, 0, 32, Clusters::kTiny, {5, 5, 5, 5}, {0.1, 0.2, 0.1, 0.05}}, 47);
  RunCascade({128, 8, 1, 20000, 0, 100, Clusters::kGiant, {11, 12}, {0.1, 0.3}}, 48);
}

// Head dim 96 and groups that are no power of two, dense and squeezed (the group selection's
// per-sequence mean over G rows, the cascade kernel's rows r -> sequence r / G).
TEST(CascadeAttention, HeadDim96AndOddGroups) {
  RunCascade({96, 4, 2, 9000, 0, 100, Clusters::kMixed, {1, 37, 300, 0}, {}}, 53);
  RunCascade({96, 3, 2, 7000, 4, 64, Clusters::kTiny, {3, 0, 9}, {}}, 54);
  RunCascade({128, 5, 2, 8000, 0, 100, Clusters::kMixed, {5, 7, 11}, {0.1, 0.3, 1.0}}, 55);
  RunCascade({64, 6, 1, 6000, 0, 32, Clusters::kGiant, {1, 2}, {0.05, 0.2}}, 56);
  RunCascade({96, 7, 2, 12000, 4, 100, Clusters::kMixed, {1, 2, 3, 100}, {0.0, 0.1, 0.5, 0.1}}, 57);
  RunCascade({128,
              16,
              1,
              9000,
              0,
              100,
              Clusters::kMixed,
              {5, 9, 2, 1, 7, 3, 4, 8, 6},
              {0.1, 0.2, 0.1, 0.05, 1.0, 0.1, 0.3, 0.1, 0.1}},
             58);  // 9 x 16 = 144 rows: two row passes
  RunCascade({96, 16, 2, 5000, 4, 64, Clusters::kTiny, {2, 3}, {}}, 59);
}

TEST(CascadeAttention, SqueezedGroupOf64) {
  std::vector<int> lens(64);
  std::vector<double> budgets(64);
  Rng rng(49);
  for (int s = 0; s < 64; ++s) {
    lens[s] = rng.Int(1, 200);
    budgets[s] = s % 5 == 0 ? 0.3 : 0.1;
  }
  RunCascade({128, 4, 2, 16000, 4, 100, Clusters::kMixed, lens, budgets}, 50);
}

TEST(CascadeAttention, LongContext128K) {
  const std::vector<int> lens = {100, 200, 50, 120, 80, 64, 33, 1};
  RunCascade({128, 4, 2, 131072, 4, 100, Clusters::kMixed, lens, {}}, 51);
  RunCascade({128,
              4,
              2,
              131072,
              4,
              100,
              Clusters::kMixed,
              lens,
              {0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1},
              /*graph=*/true},
             52);
}

}  // namespace
}  // namespace squeeze
