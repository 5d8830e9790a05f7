// Helpers shared by the CUDA benchmarks: a checked CUDA call that exits the benchmark, a
// stateless hash (splitmix64 finaliser) that fills device buffers deterministically, and the
// median time of a launch between two events.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(expr)                                                         \
  do {                                                                   \
    const cudaError_t err_ = (expr);                                     \
    if (err_ != cudaSuccess) {                                           \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, \
                   cudaGetErrorString(err_));                            \
      std::exit(1);                                                      \
    }                                                                    \
  } while (0)

namespace squeeze::bench {

__host__ __device__ inline uint64_t Mix(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
__host__ __device__ inline float Unit(uint64_t h) {  // [-1, 1)
  return static_cast<float>(h >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

// Median over `reps` runs of launch() on `stream`, in µs between two events around it, after
// `warmup` untimed runs; before(), untimed, ahead of every run (e.g. an L2 flush).
template <class Launch, class Before>
double MedianMicros(cudaStream_t stream, int warmup, int reps, Launch&& launch, Before&& before) {
  std::vector<cudaEvent_t> ev(2 * reps);
  for (cudaEvent_t& e : ev) CK(cudaEventCreate(&e));
  for (int i = 0; i < warmup + reps; ++i) {
    before();
    if (i >= warmup) CK(cudaEventRecord(ev[2 * (i - warmup)], stream));
    launch();
    if (i >= warmup) CK(cudaEventRecord(ev[2 * (i - warmup) + 1], stream));
  }
  CK(cudaStreamSynchronize(stream));
  std::vector<double> t(reps);
  for (int i = 0; i < reps; ++i) {
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, ev[2 * i], ev[2 * i + 1]));
    t[i] = ms * 1e3;
  }
  for (cudaEvent_t& e : ev) CK(cudaEventDestroy(e));
  std::sort(t.begin(), t.end());
  return t[reps / 2];
}
template <class Launch>
double MedianMicros(cudaStream_t stream, int warmup, int reps, Launch&& launch) {
  return MedianMicros(stream, warmup, reps, launch, [] {});
}

}  // namespace squeeze::bench
