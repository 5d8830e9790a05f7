// GPU causal prefill attention benchmark (kernels/attention/prefill_attention.cuh) on Llama-3-8B
// attention shapes: Hq = 32, Hkv = 8, d = 128, bf16 q/K/V, one layer, one sequence, past = 0, the
// whole prompt of n tokens in one call, bf16 output plus lse.
//
// FLOPs (causal, the convention of FlashAttention papers): 4 * n^2 / 2 * d * Hq (QK^T and PV,
// 2 FLOPs per multiply-add, half the score matrix). TFLOP/s = FLOPs / median time.
// Floors at n = 128K: 1.41e14 FLOPs / 989e12 (H100 SXM dense bf16, wgmma) = 142 ms; bytes
// (q, out, K, V once: ~2.6 GB) / 3.35 TB/s = 0.8 ms: compute-bound. Both kernels are timed where
// the device has wgmma (sm_90): the mma.sync one (FlashAttention-2 style, which reaches well under
// the wgmma peak on Hopper) and the wgmma one LaunchPrefillAttention picks there.
// Timing: one launch per rep between two events, 2 warm-up launches, median over reps (the L2
// is not flushed: the kernel is compute-bound and its inputs exceed the L2 anyway at these n).
// Sanity check per config: a few (query, head) pairs recomputed on the CPU in fp64 from the same
// bf16 values (rel err printed; > 2e-2 marks the row FAILED and the exit status 1).
// CSV (--csv): the decode bench's columns (impl ours-mma / ours-wgmma, batch, context, path,
// kept_frac, time_us, bytes, gbps, copy_gbps, lookup_us, sparse_us, dynamic_us, combine_us; gbps
// and copy_gbps 0, the
// *_us columns 0) plus tflops and rel_err; context = n, path = "prefill-causal".
//
// Usage: gpu-prefill-bench [--quick] [--reps N] [--csv FILE] [--lens n,n,...]
//        (default lens 16384,32768,65536,131072; --quick: 16384,32768 with 3 reps)
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "bench/gpu_bench_util.cuh"
#include "kernels/attention/prefill_attention.cuh"
#include "kernels/squeeze/cluster_scores.cuh"

namespace {

using squeeze::gpu::bf16;
namespace gpu = squeeze::gpu;
using squeeze::bench::MedianMicros;
using squeeze::bench::Mix;
using squeeze::bench::Unit;

constexpr int kHq = 32, kHkv = 8, kD = 128;

// x[e] = amp * Unit(hash(e, salt)) + offset * sin(0.37 * (e % d)), as bf16.
__global__ void Fill(bf16* x, size_t n, uint64_t salt, float amp, float offset) {
  for (size_t e = blockIdx.x * size_t{blockDim.x} + threadIdx.x; e < n;
       e += size_t{gridDim.x} * blockDim.x) {
    const float val = amp * Unit(Mix(e * 0x2545F4914F6CDD1Dull + salt)) +
                      offset * __sinf(0.37f * static_cast<float>(e % kD));
    x[e] = __float2bfloat16_rn(val);
  }
}

struct Row {
  int n;
  double us, tflops, rel_err;
};

std::vector<float> ToFloat(const std::vector<bf16>& v) {
  std::vector<float> f(v.size());
  for (size_t i = 0; i < v.size(); ++i) f[i] = __bfloat162float(v[i]);
  return f;
}

// Relative error of out rows (t, qh) for a few pairs against an fp64 CPU recomputation.
double CheckSample(int n, const bf16* dq, const bf16* dk, const bf16* dv, const bf16* dout) {
  const int pairs[][2] = {{0, 0}, {n / 2 + 7, 13}, {n - 1, 31}, {n - 64, 4}};
  double num = 0, den = 0;
  for (const auto& pr : pairs) {
    const int t = pr[0], qh = pr[1], kvh = qh / (kHq / kHkv), rows = t + 1;
    std::vector<bf16> q(kD), k(static_cast<size_t>(rows) * kD), v(k.size()), o(kD);
    const size_t qoff = (static_cast<size_t>(t) * kHq + qh) * kD;
    const size_t kvoff = static_cast<size_t>(kvh) * n * kD;
    CK(cudaMemcpy(q.data(), dq + qoff, kD * sizeof(bf16), cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(o.data(), dout + qoff, kD * sizeof(bf16), cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(k.data(), dk + kvoff, k.size() * sizeof(bf16), cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(v.data(), dv + kvoff, v.size() * sizeof(bf16), cudaMemcpyDeviceToHost));
    const std::vector<float> qf = ToFloat(q), kf = ToFloat(k), vf = ToFloat(v), of = ToFloat(o);
    std::vector<double> s(rows);
    double mx = -INFINITY;
    for (int r = 0; r < rows; ++r) {
      double dot = 0;
      for (int i = 0; i < kD; ++i) dot += static_cast<double>(qf[i]) * kf[size_t{1} * r * kD + i];
      s[r] = dot / std::sqrt(static_cast<double>(kD));
      mx = std::max(mx, s[r]);
    }
    std::vector<double> acc(kD, 0.0);
    double l = 0;
    for (int r = 0; r < rows; ++r) {
      const double p = std::exp(s[r] - mx);
      l += p;
      for (int i = 0; i < kD; ++i) acc[i] += p * vf[size_t{1} * r * kD + i];
    }
    for (int i = 0; i < kD; ++i) {
      const double ref = acc[i] / l;
      num += (of[i] - ref) * (of[i] - ref);
      den += ref * ref;
    }
  }
  return std::sqrt(num / den);
}

Row RunOne(int n, int reps, gpu::PrefillImpl impl, cudaStream_t stream) {
  const size_t q_elems = static_cast<size_t>(n) * kHq * kD;
  const size_t kv_elems = static_cast<size_t>(kHkv) * n * kD;
  bf16 *q, *k, *v, *out;
  float* lse;
  CK(cudaMalloc(&q, q_elems * sizeof(bf16)));
  CK(cudaMalloc(&k, kv_elems * sizeof(bf16)));
  CK(cudaMalloc(&v, kv_elems * sizeof(bf16)));
  CK(cudaMalloc(&out, q_elems * sizeof(bf16)));
  CK(cudaMalloc(&lse, static_cast<size_t>(n) * kHq * sizeof(float)));
  // |q| up to 2, |k| up to 1: logits of a few units, a peaked but not degenerate softmax.
  Fill<<<1024, 256, 0, stream>>>(q, q_elems, 1, 2.0f, 0.0f);
  Fill<<<1024, 256, 0, stream>>>(k, kv_elems, 2, 1.0f, 0.0f);
  Fill<<<1024, 256, 0, stream>>>(v, kv_elems, 3, 1.0f, 0.5f);
  CK(cudaGetLastError());

  gpu::PrefillAttentionParams p;
  p.num_tokens = n;
  p.num_q_heads = kHq;
  p.num_kv_heads = kHkv;
  p.head_dim = kD;
  p.scale = 1.0f / std::sqrt(static_cast<float>(kD));
  p.q = q;
  p.kv.k = k;
  p.kv.v = v;
  p.kv.head_stride = static_cast<int64_t>(n) * kD;
  p.kv.len = n;  // past = 0
  p.out = out;
  p.out_bf16 = true;
  p.lse = lse;
  p.impl = impl;

  Row r;
  r.n = n;
  r.us = MedianMicros(stream, 2, reps, [&] { CK(gpu::LaunchPrefillAttention(p, stream)); });
  const double flops = 4.0 * static_cast<double>(n) * n / 2.0 * kD * kHq;
  r.tflops = flops / (r.us * 1e-6) / 1e12;
  r.rel_err = CheckSample(n, q, k, v, out);
  CK(cudaFree(q));
  CK(cudaFree(k));
  CK(cudaFree(v));
  CK(cudaFree(out));
  CK(cudaFree(lse));
  return r;
}

// The selection of a squeezed multi-token step (kernels/squeeze/cluster_scores.cuh) on the
// Llama-3-8B shape against a 128K context with 5% centroids: n input tokens, G = 4, Hkv = 8,
// 6,554 clusters per head, both passes. FLOPs 2 passes x 2 * (n G) * C * d per head; one exp2
// per (row, cluster) per pass. Returns the median time (µs) and fills `scores` (the first impl's,
// for the comparison of the second).
double ClusterScoresOne(int n, int reps, gpu::ClusterScoresImpl impl, cudaStream_t stream,
                        std::vector<float>* scores) {
  constexpr int kG = kHq / kHkv, kC = 6554;
  const size_t q_elems = static_cast<size_t>(n) * kHq * kD;
  const size_t c_elems = static_cast<size_t>(kHkv) * kC * kD;
  bf16 *q, *cent;
  int32_t* sizes;
  float *stats, *out;
  gpu::SqueezeHeadDesc* dev_heads;
  CK(cudaMalloc(&q, q_elems * sizeof(bf16)));
  CK(cudaMalloc(&cent, c_elems * sizeof(bf16)));
  CK(cudaMalloc(&sizes, sizeof(int32_t) * kHkv * kC));
  CK(cudaMalloc(&stats, gpu::ClusterScoresWorkspaceBytes(kHkv, n, kG)));
  CK(cudaMalloc(&out, sizeof(float) * kHkv * kC));
  CK(cudaMalloc(&dev_heads, sizeof(gpu::SqueezeHeadDesc) * kHkv));
  // Centroids: unit-ish directions with a shared offset (the logits of a few units).
  Fill<<<1024, 256, 0, stream>>>(q, q_elems, 11, 2.0f, 0.0f);
  Fill<<<1024, 256, 0, stream>>>(cent, c_elems, 12, 1.0f, 0.3f);
  std::vector<int32_t> host_sizes(static_cast<size_t>(kHkv) * kC);
  for (size_t i = 0; i < host_sizes.size(); ++i) host_sizes[i] = 1 + static_cast<int>(Mix(i) % 40);
  CK(cudaMemcpy(sizes, host_sizes.data(), host_sizes.size() * sizeof(int32_t),
                cudaMemcpyHostToDevice));
  std::vector<gpu::SqueezeHeadDesc> heads(kHkv);
  for (int h = 0; h < kHkv; ++h) {
    heads[h].centroids = cent + static_cast<size_t>(h) * kC * kD;
    heads[h].sizes = sizes + static_cast<size_t>(h) * kC;
    heads[h].num_clusters = kC;
  }
  CK(cudaMemcpy(dev_heads, heads.data(), sizeof(gpu::SqueezeHeadDesc) * kHkv,
                cudaMemcpyHostToDevice));
  gpu::ClusterScoresParams p;
  p.num_heads = kHkv;
  p.num_tokens = n;
  p.group = kG;
  p.head_dim = kD;
  p.scale = 1.0f / std::sqrt(static_cast<float>(kD));
  p.q = q;
  p.q_token_stride = static_cast<int64_t>(kHq) * kD;
  p.heads = dev_heads;
  p.max_clusters = kC;
  p.row_stats = stats;
  p.scores = out;
  p.score_stride = kC;
  p.impl = impl;
  const double us = MedianMicros(stream, 2, reps, [&] { CK(gpu::LaunchClusterScores(p, stream)); });
  scores->resize(static_cast<size_t>(kHkv) * kC);
  CK(cudaMemcpy(scores->data(), out, scores->size() * sizeof(float), cudaMemcpyDeviceToHost));
  for (void* ptr :
       {static_cast<void*>(q), static_cast<void*>(cent), static_cast<void*>(sizes),
        static_cast<void*>(stats), static_cast<void*>(out), static_cast<void*>(dev_heads)}) {
    CK(cudaFree(ptr));
  }
  return us;
}

bool ParseLens(const std::string& text, std::vector<int>* out) {
  size_t at = 0;
  while (at < text.size()) {
    size_t end = text.find(',', at);
    if (end == std::string::npos) end = text.size();
    const int n = std::atoi(text.substr(at, end - at).c_str());
    if (n < 64) return false;
    out->push_back(n);
    at = end + 1;
  }
  return !out->empty();
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  int reps = 10;
  std::string csv_path;
  std::vector<int> lens;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      quick = true;
    } else if (a == "--reps" && i + 1 < argc) {
      reps = std::max(3, std::atoi(argv[++i]));
    } else if (a == "--csv" && i + 1 < argc) {
      csv_path = argv[++i];
    } else if (a == "--lens" && i + 1 < argc && ParseLens(argv[i + 1], &lens)) {
      ++i;
    } else {
      std::fprintf(stderr, "usage: %s [--quick] [--reps N] [--csv FILE] [--lens n,...]\n", argv[0]);
      return 2;
    }
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "gpu-prefill-bench: no CUDA device\n");
    return 77;
  }
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  if (lens.empty()) {
    lens = quick ? std::vector<int>{16384, 32768} : std::vector<int>{16384, 32768, 65536, 131072};
  }
  if (quick) reps = 3;
  cudaStream_t stream;
  CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

  FILE* csv = csv_path.empty() ? nullptr : std::fopen(csv_path.c_str(), "w");
  if (csv != nullptr) {
    std::fprintf(csv,
                 "impl,batch,context,path,kept_frac,time_us,bytes,gbps,copy_gbps,lookup_us,"
                 "sparse_us,dynamic_us,combine_us,tflops,rel_err\n");
  }
  // Both kernels where the device runs the wgmma one (sm_90), each in the same process: the
  // ratio column is the mma.sync kernel's time over this row's.
  std::vector<std::pair<gpu::PrefillImpl, const char*>> impls = {
      {gpu::PrefillImpl::kMmaSync, "mma.sync"}};
  if (gpu::PrefillWgmmaSupported(kD)) {
    impls.push_back({gpu::PrefillImpl::kWgmmaCpAsync, "wgmma-cpasync"});
    impls.push_back({gpu::PrefillImpl::kWgmma, "wgmma"});
  }
  std::printf("%-8s %-13s %12s %9s %9s %9s\n", "n", "kernel", "time_us", "TFLOP/s", "vs_mma",
              "rel_err");
  bool ok = true;
  for (const int n : lens) {
    double mma_us = 0.0;
    for (const auto& [impl, name] : impls) {
      const Row r = RunOne(n, reps, impl, stream);
      if (impl == gpu::PrefillImpl::kMmaSync) mma_us = r.us;
      const bool row_ok = r.rel_err <= 2e-2;
      ok = ok && row_ok;
      std::printf("%-8d %-13s %12.1f %9.1f %9.2f %9.2e%s\n", r.n, name, r.us, r.tflops,
                  mma_us / r.us, r.rel_err, row_ok ? "" : "  FAILED");
      std::fflush(stdout);
      if (csv != nullptr) {
        const double bytes = 2.0 * (2.0 * n * kHq * kD + 2.0 * n * kHkv * kD);  // q,out + K,V
        std::fprintf(csv, "%s,1,%d,prefill-causal,1.0,%.2f,%.0f,0,0,0,0,0,0,%.2f,%.3e\n",
                     impl == gpu::PrefillImpl::kWgmma          ? "ours-wgmma"
                     : impl == gpu::PrefillImpl::kWgmmaCpAsync ? "ours-wgmma-cpasync"
                                                               : "ours-mma",
                     r.n, r.us, bytes, r.tflops, r.rel_err);
      }
    }
  }
  if (csv != nullptr) std::fclose(csv);
  std::printf(
      "(Hq=%d Hkv=%d d=%d bf16, past=0, causal FLOPs 4*n^2/2*d*Hq; rel_err: 4 (query, "
      "head) rows vs fp64 CPU)\n",
      kHq, kHkv, kD);

  // The squeezed step's selection: the cluster scores of n input tokens against 6,554 clusters
  // per KV head, one layer.
  std::vector<std::pair<gpu::ClusterScoresImpl, const char*>> score_impls = {
      {gpu::ClusterScoresImpl::kMmaSync, "mma.sync"}};
  if (gpu::ClusterScoresWgmmaSupported(kD)) {
    score_impls.push_back({gpu::ClusterScoresImpl::kWgmma, "wgmma"});
  }
  std::printf("\ncluster scores (Hkv=%d G=%d d=%d, 6554 clusters per head, both passes)\n", kHkv,
              kHq / kHkv, kD);
  std::printf("%-8s %-10s %10s %9s %11s %9s %12s\n", "n", "kernel", "time_us", "TFLOP/s", "Gexp2/s",
              "vs_mma", "max_rel_diff");
  for (const int n : {1024, 4096}) {
    std::vector<float> first, scores;
    double mma_us = 0.0;
    for (const auto& [impl, name] : score_impls) {
      const double us = ClusterScoresOne(n, reps, impl, stream, &scores);
      if (impl == gpu::ClusterScoresImpl::kMmaSync) {
        mma_us = us;
        first = scores;
      }
      double worst = 0.0, top = 0.0;
      for (size_t i = 0; i < scores.size(); ++i) top = std::max(top, std::fabs(double{first[i]}));
      for (size_t i = 0; i < scores.size(); ++i) {
        const double diff = std::fabs(double{scores[i]} - first[i]);
        worst = std::isfinite(scores[i]) ? std::max(worst, diff / top) : INFINITY;
      }
      const bool row_ok = worst <= 1e-4;
      ok = ok && row_ok;
      const double rows = 4.0 * n, clusters = 6554.0 * kHkv;
      std::printf("%-8d %-10s %10.1f %9.1f %11.1f %9.2f %12.2e%s\n", n, name, us,
                  2.0 * 2.0 * rows * clusters * kD / (us * 1e-6) / 1e12,
                  2.0 * rows * clusters / (us * 1e-6) / 1e9, mma_us / us, worst,
                  row_ok ? "" : "  FAILED");
    }
  }
  std::printf(
      "(per layer; FLOPs 2 passes x 2 (n G) C d per KV head; exp2: one per (row, cluster) per "
      "pass; max_rel_diff: max |score - mma.sync's| / max score)\n");
  CK(cudaStreamDestroy(stream));
  return ok ? 0 : 1;
}
