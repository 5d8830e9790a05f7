// One GPU as the CUDA backend's parts use it: the stream every op is enqueued on, the cuBLAS
// handle, device memory (a pool of reusable blocks for per-step buffers, permanent blocks for
// weights, named scratch areas grown on demand), a pinned arena that stages small host-to-device
// copies without synchronising the stream, device-to-host copies delivered at the next sync, and
// the first fault. Driven by one thread (the engine thread); only CopyToHostUnordered and the
// pool may be used from another.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/backend/cuda/cuda_status.h"

namespace squeeze {

class PooledDeviceBlocks;

// Scratch areas of the backend's parts, grown on demand and kept (one per concurrent use within
// an op; an op that grows an area waits for the stream first, so pointers taken earlier in the
// same op stay valid only for other slots).
enum ScratchSlot : int {
  kXBf16 = 0,        // MatMul input rounded to bf16
  kQBf16,            // prefill queries in bf16
  kKvDesc,           // DecodeKv array of a decode launch
  kDecodeWs,         // decode workspace
  kFixedLse,         // fixed-part lse
  kDynOut,           // dynamic-part output
  kDynLse,           // dynamic-part lse
  kGatherRows,       // kept rows of a host selection
  kGatherBegin,      // per-head offsets into kGatherRows
  kGatheredK,        // compact kept K
  kGatheredV,        // compact kept V
  kStaging,          // fp32 staging of uploads
  kSqueezeHeads,     // SqueezeHeadDesc array + dynamic DecodeKv + tau of a squeezed decode call
  kHeadLen,          // per-KV-head visible rows of a non-causal prefill over a fixed context
  kRowStats,         // squeezed prefill: per-row max and 1 / denominator
  kClusterScores,    // squeezed prefill: mean score per cluster [Hkv][cluster_stride]
  kRowIndex,         // squeezed prefill: storage row of every kept key [Hkv][S]
  kCoarseDesc,       // hierarchical: coarse SqueezeHeadDesc array + coarse tau
  kCandidates,       // hierarchical: candidate fine clusters [B * Hkv][max fine clusters]
  kCandidateCounts,  // hierarchical: candidates per (sequence, KV head)
  kCascadeDesc,      // cascade: descriptors, taus, gathered queries and outputs of a group
  kCascadeDynWs,     // cascade: the group's dynamic-part partials
  kCascadePartials,  // cascade: the shared-context partials and chunk table
  kCascadeKeys,      // cascade: key lists, masks, counts and kept rows of a squeezed group
  kAppendTargets,    // the KV append targets of a step's sequences
  kGemvWs,           // decode products on tensor cores: bf16 input and split-K partials
  kStepBudgetWs,     // per-step budget: the radix select's histograms and state per sequence
  kNumSlots
};

class CudaDevice {
 public:
  // Takes device `device` (cudaSetDevice on the calling thread and on every op's thread).
  static absl::StatusOr<std::unique_ptr<CudaDevice>> Create(int device);
  ~CudaDevice();
  CudaDevice(const CudaDevice&) = delete;
  CudaDevice& operator=(const CudaDevice&) = delete;

  int id() const { return device_; }
  const cudaDeviceProp& props() const { return props_; }
  cudaStream_t stream() const { return stream_; }
  cublasHandle_t blas() const { return blas_; }
  // "NVIDIA H200, 132 SMs, 139.8 GiB (137.1 free), compute capability 9.0".
  std::string Describe() const;
  absl::Status MemoryInfo(size_t* free_bytes, size_t* total_bytes) const;

  // ---- faults: the first one is kept; every later op becomes a no-op.
  bool ok() const { return fault_.ok(); }
  const absl::Status& fault() const { return fault_.status(); }
  bool Check(cudaError_t err, const char* what) { return fault_.Check(err, what); }
  bool CheckBlas(int status, const char* what) { return fault_.CheckBlas(status, what); }
  void SetFault(absl::Status why) { fault_.Set(std::move(why)); }

  // ---- memory.
  // A pooled block (Backend::Allocate): returns to the pool when destroyed.
  absl::StatusOr<std::unique_ptr<Buffer>> Allocate(size_t bytes);
  // Device memory for the device's lifetime (weights); RESOURCE_EXHAUSTED with the sizes.
  absl::StatusOr<void*> AllocatePermanent(size_t bytes, const char* what);
  // The named scratch area, grown to at least `bytes` (nullptr, fault recorded, when it cannot).
  void* Scratch(int slot, size_t bytes);
  // Returns the pool's cached blocks to the driver.
  void TrimPool();

  // ---- copies.
  void CopyFromHost(void* dst, const void* host_src, size_t bytes);         // staged when small
  void CopyToHost(void* host_dst, const void* src, size_t bytes);           // waits for the stream
  void CopyToHostUnordered(void* host_dst, const void* src, size_t bytes);  // any thread
  void Copy2D(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t row_bytes,
              size_t rows);
  // Device -> pinned arena now; the bytes reach host_dst at the next Synchronize (or idle point).
  void CopyToHostAtSync(void* host_dst, const void* src, size_t bytes);
  // Consecutive rows of `row_bytes` at src in one transfer: row i reaches host_dsts[i] (none
  // where it is null) at the next Synchronize.
  void CopyRowsToHostAtSync(std::span<void* const> host_dsts, const void* src, size_t row_bytes);
  // `bytes` of the pinned arena for one transfer (waits for the stream when it is full).
  char* StagePinned(size_t bytes);

  // ---- synchronisation. Work enqueued before a sync has finished when it returns; the sync
  // epoch counts them (resident copies last used in an earlier epoch may be freed).
  absl::Status Synchronize();
  // The stream was synchronised by someone else (the sampler): start a new epoch, deliver the
  // pending copies.
  void MarkIdle();
  uint64_t epoch() const { return epoch_; }

 private:
  CudaDevice() = default;
  // Delivers the pending device-to-host copies out of the pinned arena (the stream is idle) and
  // empties the arena.
  void FinishPendingCopies();

  int device_ = 0;
  cudaDeviceProp props_{};
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  std::shared_ptr<PooledDeviceBlocks> pool_;
  std::vector<void*> permanent_;
  std::vector<std::pair<void*, size_t>> scratch_{kNumSlots, {nullptr, 0}};
  // Pinned host arena for small host-to-device copies (descriptors, selections, token ids): a
  // copy from pageable memory would synchronise the stream first and expose every kernel
  // launch's latency. Filled linearly, reset once the stream is idle.
  char* pinned_ = nullptr;
  size_t pinned_size_ = 0, pinned_used_ = 0;
  // Device-to-host copies into the pinned arena, finished by the next stream sync: (pinned
  // source, host destination, bytes).
  std::vector<std::tuple<const char*, void*, size_t>> pending_to_host_;
  uint64_t epoch_ = 1;
  CudaFault fault_;
};

}  // namespace squeeze
