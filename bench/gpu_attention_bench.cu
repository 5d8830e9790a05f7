// GPU decode attention benchmark: our dense split-KV decode vs our Squeezed Attention decode
// (centroid lookup, then one kernel for the kept clusters, the dynamic rows and the LSE
// merge) on Llama-3-8B attention shapes (Hq = 32, Hkv = 8, d = 128, bf16 K/V), one layer.
//
// Data: per sequence a fixed context of S rows (4 sinks, 100-row window, the rest in clusters
// of ~20 rows: C = ceil(5% of M) centroids) followed by 256 dynamic rows, in one buffer
// [B][Hkv][S + 256][d]. Keys are cluster centre + noise, so centroid scores are realistic; the
// centroids (bf16) are the centres. tau per sequence is chosen on the CPU from the GPU's own
// cluster scores for this query so that the kept fraction of clustered keys hits 20/10/5/3%
// (then the real lookup + compaction + sparse run with that tau; the realised fraction is
// printed). Timing: CUDA-graph replays, the L2 flushed (256 MB memset) before each rep, one event
// pair per rep, median over reps. Bandwidth counts bytes actually needed: dense = K + V of all
// S + 256 rows; squeezed = kept K/V + dynamic K/V + centroids. A device-to-device copy
// (read + write bytes) measured in the same run is the ceiling.
//
// --hierarchical adds the two-level lookup: coarse clusters of kFinePerCoarse fine ones (their
// centroid the mean of the fine centres; fine centres share a direction with their group), a
// coarse tau keeping 2.5x the target fraction of the keys as candidates, then the fine lookup
// over the candidates (scores normalised over them) and the same attention kernel; rows
// "hier@X%", the lookup column holding the coarse lookup, the candidate expansion and the fine
// lookup.
//
// Usage: gpu-attention-bench [--quick] [--reps N] [--csv FILE] [--fp32-centroids]
//                            [--configs BxS,BxS,...]   (default 1x32768,1x131072,1x524288,
//                                                        8x32768,8x131072,8x524288)
//                            [--waves N] [--sparse-waves N] [--two-pass-lookup] [--hierarchical]
//                            [--no-pdl]
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench/gpu_bench_util.cuh"
#include "kernels/attention/decode_attention.cuh"
#include "kernels/squeeze/expand_selection.cuh"
#include "kernels/squeeze/squeezed_decode.cuh"

namespace {

// Dense decode split planning: waves of CTAs (--waves; the library default otherwise).
int g_waves = squeeze::gpu::kDefaultDecodeWaves;

using squeeze::gpu::bf16;
namespace gpu = squeeze::gpu;
using squeeze::bench::Mix;
using squeeze::bench::Unit;

constexpr int kHq = 32, kHkv = 8, kD = 128, kDyn = 256, kSinks = 4, kWindow = 100;

// Hierarchical variant: every kFinePerCoarse consecutive clusters form one coarse cluster
// (5% -> 1% of the keys, as the server's default index).
constexpr int kFinePerCoarse = 5;

// Centre of cluster c of head bh, dimension i: a direction shared by its coarse group plus its
// own, scaled by a per-cluster radius.
__device__ inline float CentreValue(int bh, int c, int i) {
  const uint64_t ctag = (static_cast<uint64_t>(bh) << 40) ^ (static_cast<uint64_t>(c) << 8);
  const uint64_t gtag = (static_cast<uint64_t>(bh) << 40) ^
                        (static_cast<uint64_t>(c / kFinePerCoarse) << 8) ^ (uint64_t{1} << 39);
  const float radius = 0.5f + 0.75f * (Unit(Mix(ctag * 7 + 5)) + 1.0f);
  return radius * (0.6f * Unit(Mix((gtag ^ i) * 5 + 2)) + 0.8f * Unit(Mix((ctag ^ i) * 5 + 2)));
}

// Row r of clustered head bh belongs to cluster ((r - sinks + 1) * C - 1) / M: clusters are
// the equal splits offsets[c] = sinks + c * M / C.
__device__ inline float KeyValue(int bh, int r, int i, int S, int M, int C) {
  const uint64_t tag = (static_cast<uint64_t>(bh) << 40) ^ (static_cast<uint64_t>(r) << 8) ^ i;
  if (r < kSinks || r >= S - kWindow) return 1.5f * Unit(Mix(tag * 3 + 1));
  const int64_t x = r - kSinks;
  const int c = static_cast<int>(((x + 1) * C - 1) / M);
  return CentreValue(bh, c, i) + 0.35f * Unit(Mix(tag * 3 + 1));
}

// kv: [B * Hkv][cap][d]; rows >= S (the dynamic part) are random.
__global__ void FillKv(bf16* k, bf16* v, int num_heads, int cap, int S, int M, int C) {
  const size_t n = static_cast<size_t>(num_heads) * cap * kD;
  for (size_t e = blockIdx.x * size_t{blockDim.x} + threadIdx.x; e < n;
       e += size_t{gridDim.x} * blockDim.x) {
    const int i = static_cast<int>(e % kD);
    const int r = static_cast<int>((e / kD) % cap);
    const int bh = static_cast<int>(e / (size_t{kD} * cap));
    const float kv = r < S ? KeyValue(bh, r, i, S, M, C) : Unit(Mix(e * 11 + 3));
    k[e] = __float2bfloat16_rn(kv);
    v[e] = __float2bfloat16_rn(Unit(Mix(e * 13 + 7)) + 0.5f * __sinf(0.37f * i));
  }
}

// Centroid of cluster c = its centre (the mean of the noise is ~0).
template <typename T>
__global__ void FillCentroids(T* cent, int num_heads, int C) {
  const size_t n = static_cast<size_t>(num_heads) * C * kD;
  for (size_t e = blockIdx.x * size_t{blockDim.x} + threadIdx.x; e < n;
       e += size_t{gridDim.x} * blockDim.x) {
    const int i = static_cast<int>(e % kD);
    const int c = static_cast<int>((e / kD) % C);
    const int bh = static_cast<int>(e / (size_t{kD} * C));
    const float x = CentreValue(bh, c, i);
    if constexpr (sizeof(T) == 2) {
      cent[e] = __float2bfloat16_rn(x);
    } else {
      cent[e] = x;
    }
  }
}

// Coarse centroid j (of C1) = the mean of the centres of its fine clusters (C in all).
__global__ void FillCoarseCentroids(bf16* cent, int num_heads, int C, int C1) {
  const size_t n = static_cast<size_t>(num_heads) * C1 * kD;
  for (size_t e = blockIdx.x * size_t{blockDim.x} + threadIdx.x; e < n;
       e += size_t{gridDim.x} * blockDim.x) {
    const int i = static_cast<int>(e % kD);
    const int j = static_cast<int>((e / kD) % C1);
    const int bh = static_cast<int>(e / (size_t{kD} * C1));
    const int c0 = j * kFinePerCoarse, c1 = min(c0 + kFinePerCoarse, C);
    float x = 0.0f;
    for (int c = c0; c < c1; ++c) x += CentreValue(bh, c, i);
    cent[e] = __float2bfloat16_rn(x / (c1 - c0));
  }
}

struct Args {
  bool quick = false;
  int reps = 30;
  std::string csv;
  bool fp32_centroids = false;
  int sparse_waves = 0;          // 0: the library default
  bool two_pass_lookup = false;  // the two-launch lookup even where one launch fits
  bool hierarchical = false;     // also the two-level lookup (coarse, then candidates)
  bool no_pdl = false;           // the attention kernel launched plainly after the lookup
  std::vector<std::pair<int, int>> configs;  // (batch, context)
};

// "1x32768,8x131072" -> {(1, 32768), (8, 131072)}; false on a malformed list.
bool ParseConfigs(const std::string& text, std::vector<std::pair<int, int>>* out) {
  size_t at = 0;
  while (at < text.size()) {
    size_t end = text.find(',', at);
    if (end == std::string::npos) end = text.size();
    const std::string item = text.substr(at, end - at);
    const size_t x = item.find('x');
    if (x == std::string::npos) return false;
    const int b = std::atoi(item.substr(0, x).c_str()), s = std::atoi(item.substr(x + 1).c_str());
    if (b <= 0 || s <= kSinks + kWindow) return false;
    out->emplace_back(b, s);
    at = end + 1;
  }
  return !out->empty();
}

struct Timer {
  cudaStream_t stream;
  void* flush;
  size_t flush_bytes;
  int reps;

  // Median over reps of one graph replay, the L2 flushed before each.
  double Median(cudaGraphExec_t exec) const {
    int run = 0;
    return squeeze::bench::MedianMicros(
        stream, 3, reps, [&] { CK(cudaGraphLaunch(exec, stream)); },
        [&] { CK(cudaMemsetAsync(flush, run++ & 0xff, flush_bytes, stream)); });
  }
};

template <class F>
cudaGraphExec_t Capture(cudaStream_t stream, F&& launches) {
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  launches();
  CK(cudaStreamEndCapture(stream, &graph));
  CK(cudaGraphInstantiate(&exec, graph, 0));
  CK(cudaGraphDestroy(graph));
  return exec;
}

struct Row {
  int batch;
  int context;
  std::string path;
  double kept;  // realised kept fraction of the fixed context's rows (1 for dense)
  double us;
  double bytes;
  double lookup_us = 0, attend_us = 0;  // the step's two stages, timed apart
};

double CopyBandwidth(cudaStream_t stream, int reps) {
  const size_t bytes = size_t{1} << 30;
  void *a, *b;
  CK(cudaMalloc(&a, bytes));
  CK(cudaMalloc(&b, bytes));
  CK(cudaMemset(a, 1, bytes));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  std::vector<double> t;
  for (int i = 0; i < reps + 2; ++i) {
    CK(cudaEventRecord(e0, stream));
    CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream));
    CK(cudaEventRecord(e1, stream));
    CK(cudaEventSynchronize(e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    if (i >= 2) t.push_back(ms * 1e-3);
  }
  std::sort(t.begin(), t.end());
  CK(cudaFree(a));
  CK(cudaFree(b));
  CK(cudaEventDestroy(e0));
  CK(cudaEventDestroy(e1));
  return 2.0 * bytes / t[t.size() / 2];  // bytes read + written per second
}

// The threshold keeping the highest-scored (score, keys) items until `keys` keys are kept.
float TauKeeping(std::vector<std::pair<float, int>>* items, double keys) {
  std::sort(items->begin(), items->end(), [](auto& x, auto& y) { return x.first > y.first; });
  double acc = 0;
  size_t i = 0;
  while (i < items->size() && acc < keys) acc += (*items)[i++].second;
  return i < items->size() ? (*items)[i].first : -INFINITY;
}

template <typename T>
std::vector<T> Download(const T* dev, size_t n) {
  std::vector<T> host(n);
  CK(cudaMemcpy(host.data(), dev, n * sizeof(T), cudaMemcpyDeviceToHost));
  return host;
}

// The hierarchical rows of one configuration: the fine level is the flat benchmark's (plan,
// workspace, step parameters, d_tau = sp.tau); the coarse level is built here.
void RunHierarchical(int B, int S, int M, int C, const std::vector<int32_t>& sizes,
                     const gpu::SqueezedDecodePlan& plan, void* ws, gpu::SqueezedDecodeParams sp,
                     float* d_tau, const Timer& timer, std::vector<Row>* rows) {
  cudaStream_t stream = timer.stream;
  const int BH = B * kHkv, C1 = (C + kFinePerCoarse - 1) / kFinePerCoarse;
  bf16* cent1;
  CK(cudaMalloc(&cent1, static_cast<size_t>(BH) * C1 * kD * 2));
  FillCoarseCentroids<<<1024, 256, 0, stream>>>(cent1, BH, C, C1);
  CK(cudaGetLastError());
  // Coarse "rows" are fine clusters: offsets index them, sizes count their keys.
  std::vector<int32_t> off1(C1 + 1), size1(C1, 0);
  for (int j = 0; j <= C1; ++j) off1[j] = std::min(j * kFinePerCoarse, C);
  for (int j = 0; j < C1; ++j) {
    for (int c = off1[j]; c < off1[j + 1]; ++c) size1[j] += sizes[c];
  }
  int32_t *d_off1, *d_size1, *cand, *cand_count;
  float* d_tau1;
  CK(cudaMalloc(&d_off1, off1.size() * 4));
  CK(cudaMalloc(&d_size1, size1.size() * 4));
  CK(cudaMalloc(&cand, static_cast<size_t>(BH) * C * 4));
  CK(cudaMalloc(&cand_count, BH * 4));
  CK(cudaMalloc(&d_tau1, B * 4));
  CK(cudaMemcpy(d_off1, off1.data(), off1.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d_size1, size1.data(), size1.size() * 4, cudaMemcpyHostToDevice));
  std::vector<gpu::SqueezeHeadDesc> heads1(BH);
  for (int bh = 0; bh < BH; ++bh) {
    gpu::SqueezeHeadDesc& hd = heads1[bh];
    hd.centroids = cent1 + static_cast<size_t>(bh) * C1 * kD;
    hd.sizes = d_size1;
    hd.offsets = d_off1;
    hd.num_clusters = C1;
    hd.num_rows = C;
  }
  gpu::SqueezeHeadDesc* d_heads1;
  CK(cudaMalloc(&d_heads1, BH * sizeof(gpu::SqueezeHeadDesc)));
  CK(cudaMemcpy(d_heads1, heads1.data(), BH * sizeof(gpu::SqueezeHeadDesc),
                cudaMemcpyHostToDevice));
  gpu::SqueezedDecodeShape shape1 = plan.shape;
  shape1.max_dynamic_len = 0;
  shape1.max_clusters = C1;
  shape1.max_fixed_rows = int64_t{B} * C;
  shape1.max_context_rows = C;
  shape1.with_scores = true;
  gpu::SqueezedDecodePlan plan1;
  CK(gpu::PlanSqueezedDecode(shape1, &plan1));
  void* ws1;
  CK(cudaMalloc(&ws1, plan1.workspace_bytes));
  CK(gpu::InitSqueezedDecodeWorkspace(plan1, ws1, stream));
  const gpu::SqueezeSelection sel1 = gpu::SelectionInWorkspace(plan1, ws1);
  const gpu::SqueezeSelection sel = gpu::SelectionInWorkspace(plan, ws);
  auto coarse = [&] {  // coarse lookup -> the candidate fine clusters of every head
    CK(gpu::LaunchLookupFromQueries(plan1, sp.scale, sp.q, d_heads1, true, d_tau1, ws1, stream));
    CK(gpu::LaunchExpandSelectionRows(sel1, BH, C, cand, C, stream));
    CK(cudaMemcpyAsync(cand_count, sel1.kept_keys, BH * 4, cudaMemcpyDeviceToDevice, stream));
  };
  sp.candidates = cand;
  sp.num_candidates = cand_count;
  sp.candidate_stride = C;
  cudaGraphExec_t full = Capture(stream, [&] {
    coarse();
    CK(gpu::LaunchSqueezedDecode(plan, sp, ws, stream));
  });
  cudaGraphExec_t lookup = Capture(stream, [&] {
    coarse();
    CK(gpu::LaunchSqueezedDecode(plan, sp, ws, stream, gpu::kStageLookup));
  });
  cudaGraphExec_t attend = Capture(
      stream, [&] { CK(gpu::LaunchSqueezedDecode(plan, sp, ws, stream, gpu::kStageAttend)); });

  // Coarse scores for this query (tau = 0 scores every coarse cluster).
  std::vector<float> tau(B, 0.0f);
  CK(cudaMemcpy(d_tau1, tau.data(), B * 4, cudaMemcpyHostToDevice));
  coarse();
  CK(cudaStreamSynchronize(stream));
  const std::vector<float> scores1 =
      Download(sel1.scores, static_cast<size_t>(BH) * sel1.cluster_stride);
  for (double frac : {0.20, 0.10, 0.05, 0.03}) {
    // Coarse tau: candidates holding 2.5x the target fraction of the keys.
    std::vector<float> tau1(B);
    for (int b = 0; b < B; ++b) {
      std::vector<std::pair<float, int>> items;
      for (int h = 0; h < kHkv; ++h) {
        for (int j = 0; j < C1; ++j) {
          items.emplace_back(scores1[(static_cast<size_t>(b) * kHkv + h) * sel1.cluster_stride + j],
                             size1[j]);
        }
      }
      tau1[b] = TauKeeping(&items, std::min(1.0, 2.5 * frac) * M * kHkv);
    }
    CK(cudaMemcpy(d_tau1, tau1.data(), B * 4, cudaMemcpyHostToDevice));
    // Fine scores over the candidates (tau = 0), then the fine tau keeping frac of the keys.
    std::fill(tau.begin(), tau.end(), 0.0f);
    CK(cudaMemcpy(d_tau, tau.data(), B * 4, cudaMemcpyHostToDevice));
    coarse();
    CK(gpu::LaunchSqueezedDecode(plan, sp, ws, stream, gpu::kStageLookup));
    CK(cudaStreamSynchronize(stream));
    const std::vector<float> scores =
        Download(sel.scores, static_cast<size_t>(BH) * sel.cluster_stride);
    const std::vector<int32_t> ids = Download(cand, static_cast<size_t>(BH) * C);
    const std::vector<int32_t> counts = Download(cand_count, BH);
    double candidates = 0;
    for (int b = 0; b < B; ++b) {
      std::vector<std::pair<float, int>> items;
      for (int h = 0; h < kHkv; ++h) {
        const size_t bh = static_cast<size_t>(b) * kHkv + h;
        candidates += counts[bh];
        for (int i = 0; i < counts[bh]; ++i) {
          const int c = ids[bh * C + i];
          items.emplace_back(scores[bh * sel.cluster_stride + c], sizes[c]);
        }
      }
      tau[b] = TauKeeping(&items, frac * M * kHkv);
    }
    CK(cudaMemcpy(d_tau, tau.data(), B * 4, cudaMemcpyHostToDevice));
    Row r{B, S, "", 0, 0, 0};
    r.us = timer.Median(full);
    r.lookup_us = timer.Median(lookup);
    r.attend_us = timer.Median(attend);
    const std::vector<int32_t> kept = Download(sel.kept_keys, BH);
    double kept_rows = 0;
    for (int32_t x : kept) kept_rows += x;
    r.kept = kept_rows / (double(BH) * S);
    r.bytes = kept_rows * kD * 2 * 2 + double(BH) * kDyn * kD * 2 * 2 +
              (double(BH) * C1 + candidates) * kD * 2;
    char name[64];
    std::snprintf(name, sizeof(name), "hier@%.0f%%", frac * 100);
    r.path = name;
    std::printf(
        "B=%d S=%d %s: %.1f%% of the fine clusters are candidates, lookup %.1f of %.1f us "
        "(%.1f%%)\n",
        B, S, name, 100.0 * candidates / (double(BH) * C), r.lookup_us, r.us,
        100.0 * r.lookup_us / r.us);
    rows->push_back(r);
  }
  for (cudaGraphExec_t e : {full, lookup, attend}) CK(cudaGraphExecDestroy(e));
  for (void* ptr : std::initializer_list<void*>{cent1, d_off1, d_size1, cand, cand_count, d_tau1,
                                                d_heads1, ws1}) {
    CK(cudaFree(ptr));
  }
}

void RunConfig(int B, int S, const Args& args, const Timer& timer, std::vector<Row>* rows) {
  const int cap = S + kDyn, M = S - kSinks - kWindow;
  const int C = static_cast<int>(std::ceil(0.05 * M));
  const int BH = B * kHkv;
  const size_t kv_elems = static_cast<size_t>(BH) * cap * kD;
  const size_t cent_elem_bytes = args.fp32_centroids ? 4 : 2;
  size_t free_bytes = 0, total_bytes = 0;
  CK(cudaMemGetInfo(&free_bytes, &total_bytes));
  const size_t need =
      2 * kv_elems * 2 + static_cast<size_t>(BH) * C * kD * cent_elem_bytes + (512u << 20);
  if (need > free_bytes) {
    std::printf("skip B=%d S=%d: needs %.1f GB, %.1f GB free\n", B, S, need / 1e9,
                free_bytes / 1e9);
    return;
  }
  cudaStream_t stream = timer.stream;
  bf16 *k, *v;
  void* cent;
  CK(cudaMalloc(&k, kv_elems * 2));
  CK(cudaMalloc(&v, kv_elems * 2));
  CK(cudaMalloc(&cent, static_cast<size_t>(BH) * C * kD * cent_elem_bytes));
  FillKv<<<4096, 256, 0, stream>>>(k, v, BH, cap, S, M, C);
  CK(cudaGetLastError());
  if (args.fp32_centroids) {
    FillCentroids<float><<<1024, 256, 0, stream>>>(static_cast<float*>(cent), BH, C);
  } else {
    FillCentroids<bf16><<<1024, 256, 0, stream>>>(static_cast<bf16*>(cent), BH, C);
  }
  CK(cudaGetLastError());

  std::vector<int32_t> offsets(C + 1), sizes(C);
  for (int c = 0; c <= C; ++c) offsets[c] = kSinks + static_cast<int>(int64_t{c} * M / C);
  for (int c = 0; c < C; ++c) sizes[c] = offsets[c + 1] - offsets[c];
  int32_t *d_off, *d_sizes;
  CK(cudaMalloc(&d_off, offsets.size() * 4));
  CK(cudaMalloc(&d_sizes, sizes.size() * 4));
  CK(cudaMemcpy(d_off, offsets.data(), offsets.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d_sizes, sizes.data(), sizes.size() * 4, cudaMemcpyHostToDevice));

  std::vector<float> q(static_cast<size_t>(B) * kHq * kD);
  for (size_t i = 0; i < q.size(); ++i) q[i] = 2.0f * Unit(Mix(i * 17 + 99));
  float *d_q, *d_tau, *d_out_dense, *d_out_sq, *d_lse;
  CK(cudaMalloc(&d_q, q.size() * 4));
  CK(cudaMalloc(&d_tau, B * 4));
  CK(cudaMalloc(&d_out_dense, q.size() * 4));
  CK(cudaMalloc(&d_out_sq, q.size() * 4));
  CK(cudaMalloc(&d_lse, static_cast<size_t>(B) * kHq * 4));
  CK(cudaMemcpy(d_q, q.data(), q.size() * 4, cudaMemcpyHostToDevice));

  std::vector<gpu::DecodeKv> dense_kv(B), dyn_kv(B);
  std::vector<gpu::SqueezeHeadDesc> heads(BH);
  const int64_t head_stride = int64_t{cap} * kD;
  for (int b = 0; b < B; ++b) {
    const bf16* kb = k + static_cast<size_t>(b) * kHkv * head_stride;
    const bf16* vb = v + static_cast<size_t>(b) * kHkv * head_stride;
    dense_kv[b] = {kb, vb, head_stride, cap, 0};
    dyn_kv[b] = {kb + static_cast<size_t>(S) * kD, vb + static_cast<size_t>(S) * kD, head_stride,
                 kDyn, 0};
    for (int h = 0; h < kHkv; ++h) {
      gpu::SqueezeHeadDesc& hd = heads[b * kHkv + h];
      hd.k = kb + h * head_stride;
      hd.v = vb + h * head_stride;
      hd.centroids =
          static_cast<char*>(cent) + (static_cast<size_t>(b) * kHkv + h) * C * kD * cent_elem_bytes;
      hd.sizes = d_sizes;
      hd.offsets = d_off;
      hd.num_clusters = C;
      hd.num_rows = S;
      hd.sinks = kSinks;
      hd.window = kWindow;
    }
  }
  gpu::DecodeKv *d_dense_kv, *d_dyn_kv;
  gpu::SqueezeHeadDesc* d_heads;
  CK(cudaMalloc(&d_dense_kv, B * sizeof(gpu::DecodeKv)));
  CK(cudaMalloc(&d_dyn_kv, B * sizeof(gpu::DecodeKv)));
  CK(cudaMalloc(&d_heads, BH * sizeof(gpu::SqueezeHeadDesc)));
  CK(cudaMemcpy(d_dense_kv, dense_kv.data(), B * sizeof(gpu::DecodeKv), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d_dyn_kv, dyn_kv.data(), B * sizeof(gpu::DecodeKv), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d_heads, heads.data(), BH * sizeof(gpu::SqueezeHeadDesc), cudaMemcpyHostToDevice));

  // ---- Dense.
  int ctas = 0;
  CK(gpu::DecodeAttentionConcurrentCtas(kD, kHq / kHkv, &ctas));
  gpu::DecodeAttentionParams dp;
  dp.batch = B;
  dp.num_q_heads = kHq;
  dp.num_kv_heads = kHkv;
  dp.head_dim = kD;
  dp.scale = 1.0f / std::sqrt(static_cast<float>(kD));
  dp.q = d_q;
  dp.kv = d_dense_kv;
  dp.plan = gpu::PlanDecodeSplits(B, kHkv, cap, ctas, g_waves);
  void* dense_ws;
  CK(cudaMalloc(&dense_ws, gpu::DecodeAttentionWorkspaceBytes(B, kHq, kD, dp.plan)));
  cudaGraphExec_t dense_exec = Capture(stream, [&] {
    CK(gpu::LaunchDecodeAttention(dp, dense_ws, d_out_dense, false, d_lse, stream));
  });
  const double dense_bytes = 2.0 * kv_elems * 2;
  Row dense_row{B, S, "dense", 1.0, timer.Median(dense_exec), dense_bytes};
  rows->push_back(dense_row);

  // ---- Squeezed.
  gpu::SqueezedDecodeShape shape;
  shape.batch = B;
  shape.num_q_heads = kHq;
  shape.num_kv_heads = kHkv;
  shape.head_dim = kD;
  shape.max_dynamic_len = kDyn;
  shape.max_clusters = C;
  shape.max_fixed_rows = int64_t{B} * S;
  shape.max_context_rows = S;
  shape.with_scores = true;
  shape.sparse_waves = args.sparse_waves;
  shape.one_launch_lookup = !args.two_pass_lookup;
  shape.programmatic_launch = !args.no_pdl;
  gpu::SqueezedDecodePlan plan;
  CK(gpu::PlanSqueezedDecode(shape, &plan));
  std::printf(
      "B=%d S=%d: lookup in %s, %d clusters per CTA; attention grid %d, %d chunks at "
      "most\n",
      B, S, plan.lookup.one_launch ? "one launch" : "two launches", plan.lookup.clusters_per_block,
      plan.sparse_grid, plan.max_chunks);
  void* ws;
  CK(cudaMalloc(&ws, plan.workspace_bytes));
  CK(gpu::InitSqueezedDecodeWorkspace(plan, ws, stream));
  gpu::SqueezedDecodeParams sp;
  sp.scale = dp.scale;
  sp.q = d_q;
  sp.dynamic_kv = d_dyn_kv;
  sp.heads = d_heads;
  sp.centroids_bf16 = !args.fp32_centroids;
  sp.tau = d_tau;
  sp.out = d_out_sq;
  sp.lse = d_lse;
  const gpu::SqueezeSelection sel = gpu::SelectionInWorkspace(plan, ws);

  // Sanity: every cluster kept (tau = -inf) must reproduce dense attention.
  std::vector<float> tau(B, -INFINITY);
  CK(cudaMemcpy(d_tau, tau.data(), B * 4, cudaMemcpyHostToDevice));
  CK(gpu::LaunchSqueezedDecode(plan, sp, ws, stream));
  CK(cudaStreamSynchronize(stream));
  std::vector<float> o_dense(q.size()), o_sq(q.size());
  CK(cudaMemcpy(o_dense.data(), d_out_dense, q.size() * 4, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(o_sq.data(), d_out_sq, q.size() * 4, cudaMemcpyDeviceToHost));
  double num = 0, den = 0;
  for (size_t i = 0; i < q.size(); ++i) {
    num += (o_sq[i] - o_dense[i]) * double(o_sq[i] - o_dense[i]);
    den += o_dense[i] * double(o_dense[i]);
  }
  std::printf("B=%d S=%d: squeezed with every cluster kept vs dense: rel err %.2e (C=%d/head)\n", B,
              S, std::sqrt(num / den), C);

  // Scores for this query (tau = 0 scores every cluster).
  std::fill(tau.begin(), tau.end(), 0.0f);
  CK(cudaMemcpy(d_tau, tau.data(), B * 4, cudaMemcpyHostToDevice));
  CK(gpu::LaunchSqueezedDecode(plan, sp, ws, stream, gpu::kStageLookup));
  CK(cudaStreamSynchronize(stream));
  std::vector<float> scores(static_cast<size_t>(BH) * sel.cluster_stride);
  CK(cudaMemcpy(scores.data(), sel.scores, scores.size() * 4, cudaMemcpyDeviceToHost));

  cudaGraphExec_t full =
      Capture(stream, [&] { CK(gpu::LaunchSqueezedDecode(plan, sp, ws, stream)); });
  cudaGraphExec_t st[2];
  const unsigned stage_bits[2] = {gpu::kStageLookup, gpu::kStageAttend};
  for (int i = 0; i < 2; ++i) {
    st[i] = Capture(stream,
                    [&] { CK(gpu::LaunchSqueezedDecode(plan, sp, ws, stream, stage_bits[i])); });
  }
  for (double frac : {0.20, 0.10, 0.05, 0.03}) {
    // One tau per sequence (its context): the clusters of all its heads by descending score,
    // kept until frac of the clustered keys.
    for (int b = 0; b < B; ++b) {
      std::vector<std::pair<float, int>> items;
      for (int h = 0; h < kHkv; ++h) {
        for (int c = 0; c < C; ++c) {
          items.emplace_back(scores[(static_cast<size_t>(b) * kHkv + h) * sel.cluster_stride + c],
                             sizes[c]);
        }
      }
      tau[b] = TauKeeping(&items, frac * M * kHkv);
    }
    CK(cudaMemcpy(d_tau, tau.data(), B * 4, cudaMemcpyHostToDevice));
    Row r{B, S, "squeezed", 0, 0, 0};
    r.us = timer.Median(full);
    std::vector<int32_t> kept(BH);
    CK(cudaMemcpy(kept.data(), sel.kept_keys, BH * 4, cudaMemcpyDeviceToHost));
    double kept_rows = 0;
    for (int32_t x : kept) kept_rows += x;
    r.kept = kept_rows / (double(BH) * S);
    r.bytes = kept_rows * kD * 2 * 2 + double(BH) * kDyn * kD * 2 * 2 +
              double(BH) * C * kD * cent_elem_bytes;
    char name[64];
    std::snprintf(name, sizeof(name), "squeezed@%.0f%%", frac * 100);
    r.path = name;
    // Stages timed apart (each replays on the workspace the full step left).
    r.lookup_us = timer.Median(st[0]);
    r.attend_us = timer.Median(st[1]);
    rows->push_back(r);
  }
  if (args.hierarchical && !args.fp32_centroids) {
    RunHierarchical(B, S, M, C, sizes, plan, ws, sp, d_tau, timer, rows);
  }
  CK(cudaGraphExecDestroy(dense_exec));
  CK(cudaGraphExecDestroy(full));
  for (cudaGraphExec_t e : st) CK(cudaGraphExecDestroy(e));
  for (void* ptr :
       std::initializer_list<void*>{k, v, cent, d_off, d_sizes, d_q, d_tau, d_out_dense, d_out_sq,
                                    d_lse, d_dense_kv, d_dyn_kv, d_heads, dense_ws, ws}) {
    CK(cudaFree(ptr));
  }
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      args.quick = true;
    } else if (a == "--reps" && i + 1 < argc) {
      args.reps = std::max(3, std::atoi(argv[++i]));
    } else if (a == "--csv" && i + 1 < argc) {
      args.csv = argv[++i];
    } else if (a == "--waves" && i + 1 < argc) {
      g_waves = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--fp32-centroids") {
      args.fp32_centroids = true;
    } else if (a == "--sparse-waves" && i + 1 < argc) {
      args.sparse_waves = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--two-pass-lookup") {
      args.two_pass_lookup = true;
    } else if (a == "--hierarchical") {
      args.hierarchical = true;
    } else if (a == "--no-pdl") {
      args.no_pdl = true;
    } else if (a == "--configs" && i + 1 < argc && ParseConfigs(argv[i + 1], &args.configs)) {
      ++i;
    } else {
      std::fprintf(stderr,
                   "usage: %s [--quick] [--reps N] [--csv FILE] [--fp32-centroids] "
                   "[--configs BxS,...] [--waves N] [--sparse-waves N] [--two-pass-lookup]\n"
                   "       [--hierarchical] [--no-pdl]\n",
                   argv[0]);
      return 2;
    }
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "gpu-attention-bench: no CUDA device\n");
    return 77;
  }
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, L2 %.0f MB\n", prop.name, prop.multiProcessorCount,
              prop.l2CacheSize / 1e6);
  Timer timer;
  CK(cudaStreamCreateWithFlags(&timer.stream, cudaStreamNonBlocking));
  timer.flush_bytes = size_t{256} << 20;
  CK(cudaMalloc(&timer.flush, timer.flush_bytes));
  timer.reps = args.quick ? 5 : args.reps;
  const double copy_bw = CopyBandwidth(timer.stream, 10);
  std::printf("device-to-device copy: %.0f GB/s (read + write)\n", copy_bw / 1e9);

  std::vector<std::pair<int, int>> configs = {{1, 32768}, {1, 131072}, {1, 524288},
                                              {8, 32768}, {8, 131072}, {8, 524288}};
  if (args.quick) configs = {{1, 32768}, {8, 32768}};
  if (!args.configs.empty()) configs = args.configs;
  std::vector<Row> rows;
  for (auto [b, s] : configs) RunConfig(b, s, args, timer, &rows);

  std::printf("\n%-3s %-7s %-13s %7s %9s %8s %6s %8s | %8s %8s\n", "B", "context", "path", "kept%",
              "time_us", "GB/s", "%copy", "xdense", "lookup", "attend");
  FILE* csv = args.csv.empty() ? nullptr : std::fopen(args.csv.c_str(), "w");
  if (csv != nullptr) {
    std::fprintf(csv,
                 "impl,batch,context,path,kept_frac,time_us,bytes,gbps,copy_gbps,lookup_us,"
                 "attend_us\n");
  }
  double dense_us = 0;
  for (const Row& r : rows) {
    if (r.path == "dense") dense_us = r.us;
    const double gbps = r.bytes / (r.us * 1e-6) / 1e9;
    std::printf("%-3d %-7d %-13s %7.2f %9.1f %8.0f %6.1f %8.2f | %8.1f %8.1f\n", r.batch, r.context,
                r.path.c_str(), 100 * r.kept, r.us, gbps, 100 * gbps * 1e9 / copy_bw,
                dense_us / r.us, r.lookup_us, r.attend_us);
    if (csv != nullptr) {
      std::fprintf(csv, "ours,%d,%d,%s,%.5f,%.2f,%.0f,%.1f,%.1f,%.2f,%.2f\n", r.batch, r.context,
                   r.path.c_str(), r.kept, r.us, r.bytes, gbps, copy_bw / 1e9, r.lookup_us,
                   r.attend_us);
    }
  }
  if (csv != nullptr) std::fclose(csv);
  std::printf(
      "(kept%% = kept fixed rows incl. sinks/window over S; bytes: dense K+V of S+%d rows, "
      "squeezed kept K/V + dynamic K/V + %s centroids; xdense = our dense time / time)\n",
      kDyn, args.fp32_centroids ? "fp32" : "bf16");
  return 0;
}
