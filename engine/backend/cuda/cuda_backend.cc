#include "engine/backend/cuda/cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/backend/cuda/cuda_kmeans.h"
#include "engine/backend/cuda/cuda_sampling.h"
#include "engine/backend/kv_cache.h"
#include "engine/common/status_macros.h"
#include "kernels/attention/decode_attention.cuh"
#include "kernels/attention/kv_gather.cuh"
#include "kernels/attention/merge_attention.cuh"
#include "kernels/attention/prefill_attention.cuh"
#include "kernels/ops/convert.cuh"
#include "kernels/ops/gemv.cuh"
#include "kernels/ops/random_fill.cuh"
#include "kernels/ops/rmsnorm_silu.cuh"
#include "kernels/ops/rope_append_kv.cuh"
#include "kernels/ops/rows.cuh"
#include "kernels/squeeze/cluster_scores.cuh"
#include "kernels/squeeze/expand_selection.cuh"
#include "kernels/squeeze/squeezed_decode.cuh"

namespace squeeze {
namespace {

using gpu::bf16;

constexpr size_t kMiB = size_t{1} << 20;
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
// Host fp32 data reaches the device through a staging buffer of this size and is converted to
// bf16 there (UploadMatrix, ResidentContextKv).
constexpr size_t kStagingFloats = 16 * kMiB;

// Scratch areas, grown on demand and kept (one per concurrent use within an op).
enum ScratchSlot : int {
  kXBf16 = 0,        // MatMul input rounded to bf16
  kQBf16,            // prefill queries in bf16
  kKvDesc,           // DecodeKv array of a decode launch
  kDecodeWs,         // decode workspace
  kFixedLse,         // fixed-part lse
  kDynOut,           // dynamic-part output
  kDynLse,           // dynamic-part lse
  kGatherRows,       // kept rows of a selection
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
  kNumSlots
};

absl::Status CudaError(cudaError_t err, const char* what) {
  return absl::InternalError(absl::StrCat("cuda: ", what, ": ", cudaGetErrorName(err), " (",
                                          cudaGetErrorString(err), ")"));
}

// A device block from the pool; returns to it when destroyed.
class PooledDeviceBlocks;
class DeviceBuffer final : public Buffer {
 public:
  DeviceBuffer(void* data, size_t bytes, size_t capacity, std::shared_ptr<PooledDeviceBlocks> pool)
      : Buffer(data, bytes), capacity_(capacity), pool_(std::move(pool)) {}
  ~DeviceBuffer() override;

 private:
  size_t capacity_;
  std::shared_ptr<PooledDeviceBlocks> pool_;
};

// Keeps freed device blocks up to kMaxCachedBytes each (per-step activations, small KV), so a
// decode step does not cudaMalloc. Large blocks (contexts, long sequences) go back to the
// driver at once.
class PooledDeviceBlocks {
 public:
  ~PooledDeviceBlocks() { Trim(); }

  absl::StatusOr<void*> Take(size_t bytes, size_t* capacity) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first <= 2 * bytes + kMiB) {
        *capacity = it->first;
        void* block = it->second;
        free_.erase(it);
        return block;
      }
    }
    *capacity = std::max<size_t>(256, (bytes + 255) / 256 * 256);
    void* block = nullptr;
    cudaError_t err = cudaMalloc(&block, *capacity);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // clear the (non-sticky) allocation error
      Trim();
      err = cudaMalloc(&block, *capacity);
    }
    if (err != cudaSuccess) {
      cudaGetLastError();
      size_t free_bytes = 0, total = 0;
      cudaMemGetInfo(&free_bytes, &total);
      return absl::ResourceExhaustedError(absl::StrFormat(
          "cuda: cannot allocate %.2f GiB of device memory (%.2f GiB free of %.2f GiB)",
          *capacity / kGiB, free_bytes / kGiB, total / kGiB));
    }
    return block;
  }

  void Give(void* block, size_t capacity) {
    if (capacity > kMaxCachedBytes) {
      cudaFree(block);
      return;
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (free_.size() >= kMaxCached) {
      cudaFree(free_.begin()->second);
      free_.erase(free_.begin());
    }
    free_.emplace(capacity, block);
  }

  void Trim() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [capacity, block] : free_) cudaFree(block);
    free_.clear();
  }

 private:
  static constexpr size_t kMaxCachedBytes = 512 * kMiB;
  static constexpr size_t kMaxCached = 32;
  std::mutex mu_;
  std::multimap<size_t, void*> free_;
};

DeviceBuffer::~DeviceBuffer() { pool_->Give(data(), capacity_); }

// A context's Squeezed Attention tables on the device, kept in ClusterTables::resident: fine
// centroids (bf16), sizes and storage-row offsets of every (layer, KV head), concatenated.
struct DeviceSqueezeLevel {
  std::unique_ptr<Buffer> centroids, sizes, offsets;
  std::vector<size_t> centroid_at, table_at;  // [L * Hkv]: first centroid, first size entry
  int max_clusters = 0;
};
// The fine level (offsets: storage rows) and, for a hierarchical index, the coarse level
// (offsets: fine clusters).
struct DeviceSqueezeIndex {
  const void* owner = nullptr;
  DeviceSqueezeLevel fine, coarse;
};

// A registered context's K/V on the device, kept in ContextKV::resident. The backend may evict
// it (k and v released) when another context needs the memory; the next use uploads it again.
struct DeviceContextKv {
  const void* owner = nullptr;  // the backend that made it
  std::unique_ptr<Buffer> k, v;
  size_t bytes = 0;
  uint64_t last_epoch = 0;  // CudaBackend's sync epoch of the last use
};

}  // namespace

struct CudaBackend::Impl {
  int device = 0;
  cudaDeviceProp props{};
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  std::shared_ptr<PooledDeviceBlocks> pool = std::make_shared<PooledDeviceBlocks>();
  std::vector<void*> permanent;  // weights
  std::vector<std::pair<void*, size_t>> scratch{kNumSlots, {nullptr, 0}};
  std::map<std::pair<int, int>, int> concurrent_ctas;  // (d, G) -> CTAs
  // Resident context copies, for eviction (least recently used first), and the sync epoch:
  // work queued before the last Synchronize() has finished, so a copy last used in an earlier
  // epoch can be freed.
  std::vector<std::weak_ptr<DeviceContextKv>> residents;
  uint64_t epoch = 1;
  // Pinned host arena for small host-to-device copies (descriptors, selections, token ids):
  // a copy from pageable memory would synchronise the stream first and expose every kernel
  // launch's latency. Filled linearly, reset once the stream is idle.
  char* pinned = nullptr;
  size_t pinned_size = 0, pinned_used = 0;
  // Host staging of per-call descriptors and selections.
  std::vector<gpu::DecodeKv> kv_desc;
  std::vector<int32_t> rows, head_begin, counts;
  std::vector<gpu::SqueezeHeadDesc> head_desc;
  // Device-to-host copies into the pinned arena, finished by the next stream sync: (pinned
  // source, host destination, bytes).
  std::vector<std::tuple<const char*, void*, size_t>> pending_to_host;
  // Squeezed decode plans and their workspaces, by shape.
  struct SqueezedPlan {
    gpu::SqueezedDecodePlan plan;
    std::unique_ptr<Buffer> workspace;
  };
  std::map<std::tuple<int, int, int, int, int, int, int64_t, int>, SqueezedPlan> squeezed_plans;

  ~Impl() {
    if (stream != nullptr) cudaStreamSynchronize(stream);
    for (auto& [p, bytes] : scratch) {
      if (p != nullptr) cudaFree(p);
    }
    for (void* p : permanent) cudaFree(p);
    if (pinned != nullptr) cudaFreeHost(pinned);
    if (blas != nullptr) cublasDestroy(blas);
    if (stream != nullptr) cudaStreamDestroy(stream);
  }
};

bool CudaDeviceAvailable() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return n > 0;
}

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(int device) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    cudaGetLastError();
    return absl::FailedPreconditionError(
        absl::StrCat("cuda: no CUDA device is visible (",
                     err != cudaSuccess ? cudaGetErrorString(err) : "0 devices", ")"));
  }
  if (device < 0 || device >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda: device ", device, " does not exist (", count, " visible)"));
  }
  auto impl = std::make_unique<Impl>();
  impl->device = device;
  if ((err = cudaSetDevice(device)) != cudaSuccess) return CudaError(err, "cudaSetDevice");
  if ((err = cudaGetDeviceProperties(&impl->props, device)) != cudaSuccess) {
    return CudaError(err, "cudaGetDeviceProperties");
  }
  if (impl->props.major < 9) {
    return absl::FailedPreconditionError(
        absl::StrCat("cuda: ", impl->props.name, " is compute capability ", impl->props.major, ".",
                     impl->props.minor, "; the kernels are built for Hopper (sm_90a)"));
  }
  if ((err = cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking)) != cudaSuccess) {
    return CudaError(err, "cudaStreamCreate");
  }
  if (cublasCreate(&impl->blas) != CUBLAS_STATUS_SUCCESS) {
    return absl::InternalError("cuda: cublasCreate failed");
  }
  cublasSetStream(impl->blas, impl->stream);
  impl->pinned_size = 16 * kMiB;
  void* pinned = nullptr;
  if ((err = cudaMallocHost(&pinned, impl->pinned_size)) != cudaSuccess) {
    return CudaError(err, "cudaMallocHost");
  }
  impl->pinned = static_cast<char*>(pinned);
  return std::unique_ptr<CudaBackend>(new CudaBackend(std::move(impl)));
}

CudaBackend::CudaBackend(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)), kmeans_(std::make_unique<CudaKMeans>(impl_->device)) {}
CudaBackend::~CudaBackend() = default;

absl::Status CudaBackend::Supports(int head_dim, int num_heads, int num_kv_heads) {
  const int group = num_kv_heads > 0 ? num_heads / num_kv_heads : 0;
  if (head_dim != 64 && head_dim != 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("the cuda backend supports head_dim 64 and 128, the model has ", head_dim,
                     " (use --device=cpu)"));
  }
  if (group != 1 && group != 2 && group != 4 && group != 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the cuda backend supports 1, 2, 4 or 8 query heads per KV head, the model has ", group,
        " (use --device=cpu)"));
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::MemoryInfo(size_t* free_bytes, size_t* total_bytes) const {
  const cudaError_t err = cudaMemGetInfo(free_bytes, total_bytes);
  return err == cudaSuccess ? absl::OkStatus() : CudaError(err, "cudaMemGetInfo");
}

std::optional<Backend::DeviceMemory> CudaBackend::device_memory() const {
  DeviceMemory m;
  if (!MemoryInfo(&m.free_bytes, &m.total_bytes).ok()) return std::nullopt;
  m.headroom_bytes = ResidentHeadroom(m.total_bytes);
  return m;
}

std::string CudaBackend::Describe() const {
  size_t free_bytes = 0, total = 0;
  MemoryInfo(&free_bytes, &total).IgnoreError();
  return absl::StrFormat("%s, %d SMs, %.1f GiB (%.1f free), compute capability %d.%d",
                         impl_->props.name, impl_->props.multiProcessorCount, total / kGiB,
                         free_bytes / kGiB, impl_->props.major, impl_->props.minor);
}

void CudaBackend::Check(int cuda_error, const char* what) {
  const auto err = static_cast<cudaError_t>(cuda_error);
  if (err == cudaSuccess || !fault_.ok()) return;
  fault_ = CudaError(err, what);
}

void CudaBackend::CheckBlas(int blas_status, const char* what) {
  if (blas_status == CUBLAS_STATUS_SUCCESS || !fault_.ok()) return;
  fault_ = absl::InternalError(absl::StrCat("cuda: ", what, ": cuBLAS status ", blas_status));
}

absl::StatusOr<std::unique_ptr<Buffer>> CudaBackend::Allocate(size_t bytes) {
  if (!fault_.ok()) return fault_;
  cudaSetDevice(impl_->device);  // the engine thread is not the thread that created us
  size_t capacity = 0;
  auto block = impl_->pool->Take(std::max<size_t>(bytes, 1), &capacity);
  if (!block.ok()) return block.status();
  return std::unique_ptr<Buffer>(
      std::make_unique<DeviceBuffer>(*block, bytes, capacity, impl_->pool));
}

absl::StatusOr<void*> CudaBackend::AllocatePermanent(size_t bytes, const char* what) {
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, std::max<size_t>(bytes, 256));
  if (err != cudaSuccess) {
    cudaGetLastError();
    size_t free_bytes = 0, total = 0;
    cudaMemGetInfo(&free_bytes, &total);
    return absl::ResourceExhaustedError(
        absl::StrFormat("cuda: cannot allocate %.2f GiB for %s (%.2f GiB free of %.2f GiB)",
                        bytes / kGiB, what, free_bytes / kGiB, total / kGiB));
  }
  impl_->permanent.push_back(p);
  return p;
}

void* CudaBackend::Scratch(int slot, size_t bytes) {
  auto& [p, size] = impl_->scratch[slot];
  if (bytes <= size && p != nullptr) return p;
  if (p != nullptr) {
    // Queued ops may still read the old area.
    Check(cudaStreamSynchronize(impl_->stream), "scratch resize");
    cudaFree(p);
    p = nullptr;
    size = 0;
  }
  const size_t grown = std::max<size_t>(bytes + bytes / 4, 4096);
  if (cudaMalloc(&p, grown) != cudaSuccess) {
    cudaGetLastError();
    impl_->pool->Trim();
    Check(cudaMalloc(&p, grown), "scratch allocation");
    if (p == nullptr) return nullptr;
  }
  size = grown;
  return p;
}

char* CudaBackend::StagePinned(size_t bytes) {
  Impl& im = *impl_;
  if (im.pinned_used + bytes > im.pinned_size) {
    Check(cudaStreamSynchronize(im.stream), "pinned staging");  // earlier copies are done
    FinishPendingCopies();
  }
  char* staged = im.pinned + im.pinned_used;
  im.pinned_used += (bytes + 255) / 256 * 256;
  return staged;
}

void CudaBackend::CopyFromHost(void* dst, const void* host_src, size_t bytes) {
  if (!fault_.ok() || bytes == 0) return;
  Impl& im = *impl_;
  if (bytes > im.pinned_size) {  // large: pageable copy (synchronises the stream)
    Check(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, im.stream),
          "copy to device");
    return;
  }
  char* staged = StagePinned(bytes);
  std::memcpy(staged, host_src, bytes);
  Check(cudaMemcpyAsync(dst, staged, bytes, cudaMemcpyHostToDevice, im.stream), "copy to device");
}

void CudaBackend::CopyToHost(void* host_dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  if (fault_.ok()) {
    Check(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, impl_->stream),
          "copy to host");
    Check(cudaStreamSynchronize(impl_->stream), "copy to host");
    FinishPendingCopies();  // the stream is idle
  }
  if (!fault_.ok()) std::memset(host_dst, 0, bytes);  // never hand out stale memory
}

void CudaBackend::CopyToHostUnordered(void* host_dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  cudaSetDevice(impl_->device);
  if (cudaMemcpy(host_dst, src, bytes, cudaMemcpyDeviceToHost) != cudaSuccess) {
    cudaGetLastError();
    std::memset(host_dst, 0, bytes);  // the caller's next backend call reports the fault
  }
}

KMeansSolver* CudaBackend::kmeans_solver() { return kmeans_.get(); }

void CudaBackend::Copy2D(void* dst, size_t dst_pitch, const void* src, size_t src_pitch,
                         size_t row_bytes, size_t rows) {
  if (!fault_.ok() || rows == 0 || row_bytes == 0) return;
  Check(cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, row_bytes, rows, cudaMemcpyDeviceToDevice,
                          impl_->stream),
        "device copy");
}

void CudaBackend::FinishPendingCopies() {
  for (const auto& [src, dst, bytes] : impl_->pending_to_host) {
    if (fault_.ok()) {
      std::memcpy(dst, src, bytes);
    } else {
      std::memset(dst, 0, bytes);
    }
  }
  impl_->pending_to_host.clear();
  impl_->pinned_used = 0;
}

absl::Status CudaBackend::Synchronize() {
  if (fault_.ok()) Check(cudaStreamSynchronize(impl_->stream), "synchronize");
  ++impl_->epoch;
  FinishPendingCopies();
  if (fault_.ok()) Check(cudaGetLastError(), "asynchronous fault");
  return fault_;
}

// ---- weights ------------------------------------------------------------------------------------

absl::StatusOr<Matrix> CudaBackend::UploadMatrix(std::span<const float> host, int rows, int cols) {
  const size_t count = static_cast<size_t>(rows) * cols;
  if (host.size() != count) {
    return absl::InvalidArgumentError(absl::StrCat("UploadMatrix: ", host.size(), " floats for a [",
                                                   rows, ", ", cols, "] matrix"));
  }
  auto dst = AllocatePermanent(count * sizeof(bf16), "weights");
  if (!dst.ok()) return dst.status();
  bf16* out = static_cast<bf16*>(*dst);
  float* staging = static_cast<float*>(Scratch(kStaging, kStagingFloats * sizeof(float)));
  for (size_t done = 0; done < count && fault_.ok(); done += kStagingFloats) {
    const size_t chunk = std::min(kStagingFloats, count - done);
    Check(cudaMemcpyAsync(staging, host.data() + done, chunk * sizeof(float),
                          cudaMemcpyHostToDevice, impl_->stream),
          "weight upload");
    Check(gpu::LaunchF32ToBf16(staging, out + done, chunk, impl_->stream), "weight convert");
  }
  RETURN_IF_ERROR(Synchronize());
  return Matrix{out, DType::kBF16, rows, cols};
}

absl::StatusOr<const float*> CudaBackend::UploadVector(std::span<const float> host) {
  auto dst = AllocatePermanent(host.size() * sizeof(float), "weights");
  if (!dst.ok()) return dst.status();
  Check(cudaMemcpy(*dst, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice),
        "vector upload");
  if (!fault_.ok()) return fault_;
  return static_cast<const float*>(*dst);
}

absl::StatusOr<Matrix> CudaBackend::RandomMatrix(int rows, int cols, uint64_t seed, float stddev) {
  const size_t count = static_cast<size_t>(rows) * cols;
  auto dst = AllocatePermanent(count * sizeof(bf16), "random weights");
  if (!dst.ok()) return dst.status();
  Check(gpu::LaunchFillRandomBf16(static_cast<bf16*>(*dst), count, seed, stddev, impl_->stream),
        "random fill");
  if (!fault_.ok()) return fault_;
  return Matrix{*dst, DType::kBF16, rows, cols};
}

absl::StatusOr<const float*> CudaBackend::RandomVector(int n, uint64_t seed, float mean,
                                                       float stddev) {
  auto dst = AllocatePermanent(static_cast<size_t>(n) * sizeof(float), "random weights");
  if (!dst.ok()) return dst.status();
  Check(gpu::LaunchFillRandomF32(static_cast<float*>(*dst), n, seed, mean, stddev, impl_->stream),
        "random fill");
  if (!fault_.ok()) return fault_;
  return static_cast<const float*>(*dst);
}

// ---- KV -----------------------------------------------------------------------------------------

void CudaBackend::ReleaseCachedMemory() { impl_->pool->Trim(); }

// The resident copy gathered on the device from the prefill's KV: storage row r of (layer, h)
// is token row ctx.token_of[(layer * Hkv + h) * S + r] of the source. About 10 ms at 128K
// tokens on the 8B shape, against seconds for the upload of the 34 GB fp32 host copy.
void CudaBackend::AdoptContextKv(const ContextKV& ctx, SequenceKV&& source) {
  if (!fault_.ok() || ctx.num_tokens <= 0 || source.backend() != this ||
      source.dtype() != DType::kBF16 || source.length() < ctx.num_tokens ||
      source.shape().num_layers != ctx.shape.num_layers ||
      source.shape().num_kv_heads != ctx.shape.num_kv_heads ||
      source.shape().head_dim != ctx.shape.head_dim || ctx.resident.value != nullptr) {
    return;
  }
  const int L = ctx.shape.num_layers, H = ctx.shape.num_kv_heads, d = ctx.shape.head_dim;
  const int S = ctx.num_tokens;
  auto copy = std::make_shared<DeviceContextKv>();
  copy->owner = this;
  const size_t count = ctx.k.size();
  copy->bytes = 2 * count * sizeof(bf16);
  EvictResidentContexts(copy->bytes);
  auto k = Allocate(count * sizeof(bf16));
  auto v = k.ok() ? Allocate(count * sizeof(bf16)) : k.status();
  auto rows = v.ok() ? Allocate(ctx.token_of.size() * sizeof(int32_t)) : v.status();
  auto begin = rows.ok() ? Allocate((H + 1) * sizeof(int32_t)) : rows.status();
  if (!begin.ok()) return;  // no room now: the first use uploads the host copy
  copy->k = *std::move(k);
  copy->v = *std::move(v);
  std::vector<int32_t> head_begin(H + 1);
  for (int h = 0; h <= H; ++h) head_begin[h] = h * S;
  CopyFromHost((*rows)->data(), ctx.token_of.data(), ctx.token_of.size() * sizeof(int32_t));
  CopyFromHost((*begin)->data(), head_begin.data(), head_begin.size() * sizeof(int32_t));
  const size_t src_head_stride =
      static_cast<size_t>(source.capacity()) * d;  // rows of a head are capacity apart
  for (int l = 0; l < L && fault_.ok(); ++l) {
    Check(gpu::LaunchGatherKvRows(
              static_cast<const bf16*>(source.key_data(l, 0, 0)),
              static_cast<const bf16*>(source.value_data(l, 0, 0)), src_head_stride,
              (*rows)->as<int32_t>() + static_cast<size_t>(l) * H * S, (*begin)->as<int32_t>(), H,
              S, d, copy->k->as<bf16>() + ctx.Offset(l, 0, 0),
              copy->v->as<bf16>() + ctx.Offset(l, 0, 0), static_cast<size_t>(S) * d, impl_->stream),
          "adopt context");
  }
  if (!Synchronize().ok()) return;  // the source is released by the caller after this
  copy->last_epoch = impl_->epoch;
  ctx.resident.value = copy;
  impl_->residents.push_back(copy);
}

size_t CudaBackend::ResidentHeadroom(size_t total_bytes) {
  return std::max<size_t>(size_t{2} << 30, total_bytes / 100 * 3);
}

// Frees resident context copies not used since the last Synchronize(), least recently used
// first, until `bytes` plus the headroom are free. Returns the number evicted.
int CudaBackend::EvictResidentContexts(size_t bytes) {
  auto& residents = impl_->residents;
  std::erase_if(residents, [](const std::weak_ptr<DeviceContextKv>& w) {
    const auto p = w.lock();
    return p == nullptr || p->k == nullptr;
  });
  size_t free_bytes = 0, total = 0;
  if (cudaMemGetInfo(&free_bytes, &total) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  const size_t want = bytes + ResidentHeadroom(total);
  if (free_bytes >= want) return 0;
  impl_->pool->Trim();  // cached blocks first
  cudaMemGetInfo(&free_bytes, &total);
  int evicted = 0;
  while (free_bytes < want) {
    std::shared_ptr<DeviceContextKv> oldest;
    for (const auto& w : residents) {
      auto p = w.lock();
      if (p != nullptr && p->k != nullptr && p->last_epoch < impl_->epoch &&
          (oldest == nullptr || p->last_epoch < oldest->last_epoch)) {
        oldest = std::move(p);
      }
    }
    if (oldest == nullptr) break;
    oldest->k.reset();
    oldest->v.reset();
    impl_->pool->Trim();  // the released blocks went to the pool's cache: back to the driver
    ++evicted;
    cudaMemGetInfo(&free_bytes, &total);
  }
  return evicted;
}

absl::StatusOr<ContextKvView> CudaBackend::ResidentContextKv(const ContextKV& ctx) {
  if (!fault_.ok()) return fault_;
  std::shared_ptr<DeviceContextKv> copy;
  if (ctx.resident.value != nullptr &&
      static_cast<const DeviceContextKv*>(ctx.resident.value.get())->owner == this) {
    copy = std::static_pointer_cast<DeviceContextKv>(ctx.resident.value);
    copy->last_epoch = impl_->epoch;
    if (copy->k != nullptr) return ContextKvView{copy->k->data(), copy->v->data()};
  } else {
    copy = std::make_shared<DeviceContextKv>();
    copy->owner = this;
  }
  // First use, or evicted since: upload (bf16), making room by evicting idle contexts.
  const size_t count = ctx.k.size();
  copy->bytes = 2 * count * sizeof(bf16);
  const int evicted = EvictResidentContexts(copy->bytes);
  auto k = Allocate(count * sizeof(bf16));
  auto v = k.ok() ? Allocate(count * sizeof(bf16)) : k.status();
  if (!k.ok() || !v.ok()) {
    size_t free_bytes = 0, total = 0;
    cudaMemGetInfo(&free_bytes, &total);
    cudaGetLastError();
    return absl::ResourceExhaustedError(absl::StrFormat(
        "cuda: the context's K/V needs %.2f GiB on the GPU (%d tokens); %.2f GiB of %.2f GiB "
        "are free after evicting %d idle contexts (contexts in use by this step stay)",
        copy->bytes / kGiB, ctx.num_tokens, free_bytes / kGiB, total / kGiB, evicted));
  }
  copy->k = *std::move(k);
  copy->v = *std::move(v);
  float* staging = static_cast<float*>(Scratch(kStaging, kStagingFloats * sizeof(float)));
  for (const auto& [src, dst] : {std::pair(ctx.k.data(), copy->k->as<bf16>()),
                                 std::pair(ctx.v.data(), copy->v->as<bf16>())}) {
    for (size_t done = 0; done < count && fault_.ok(); done += kStagingFloats) {
      const size_t chunk = std::min(kStagingFloats, count - done);
      Check(cudaMemcpyAsync(staging, src + done, chunk * sizeof(float), cudaMemcpyHostToDevice,
                            impl_->stream),
            "context upload");
      Check(gpu::LaunchF32ToBf16(staging, dst + done, chunk, impl_->stream), "context convert");
    }
  }
  // The staging buffer is reused by the next upload. (Not Synchronize(): that would end the
  // epoch and expose the contexts this step already uses to eviction.)
  Check(cudaStreamSynchronize(impl_->stream), "context upload");
  if (!fault_.ok()) return fault_;
  ctx.resident.value = copy;
  impl_->residents.push_back(copy);  // new, or dropped from the list when it was evicted
  return ContextKvView{copy->k->data(), copy->v->data()};
}

// ---- ops ----------------------------------------------------------------------------------------

void CudaBackend::MatMul(const float* x, const Matrix& w, float* y, int m, bool accumulate) {
  if (!fault_.ok() || m <= 0 || w.rows <= 0) return;
  const int n = w.rows, k = w.cols;
  // Decode-sized products stream the weights with the GEMV kernel (x converted on the fly).
  if (gpu::GemvSupported(m, n, k) && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(w.data) % 16 == 0) {
    Check(gpu::LaunchGemvBf16(x, static_cast<const bf16*>(w.data), y, m, n, k, accumulate,
                              impl_->stream),
          "gemv");
    return;
  }
  bf16* xb = static_cast<bf16*>(Scratch(kXBf16, static_cast<size_t>(m) * k * sizeof(bf16)));
  if (xb == nullptr) return;
  Check(gpu::LaunchF32ToBf16(x, xb, static_cast<size_t>(m) * k, impl_->stream), "matmul input");
  // Row-major y[m, n] = x[m, k] . w[n, k]^T is column-major y^T[n, m] = w^T' . x^T' with
  // w seen as column-major [k, n] (transposed) and x as column-major [k, m].
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  CheckBlas(cublasGemmEx(impl_->blas, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w.data,
                         CUDA_R_16BF, k, xb, CUDA_R_16BF, k, &beta, y, CUDA_R_32F, n,
                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            "cublasGemmEx");
}

namespace {

// Whether the decode GEMV takes x [m, k] against every output (all 16-byte aligned).
bool GemvFits(const float* x, int m, std::span<const Backend::MatMulOutput> outs) {
  if (outs.empty() || outs.size() > static_cast<size_t>(gpu::kGemvMaxOutputs) ||
      reinterpret_cast<uintptr_t>(x) % 16 != 0) {
    return false;
  }
  for (const Backend::MatMulOutput& o : outs) {
    if (o.w->cols != outs[0].w->cols || !gpu::GemvSupported(m, o.w->rows, o.w->cols) ||
        reinterpret_cast<uintptr_t>(o.w->data) % 16 != 0) {
      return false;
    }
  }
  return true;
}

}  // namespace

// Decode: one GEMV launch normalises x on the fly and streams all matrices (q/k/v, gate/up,
// the final norm and lm_head). Prefill: the default RmsNorm + cuBLAS GEMMs.
void CudaBackend::NormMatMuls(const float* x, const float* norm_weight, float eps, float* h, int m,
                              std::span<const MatMulOutput> outs) {
  if (!fault_.ok() || m <= 0) return;
  if (!GemvFits(x, m, outs) ||
      (norm_weight != nullptr && reinterpret_cast<uintptr_t>(norm_weight) % 16 != 0)) {
    Backend::NormMatMuls(x, norm_weight, eps, h, m, outs);
    return;
  }
  gpu::GemvParams p;
  p.x = x;
  p.norm_weight = norm_weight;
  p.eps = eps;
  p.input = norm_weight != nullptr ? gpu::GemvInput::kRmsNorm : gpu::GemvInput::kPlain;
  for (const MatMulOutput& o : outs) {
    p.out[p.num_outputs++] = {static_cast<const bf16*>(o.w->data), o.y, o.w->rows};
  }
  p.m = m;
  p.k = outs[0].w->cols;
  Check(gpu::LaunchGemv(p, impl_->stream), "norm gemv");
}

// Decode: silu(gate) * up formed while the GEMV stages its input; prefill: the default.
void CudaBackend::SiluMulMatMul(float* gate, const float* up, const Matrix& w, float* y, int m,
                                bool accumulate) {
  if (!fault_.ok() || m <= 0) return;
  const MatMulOutput out[] = {{&w, y}};
  if (!GemvFits(gate, m, out) || reinterpret_cast<uintptr_t>(up) % 16 != 0) {
    Backend::SiluMulMatMul(gate, up, w, y, m, accumulate);
    return;
  }
  gpu::GemvParams p;
  p.x = gate;
  p.x2 = up;
  p.input = gpu::GemvInput::kSiluMul;
  p.out[0] = {static_cast<const bf16*>(w.data), y, w.rows};
  p.num_outputs = 1;
  p.m = m;
  p.k = w.cols;
  p.accumulate = accumulate;
  Check(gpu::LaunchGemv(p, impl_->stream), "silu gemv");
}

void CudaBackend::Embed(const Matrix& table, const int32_t* ids, int n, float* out) {
  if (!fault_.ok()) return;
  Check(gpu::LaunchEmbedRows(static_cast<const bf16*>(table.data), ids, n, table.cols, out,
                             impl_->stream),
        "embedding");
}

void CudaBackend::GatherRows(const float* src, const int32_t* ids, int n, int dim, float* out) {
  if (!fault_.ok()) return;
  Check(gpu::LaunchGatherRowsF32(src, ids, n, dim, out, impl_->stream), "gather rows");
}

void CudaBackend::RmsNorm(const float* x, const float* weight, float* out, int rows, int dim,
                          float eps) {
  if (!fault_.ok()) return;
  Check(gpu::LaunchRmsNorm(x, weight, out, nullptr, rows, dim, eps, impl_->stream), "rmsnorm");
}

void CudaBackend::Rope(float* x, const int32_t* positions, int n, int heads, int head_dim,
                       const float* inv_freq) {
  if (!fault_.ok()) return;
  Check(gpu::LaunchRope(x, positions, n, heads, head_dim, inv_freq, impl_->stream), "rope");
}

void CudaBackend::RopeQK(float* q, int q_heads, float* k, int k_heads, const int32_t* positions,
                         int n, int head_dim, const float* inv_freq) {
  if (!fault_.ok()) return;
  Check(gpu::LaunchRopeQK(q, q_heads, k, k_heads, positions, n, head_dim, inv_freq, impl_->stream),
        "rope");
}

void CudaBackend::SiluMul(const float* gate, const float* up, float* out, size_t count) {
  if (!fault_.ok()) return;
  Check(gpu::LaunchSiluMul(gate, up, out, nullptr, count, impl_->stream), "silu");
}

void CudaBackend::AppendKv(const float* k_new, const float* v_new, int n, int num_kv_heads,
                           int head_dim, void* k_dst, void* v_dst, size_t dst_head_stride) {
  if (!fault_.ok()) return;
  Check(gpu::LaunchAppendKv(k_new, v_new, n, num_kv_heads, head_dim, static_cast<bf16*>(k_dst),
                            static_cast<bf16*>(v_dst), dst_head_stride, impl_->stream),
        "append kv");
}

// Attention of n query tokens over per-head key sets through the decode kernel: the queries
// [n][Hq][d] are a batch of n * Hkv rows of G heads, row t * Hkv + h reading rows
// [0, rows_per_head[h]) of KV head h (at k + h * head_stride).
void CudaBackend::DecodeOverHeads(const float* q, int n, int num_q_heads, int num_kv_heads,
                                  int head_dim, float scale, const void* k, const void* v,
                                  size_t head_stride, std::span<const int32_t> rows_per_head,
                                  float* out, float* lse) {
  const int group = num_q_heads / num_kv_heads;
  const int batch = n * num_kv_heads;
  auto& desc = impl_->kv_desc;
  desc.resize(batch);
  int max_len = 0;
  for (int t = 0; t < n; ++t) {
    for (int h = 0; h < num_kv_heads; ++h) {
      gpu::DecodeKv& e = desc[static_cast<size_t>(t) * num_kv_heads + h];
      e.k = static_cast<const bf16*>(k) + h * head_stride;
      e.v = static_cast<const bf16*>(v) + h * head_stride;
      e.head_stride = static_cast<int64_t>(head_stride);
      e.len = rows_per_head[h];
      max_len = std::max(max_len, e.len);
    }
  }
  auto [it, inserted] = impl_->concurrent_ctas.try_emplace({head_dim, group}, 0);
  if (inserted) {
    Check(gpu::DecodeAttentionConcurrentCtas(head_dim, group, &it->second), "occupancy");
  }
  const gpu::DecodeSplitPlan plan = gpu::PlanDecodeSplits(batch, 1, max_len, it->second);
  auto* dev_desc = static_cast<gpu::DecodeKv*>(Scratch(kKvDesc, sizeof(gpu::DecodeKv) * batch));
  void* ws = Scratch(kDecodeWs, gpu::DecodeAttentionWorkspaceBytes(batch, group, head_dim, plan));
  if (dev_desc == nullptr || ws == nullptr) return;
  CopyFromHost(dev_desc, desc.data(), sizeof(gpu::DecodeKv) * batch);
  gpu::DecodeAttentionParams dp;
  dp.batch = batch;
  dp.num_q_heads = group;
  dp.num_kv_heads = 1;
  dp.head_dim = head_dim;
  dp.scale = scale;
  dp.q = q;
  dp.kv = dev_desc;
  dp.plan = plan;
  Check(gpu::LaunchDecodeAttention(dp, ws, out, /*out_bf16=*/false, lse, impl_->stream),
        "decode attention");
}

namespace {

// The prefill kernel's parameters for one call: n queries (bf16) of `shape` against rows
// [0, len) of k/v (heads head_stride elements apart), fp32 out and lse; causal by default.
gpu::PrefillAttentionParams PrefillParams(const AttentionShape& shape, const bf16* q, const void* k,
                                          const void* v, size_t head_stride, int len, float* out,
                                          float* lse) {
  gpu::PrefillAttentionParams pp;
  pp.num_tokens = shape.num_queries;
  pp.num_q_heads = shape.num_q_heads;
  pp.num_kv_heads = shape.num_kv_heads;
  pp.head_dim = shape.head_dim;
  pp.scale = shape.scale;
  pp.q = q;
  pp.kv.k = static_cast<const bf16*>(k);
  pp.kv.v = static_cast<const bf16*>(v);
  pp.kv.head_stride = static_cast<int64_t>(head_stride);
  pp.kv.len = len;
  pp.out = out;
  pp.out_bf16 = false;
  pp.lse = lse;
  return pp;
}

}  // namespace

// Queries per call from which a fixed context is attended with the tensor-core prefill kernel
// (K/V read once per query tile) rather than the decode kernel (K/V read once per query).
constexpr int kFixedPrefillMinQueries = 16;

void CudaBackend::FixedAttention(const AttentionParams& p, float* out, float* lse) {
  const AttentionShape& s = p.shape;
  const KvSlice& kv = p.fixed.kv;
  const int hkv = s.num_kv_heads, d = s.head_dim;
  auto& counts = impl_->counts;
  const void* k = kv.k;
  const void* v = kv.v;
  size_t head_stride = kv.head_stride;
  int max_rows = kv.num_rows;
  if (p.fixed.ranges.empty()) {  // dense: every row of every head
    counts.assign(hkv, kv.num_rows);
  } else {  // a selector's ranges: gather the kept rows of each head into a compact copy
    auto& rows = impl_->rows;
    auto& begin = impl_->head_begin;
    rows.clear();
    begin.assign(1, 0);
    counts.resize(hkv);
    max_rows = 0;
    for (int h = 0; h < hkv; ++h) {
      for (const KeyRange& r : p.fixed.ranges[h]) {
        for (int row = r.begin; row < r.end; ++row) rows.push_back(row);
      }
      begin.push_back(static_cast<int32_t>(rows.size()));
      counts[h] = begin[h + 1] - begin[h];
      max_rows = std::max(max_rows, counts[h]);
    }
    head_stride = static_cast<size_t>(std::max(max_rows, 1)) * d;
    auto* dev_rows =
        static_cast<int32_t*>(Scratch(kGatherRows, sizeof(int32_t) * (rows.size() + 1)));
    auto* dev_begin = static_cast<int32_t*>(Scratch(kGatherBegin, sizeof(int32_t) * begin.size()));
    auto* gk = static_cast<bf16*>(Scratch(kGatheredK, head_stride * hkv * sizeof(bf16)));
    auto* gv = static_cast<bf16*>(Scratch(kGatheredV, head_stride * hkv * sizeof(bf16)));
    if (dev_rows == nullptr || dev_begin == nullptr || gk == nullptr || gv == nullptr) return;
    CopyFromHost(dev_rows, rows.data(), sizeof(int32_t) * rows.size());
    CopyFromHost(dev_begin, begin.data(), sizeof(int32_t) * begin.size());
    Check(gpu::LaunchGatherKvRows(static_cast<const bf16*>(kv.k), static_cast<const bf16*>(kv.v),
                                  kv.head_stride, dev_rows, dev_begin, hkv, max_rows, d, gk, gv,
                                  head_stride, impl_->stream),
          "gather kept rows");
    k = gk;
    v = gv;
  }
  if (s.num_queries < kFixedPrefillMinQueries) {
    DecodeOverHeads(p.q, s.num_queries, s.num_q_heads, hkv, d, s.scale, k, v, head_stride, counts,
                    out, lse);
    return;
  }
  const size_t q_elems = static_cast<size_t>(s.num_queries) * s.num_q_heads * d;
  auto* qb = static_cast<bf16*>(Scratch(kQBf16, q_elems * sizeof(bf16)));
  auto* head_len = static_cast<int32_t*>(Scratch(kHeadLen, sizeof(int32_t) * hkv));
  if (qb == nullptr || head_len == nullptr) return;
  Check(gpu::LaunchF32ToBf16(p.q, qb, q_elems, impl_->stream), "fixed-context queries");
  CopyFromHost(head_len, counts.data(), sizeof(int32_t) * hkv);
  gpu::PrefillAttentionParams pp = PrefillParams(s, qb, k, v, head_stride, max_rows, out, lse);
  pp.causal = false;
  pp.head_len = head_len;
  Check(gpu::LaunchPrefillAttention(pp, impl_->stream), "fixed-context prefill attention");
}

namespace {

// One level's tables of every (layer, KV head), concatenated: centroids rounded to bf16 (to
// nearest even, as __float2bfloat16_rn), sizes, and the C + 1 CSR offsets of head i at
// table_at[i] + i.
struct HostSqueezeLevel {
  std::vector<uint16_t> centroids;
  std::vector<int32_t> sizes, offsets;
};

void AppendLevel(std::span<const float> centroids, std::span<const int32_t> sizes,
                 std::span<const int32_t> offsets, int d, HostSqueezeLevel* host,
                 DeviceSqueezeLevel* level) {
  level->centroid_at.push_back(host->centroids.size() / d);
  level->table_at.push_back(host->sizes.size());
  level->max_clusters = std::max(level->max_clusters, static_cast<int>(sizes.size()));
  for (float c : centroids) {
    uint32_t bits;
    std::memcpy(&bits, &c, 4);
    bits += 0x7FFFu + ((bits >> 16) & 1u);
    host->centroids.push_back(static_cast<uint16_t>(bits >> 16));
  }
  host->sizes.insert(host->sizes.end(), sizes.begin(), sizes.end());
  host->offsets.insert(host->offsets.end(), offsets.begin(), offsets.end());
}

}  // namespace

absl::Status CudaBackend::UploadSqueezeLevel(const void* host_level, void* device_level) {
  const auto& host = *static_cast<const HostSqueezeLevel*>(host_level);
  auto& level = *static_cast<DeviceSqueezeLevel*>(device_level);
  ASSIGN_OR_RETURN(level.centroids, Allocate(std::max<size_t>(host.centroids.size(), 1) * 2));
  ASSIGN_OR_RETURN(level.sizes, Allocate(std::max<size_t>(host.sizes.size(), 1) * 4));
  ASSIGN_OR_RETURN(level.offsets, Allocate(std::max<size_t>(host.offsets.size(), 1) * 4));
  Check(cudaMemcpy(level.centroids->data(), host.centroids.data(), host.centroids.size() * 2,
                   cudaMemcpyHostToDevice),
        "index upload");
  Check(cudaMemcpy(level.sizes->data(), host.sizes.data(), host.sizes.size() * 4,
                   cudaMemcpyHostToDevice),
        "index upload");
  Check(cudaMemcpy(level.offsets->data(), host.offsets.data(), host.offsets.size() * 4,
                   cudaMemcpyHostToDevice),
        "index upload");
  return fault_;
}

absl::StatusOr<const void*> CudaBackend::ResidentSqueezeIndex(const ClusterTables& index) {
  if (index.resident->value != nullptr) {
    const auto* copy = static_cast<const DeviceSqueezeIndex*>(index.resident->value.get());
    if (copy->owner == this) return copy;
  }
  auto copy = std::make_shared<DeviceSqueezeIndex>();
  copy->owner = this;
  const int d = index.head_dim;
  HostSqueezeLevel fine, coarse;
  for (const SqueezeHeadIndex& h : index.heads) {
    AppendLevel(h.centroids, h.sizes, h.offsets, d, &fine, &copy->fine);
    if (index.has_coarse()) {
      AppendLevel(h.coarse_centroids, h.coarse_sizes, h.coarse_offsets, d, &coarse, &copy->coarse);
    }
  }
  RETURN_IF_ERROR(UploadSqueezeLevel(&fine, &copy->fine));
  if (index.has_coarse()) RETURN_IF_ERROR(UploadSqueezeLevel(&coarse, &copy->coarse));
  index.resident->value = copy;
  return copy.get();
}

namespace {

size_t RoundUpPow2(size_t x, size_t at_least) {
  size_t v = at_least;
  while (v < x) v *= 2;
  return v;
}

bool DeviceSelected(const AttentionParams& p) {
  return p.fixed.device_selection && p.fixed.kv.num_rows > 0 && p.shape.num_queries == 1;
}

}  // namespace

// The device descriptors of one call's fixed context per KV head (into out[0, Hkv)), with the
// index made resident; null (fault set) when the index does not match or cannot be uploaded.
bool CudaBackend::SqueezeHeads(const AttentionParams& p, gpu::SqueezeHeadDesc* out,
                               int* max_clusters, bool coarse) {
  const ClusterTables& index = p.fixed.device_selection->tables;
  const int hkv = p.shape.num_kv_heads, d = p.shape.head_dim;
  const int S = p.fixed.kv.num_rows, layer = p.fixed.layer;
  if (layer < 0 || layer >= index.num_layers || index.num_kv_heads != hkv || index.head_dim != d ||
      index.num_tokens != S || (coarse && !index.has_coarse())) {
    Check(cudaErrorInvalidValue, "squeezed attention: the index does not match the context");
    return false;
  }
  auto resident = ResidentSqueezeIndex(index);
  if (!resident.ok()) {
    if (fault_.ok()) fault_ = resident.status();
    return false;
  }
  const auto* dev = static_cast<const DeviceSqueezeIndex*>(*resident);
  const DeviceSqueezeLevel& level = coarse ? dev->coarse : dev->fine;
  const auto* centroids = static_cast<const bf16*>(level.centroids->data());
  const auto* sizes = static_cast<const int32_t*>(level.sizes->data());
  const auto* offsets = static_cast<const int32_t*>(level.offsets->data());
  for (int h = 0; h < hkv; ++h) {
    const size_t slot = static_cast<size_t>(layer) * hkv + h;
    const SqueezeHeadIndex& head = index.heads[slot];
    gpu::SqueezeHeadDesc& e = out[h];
    e.centroids = centroids + level.centroid_at[slot] * d;
    e.sizes = sizes + level.table_at[slot];
    e.offsets = offsets + level.table_at[slot] + slot;  // C + 1 offsets per head
    if (coarse) {
      // The coarse lookup's "rows" are fine clusters: no K/V, no sinks or window.
      e.k = e.v = nullptr;
      e.num_clusters = head.num_coarse();
      e.num_rows = head.num_clusters();
      e.sinks = e.window = 0;
    } else {
      e.k = static_cast<const bf16*>(p.fixed.kv.k) + h * p.fixed.kv.head_stride;
      e.v = static_cast<const bf16*>(p.fixed.kv.v) + h * p.fixed.kv.head_stride;
      e.num_clusters = head.num_clusters();
      e.num_rows = S;
      e.sinks = index.sinks;
      e.window = index.window;
    }
  }
  *max_clusters = level.max_clusters;
  return true;
}

// The squeezed plan and workspace for these bounds, rounded up to powers of two so that steps
// reuse them; made on first use.
bool CudaBackend::SqueezedPlanFor(int hq, int hkv, int d, int batch, int max_dyn, int max_clusters,
                                  int64_t total_rows, int max_rows,
                                  const gpu::SqueezedDecodePlan** plan, void** workspace) {
  const auto key = std::make_tuple(hq, hkv, d, batch, static_cast<int>(RoundUpPow2(max_dyn, 256)),
                                   static_cast<int>(RoundUpPow2(max_clusters, 64)),
                                   static_cast<int64_t>(RoundUpPow2(total_rows, 1024)),
                                   static_cast<int>(RoundUpPow2(max_rows, 1024)));
  auto it = impl_->squeezed_plans.find(key);
  if (it == impl_->squeezed_plans.end()) {
    Impl::SqueezedPlan entry;
    gpu::SqueezedDecodeShape shape;
    shape.batch = batch;
    shape.num_q_heads = hq;
    shape.num_kv_heads = hkv;
    shape.head_dim = d;
    shape.max_dynamic_len = std::get<4>(key);
    shape.max_clusters = std::get<5>(key);
    shape.max_fixed_rows = std::get<6>(key);
    shape.max_context_rows = std::get<7>(key);
    Check(gpu::PlanSqueezedDecode(shape, &entry.plan), "squeezed plan");
    if (!fault_.ok()) return false;
    auto ws = Allocate(entry.plan.workspace_bytes);
    if (!ws.ok()) {
      if (fault_.ok()) fault_ = ws.status();
      return false;
    }
    entry.workspace = *std::move(ws);
    Check(gpu::InitSqueezedDecodeWorkspace(entry.plan, entry.workspace->data(), impl_->stream),
          "squeezed workspace");
    it = impl_->squeezed_plans.emplace(key, std::move(entry)).first;
  }
  *plan = &it->second.plan;
  *workspace = it->second.workspace->data();
  return true;
}

// Kept rows (or hierarchical candidates) per KV head of `calls.size()` selections
// ([calls * Hkv] device) -> pinned arena now -> each call's `field` at the next sync.
void CudaBackend::ReportToHost(const int32_t* counts, std::span<const AttentionParams* const> calls,
                               int32_t* AttentionKeys::*field) {
  if (!fault_.ok()) return;
  const size_t bytes = sizeof(int32_t) * calls[0]->shape.num_kv_heads;
  char* staged = StagePinned(bytes * calls.size());
  Check(
      cudaMemcpyAsync(staged, counts, bytes * calls.size(), cudaMemcpyDeviceToHost, impl_->stream),
      "selection counts");
  for (size_t b = 0; b < calls.size(); ++b) {
    if (int32_t* dst = calls[b]->fixed.*field; dst != nullptr) {
      impl_->pending_to_host.emplace_back(staged + bytes * b, dst, bytes);
    }
  }
}

// Mean cluster scores of one call's n query rows (qb: its queries in bf16), per KV head h into
// scores[h * stride + c] for the clusters of heads[h] (kernels/squeeze/expand_selection.cuh):
// cuBLAS logits over token chunks, per-row softmax statistics, column means. With candidates, only
// theirs count (denominators included) and only theirs are written.
void CudaBackend::ClusterMeanScores(const AttentionParams& p, const void* q_bf16,
                                    std::span<const gpu::SqueezeHeadDesc> heads,
                                    const gpu::SqueezeHeadDesc* dev_heads, int stride,
                                    float* scores, const int32_t* cand, const int32_t* cand_count,
                                    int64_t cand_stride) {
  const AttentionShape& s = p.shape;
  const int n = s.num_queries, hq = s.num_q_heads, hkv = s.num_kv_heads, d = s.head_dim;
  const int G = hq / hkv;
  const auto* qb = static_cast<const bf16*>(q_bf16);
  int max_c = 1;
  for (const gpu::SqueezeHeadDesc& e : heads) max_c = std::max(max_c, e.num_clusters);
  // The fused two-pass kernel over all heads, no logits in memory
  // (kernels/squeeze/cluster_scores.cuh); with candidates (hierarchical fine level) only they are
  // scored.
  auto* stats =
      static_cast<float*>(Scratch(kRowStats, gpu::ClusterScoresWorkspaceBytes(hkv, n, G)));
  if (stats == nullptr) return;
  gpu::ClusterScoresParams cs;
  cs.num_heads = hkv;
  cs.num_tokens = n;
  cs.group = G;
  cs.head_dim = d;
  cs.scale = s.scale;
  cs.q = qb;
  cs.q_token_stride = static_cast<int64_t>(hq) * d;
  cs.heads = dev_heads;
  cs.max_clusters = max_c;
  cs.row_stats = stats;
  cs.scores = scores;
  cs.score_stride = stride;
  cs.candidates = cand;
  cs.num_candidates = cand_count;
  cs.candidate_stride = cand_stride;
  Check(gpu::LaunchClusterScores(cs, impl_->stream), "cluster scores");
}

// Hierarchical selection, coarse level, for `calls` (all with a coarse level): the candidate
// fine clusters of every (call, KV head), ascending, into the kCandidates scratch
// ([calls * Hkv][*stride]) and their counts into kCandidateCounts ([calls * Hkv]), also
// reported to each call's `candidates`. Decode: q [B][Hq][d] fp32, scored by the lookup
// kernel; prefill (one call): qb, its queries in bf16, scored by ClusterMeanScores.
bool CudaBackend::CoarseCandidates(std::span<const AttentionParams* const> calls, const float* q,
                                   const void* q_bf16, const int32_t** ids, const int32_t** counts,
                                   int64_t* stride) {
  const int B = static_cast<int>(calls.size());
  const AttentionShape& s = calls[0]->shape;
  const int hq = s.num_q_heads, hkv = s.num_kv_heads, d = s.head_dim;
  std::vector<gpu::SqueezeHeadDesc> coarse(static_cast<size_t>(B) * hkv);
  std::vector<float> tau(B);
  int max_c1 = 1, max_fine = 1;
  for (int b = 0; b < B; ++b) {
    int c1 = 0;
    if (!SqueezeHeads(*calls[b], coarse.data() + static_cast<size_t>(b) * hkv, &c1,
                      /*coarse=*/true)) {
      return false;
    }
    max_c1 = std::max(max_c1, c1);
    for (int h = 0; h < hkv; ++h) {
      max_fine = std::max(max_fine, coarse[static_cast<size_t>(b) * hkv + h].num_rows);
    }
    tau[b] = calls[b]->fixed.device_selection->coarse_threshold;
  }
  const gpu::SqueezedDecodePlan* plan = nullptr;
  void* ws = nullptr;
  if (!SqueezedPlanFor(hq, hkv, d, B, 1, max_c1, int64_t{B} * max_fine, max_fine, &plan, &ws)) {
    return false;
  }
  const size_t desc_bytes = sizeof(gpu::SqueezeHeadDesc) * coarse.size();
  char* desc = static_cast<char*>(Scratch(kCoarseDesc, desc_bytes + sizeof(float) * B + 256));
  auto* cand = static_cast<int32_t*>(
      Scratch(kCandidates, sizeof(int32_t) * coarse.size() * static_cast<size_t>(max_fine)));
  auto* cand_count =
      static_cast<int32_t*>(Scratch(kCandidateCounts, sizeof(int32_t) * coarse.size()));
  if (desc == nullptr || cand == nullptr || cand_count == nullptr) return false;
  auto* dev_desc = reinterpret_cast<gpu::SqueezeHeadDesc*>(desc);
  auto* dev_tau = reinterpret_cast<float*>(desc + desc_bytes);
  CopyFromHost(dev_desc, coarse.data(), desc_bytes);
  CopyFromHost(dev_tau, tau.data(), sizeof(float) * B);
  const gpu::SqueezeSelection sel = gpu::SelectionInWorkspace(*plan, ws);
  if (q != nullptr) {
    Check(
        gpu::LaunchLookupFromQueries(*plan, s.scale, q, dev_desc, true, dev_tau, ws, impl_->stream),
        "coarse lookup");
  } else {
    auto* scores =
        static_cast<float*>(Scratch(kClusterScores, sizeof(float) * hkv * sel.cluster_stride));
    if (scores == nullptr) return false;
    if (std::isfinite(tau[0])) {
      ClusterMeanScores(*calls[0], q_bf16, coarse, dev_desc, sel.cluster_stride, scores, nullptr,
                        nullptr, 0);
    } else {  // -inf keeps every coarse cluster, +inf none: nothing is read
      Check(cudaMemsetAsync(scores, 0, sizeof(float) * hkv * sel.cluster_stride, impl_->stream),
            "cluster scores");
    }
    Check(gpu::LaunchSelectFromScores(*plan, dev_desc, dev_tau, scores, ws, impl_->stream),
          "coarse selection");
  }
  Check(gpu::LaunchExpandSelectionRows(sel, static_cast<int>(coarse.size()), max_fine, cand,
                                       max_fine, impl_->stream),
        "coarse candidates");
  Check(cudaMemcpyAsync(cand_count, sel.kept_keys, sizeof(int32_t) * coarse.size(),
                        cudaMemcpyDeviceToDevice, impl_->stream),
        "coarse candidates");
  ReportToHost(cand_count, calls, &AttentionKeys::candidates);
  *ids = cand;
  *counts = cand_count;
  *stride = max_fine;
  return fault_.ok();
}

// Multi-token step against a fixed context with the selection made on the device
// (kernels/squeeze/expand_selection.cuh): mean cluster scores over every query row, threshold and
// ranges (hierarchical: among the candidates of the coarse level), then the tensor-core
// prefill kernel reads the kept rows in place. Writes the fixed part's out and lse.
void CudaBackend::SqueezedFixedPrefill(const AttentionParams& p, float* out, float* lse) {
  const AttentionShape& s = p.shape;
  const int n = s.num_queries, hq = s.num_q_heads, hkv = s.num_kv_heads, d = s.head_dim;
  const int S = p.fixed.kv.num_rows;
  std::vector<gpu::SqueezeHeadDesc> heads(hkv);
  int max_clusters = 0;
  if (!SqueezeHeads(p, heads.data(), &max_clusters)) return;
  const size_t q_elems = static_cast<size_t>(n) * hq * d;
  auto* qb = static_cast<bf16*>(Scratch(kQBf16, q_elems * sizeof(bf16)));
  if (qb == nullptr) return;
  Check(gpu::LaunchF32ToBf16(p.q, qb, q_elems, impl_->stream), "squeezed prefill queries");
  const int32_t* cand = nullptr;
  const int32_t* cand_count = nullptr;
  int64_t cand_stride = 0;
  const AttentionParams* one = &p;
  const std::span<const AttentionParams* const> calls(&one, 1);
  if (p.fixed.device_selection->hierarchical &&
      !CoarseCandidates(calls, nullptr, qb, &cand, &cand_count, &cand_stride)) {
    return;
  }
  const gpu::SqueezedDecodePlan* planned = nullptr;
  void* ws = nullptr;
  if (!SqueezedPlanFor(hq, hkv, d, 1, 1, std::max(max_clusters, 1), S, S, &planned, &ws)) return;
  const gpu::SqueezedDecodePlan& plan = *planned;
  const gpu::SqueezeSelection sel = gpu::SelectionInWorkspace(plan, ws);
  auto* scores =
      static_cast<float*>(Scratch(kClusterScores, sizeof(float) * hkv * sel.cluster_stride));
  auto* row_index = static_cast<int32_t*>(Scratch(kRowIndex, sizeof(int32_t) * hkv * S));
  char* desc = static_cast<char*>(Scratch(kSqueezeHeads, sizeof(gpu::SqueezeHeadDesc) * hkv + 256));
  if (scores == nullptr || row_index == nullptr || desc == nullptr) return;
  auto* dev_heads = reinterpret_cast<gpu::SqueezeHeadDesc*>(desc);
  auto* dev_tau = reinterpret_cast<float*>(desc + sizeof(gpu::SqueezeHeadDesc) * hkv);
  const float tau = p.fixed.device_selection->threshold;
  CopyFromHost(dev_heads, heads.data(), sizeof(gpu::SqueezeHeadDesc) * hkv);
  CopyFromHost(dev_tau, &tau, sizeof(float));
  if (std::isfinite(tau)) {
    ClusterMeanScores(p, qb, heads, dev_heads, sel.cluster_stride, scores, cand, cand_count,
                      cand_stride);
  } else {  // -inf keeps every cluster (or candidate), +inf none: no score is read
    Check(cudaMemsetAsync(scores, 0, sizeof(float) * hkv * sel.cluster_stride, impl_->stream),
          "cluster scores");
  }
  Check(gpu::LaunchSelectFromScores(plan, dev_heads, dev_tau, scores, ws, impl_->stream, cand,
                                    cand_count, cand_stride),
        "squeezed prefill selection");
  Check(gpu::LaunchExpandSelectionRows(sel, hkv, S, row_index, S, impl_->stream),
        "squeezed prefill rows");

  gpu::PrefillAttentionParams pp =
      PrefillParams(s, qb, p.fixed.kv.k, p.fixed.kv.v, p.fixed.kv.head_stride, S, out, lse);
  pp.causal = false;
  pp.head_len = sel.kept_keys;
  pp.row_index = row_index;
  pp.row_index_stride = S;
  Check(gpu::LaunchPrefillAttention(pp, impl_->stream), "squeezed prefill attention");
  ReportToHost(sel.kept_keys, calls, &AttentionKeys::kept_rows);
}

// Decode steps of B sequences with Squeezed Attention selected on the device, in one sequence
// of launches (kernels/squeeze/squeezed_decode.cuh): centroid lookup, threshold, sparse attention
// over the kept ranges and dense attention over each sequence's dynamic KV, merged. The queries are
// gathered into one array and the outputs scattered back; the kept rows per (sequence, head)
// reach each call's kept_rows at the next sync.
void CudaBackend::SqueezedAttention(std::span<const AttentionParams* const> calls) {
  const int B = static_cast<int>(calls.size());
  const AttentionShape& s = calls[0]->shape;
  const int hq = s.num_q_heads, hkv = s.num_kv_heads, d = s.head_dim;
  auto& heads = impl_->head_desc;
  heads.resize(static_cast<size_t>(B) * hkv);
  std::vector<gpu::DecodeKv> dyn(B);
  std::vector<float> tau(B);
  std::vector<const float*> q_rows(B);
  std::vector<float*> out_rows(B);
  int max_clusters = 1, max_rows = 1, max_dyn = 1;
  int64_t total_rows = 0;
  for (int b = 0; b < B; ++b) {
    const AttentionParams& p = *calls[b];
    const ClusterTables& index = p.fixed.device_selection->tables;
    const int S = p.fixed.kv.num_rows, layer = p.fixed.layer;
    if (p.shape.num_q_heads != hq || p.shape.num_kv_heads != hkv || p.shape.head_dim != d ||
        layer < 0 || layer >= index.num_layers || index.num_kv_heads != hkv ||
        index.num_tokens != S) {
      Check(cudaErrorInvalidValue, "squeezed decode: the index does not match the context");
      return;
    }
    int index_clusters = 0;
    if (!SqueezeHeads(p, heads.data() + static_cast<size_t>(b) * hkv, &index_clusters)) return;
    dyn[b].k = static_cast<const bf16*>(p.dynamic.kv.k);
    dyn[b].v = static_cast<const bf16*>(p.dynamic.kv.v);
    dyn[b].head_stride = static_cast<int64_t>(p.dynamic.kv.head_stride);
    dyn[b].len = p.dynamic.causal_offset + 1;
    tau[b] = p.fixed.device_selection->threshold;
    q_rows[b] = p.q;
    out_rows[b] = p.out;
    max_clusters = std::max(max_clusters, index_clusters);
    max_rows = std::max(max_rows, S);
    max_dyn = std::max(max_dyn, dyn[b].len);
    total_rows += S;
  }

  const gpu::SqueezedDecodePlan* planned = nullptr;
  void* ws = nullptr;
  if (!SqueezedPlanFor(hq, hkv, d, B, max_dyn, max_clusters, total_rows, max_rows, &planned, &ws)) {
    return;
  }
  const gpu::SqueezedDecodePlan& plan = *planned;

  // Device copies of the descriptors, then the queries gathered into one [B][Hq][d] array.
  const size_t row_floats = static_cast<size_t>(hq) * d;
  const size_t heads_bytes = sizeof(gpu::SqueezeHeadDesc) * heads.size();
  auto align = [](size_t x) { return (x + 255) / 256 * 256; };
  const size_t pointers = sizeof(float*) * B, rows_bytes = sizeof(float) * row_floats * B;
  const size_t bytes = align(heads_bytes) + align(sizeof(gpu::DecodeKv) * B) +
                       align(sizeof(float) * B) + 4 * align(pointers) + 2 * align(rows_bytes);
  char* base = static_cast<char*>(Scratch(kSqueezeHeads, bytes));
  if (base == nullptr) return;
  size_t at = 0;
  auto take = [&](size_t n) {
    char* p = base + at;
    at += align(n);
    return p;
  };
  auto* dev_heads = reinterpret_cast<gpu::SqueezeHeadDesc*>(take(heads_bytes));
  auto* dev_dyn = reinterpret_cast<gpu::DecodeKv*>(take(sizeof(gpu::DecodeKv) * B));
  auto* dev_tau = reinterpret_cast<float*>(take(sizeof(float) * B));
  auto* dev_q_src = reinterpret_cast<const float**>(take(pointers));
  auto* dev_out_dst = reinterpret_cast<float**>(take(pointers));
  auto* q_all = reinterpret_cast<float*>(take(rows_bytes));
  auto* out_all = reinterpret_cast<float*>(take(rows_bytes));
  CopyFromHost(dev_heads, heads.data(), heads_bytes);
  CopyFromHost(dev_dyn, dyn.data(), sizeof(gpu::DecodeKv) * B);
  CopyFromHost(dev_tau, tau.data(), sizeof(float) * B);
  // One sequence attends with its own q and out; several are gathered into q_all and scattered
  // back from out_all (pointer arrays: gather sources and destinations, scatter sources and
  // destinations).
  const bool gather = B > 1;
  const float** out_src_dev = nullptr;
  if (gather) {
    auto* q_dst_dev = reinterpret_cast<float**>(take(pointers));
    out_src_dev = reinterpret_cast<const float**>(take(pointers));
    std::vector<const float*> q_dst(B), out_src(B);
    for (int b = 0; b < B; ++b) {
      q_dst[b] = q_all + row_floats * b;
      out_src[b] = out_all + row_floats * b;
    }
    CopyFromHost(dev_q_src, q_rows.data(), pointers);
    CopyFromHost(dev_out_dst, out_rows.data(), pointers);
    CopyFromHost(q_dst_dev, q_dst.data(), pointers);
    CopyFromHost(out_src_dev, out_src.data(), pointers);
    Check(gpu::LaunchCopyRows(dev_q_src, q_dst_dev, B, static_cast<int>(row_floats), impl_->stream),
          "gather queries");
  }
  gpu::SqueezedDecodeParams sp;
  sp.scale = s.scale;
  sp.q = gather ? q_all : q_rows[0];
  sp.dynamic_kv = dev_dyn;
  sp.heads = dev_heads;
  sp.centroids_bf16 = true;
  sp.tau = dev_tau;
  sp.out = gather ? out_all : out_rows[0];
  // Hierarchical: the coarse lookup narrows each head to its candidate fine clusters first.
  if (calls[0]->fixed.device_selection->hierarchical &&
      !CoarseCandidates(calls, sp.q, nullptr, &sp.candidates, &sp.num_candidates,
                        &sp.candidate_stride)) {
    return;
  }
  Check(gpu::LaunchSqueezedDecode(plan, sp, ws, impl_->stream), "squeezed decode");
  if (gather) {
    Check(gpu::LaunchCopyRows(out_src_dev, dev_out_dst, B, static_cast<int>(row_floats),
                              impl_->stream),
          "scatter outputs");
  }
  ReportToHost(gpu::SelectionInWorkspace(plan, ws).kept_keys, calls, &AttentionKeys::kept_rows);
}

// Sampling on the device (engine/backend/cuda/cuda_sampling.h): the same tokens and PRNG
// stream as the host Sampler; only tokens and requested logprobs come back.
absl::Status CudaBackend::SampleRows(const float* logits, int vocab,
                                     std::span<SampleJob* const> jobs) {
  if (!fault_.ok()) return fault_;
  if (sampler_ == nullptr) sampler_ = std::make_unique<CudaSampler>();
  std::vector<CudaSampler::Job> rows;
  rows.reserve(jobs.size());
  for (const SampleJob* j : jobs) {
    rows.push_back({.sampler = j->sampler,
                    .prompt = j->prompt,
                    .generated = j->generated,
                    .want_info = j->want_info});
  }
  auto out = sampler_->Sample(logits, vocab, rows, impl_->stream);
  if (!out.ok()) {
    // A CUDA failure leaves the backend unusable; an argument error leaves it as it is.
    if (absl::IsInternal(out.status()) && fault_.ok()) fault_ = out.status();
    return out.status();
  }
  for (size_t r = 0; r < jobs.size(); ++r) {
    jobs[r]->token = (*out)[r].token;
    jobs[r]->info = std::move((*out)[r].info);
  }
  ++impl_->epoch;  // the stream is idle (Sample synchronised it)
  FinishPendingCopies();
  return absl::OkStatus();
}

void CudaBackend::AttentionBatch(std::span<const AttentionParams> calls) {
  if (!fault_.ok()) return;
  std::vector<const AttentionParams*> squeezed[2];  // flat, hierarchical
  for (const AttentionParams& p : calls) {
    if (DeviceSelected(p)) {
      squeezed[p.fixed.device_selection->hierarchical ? 1 : 0].push_back(&p);
    } else {
      Attention(p);
    }
  }
  // One batched launch per mode (all sequences of a model share the shapes).
  for (const auto& group : squeezed) {
    if (!group.empty()) SqueezedAttention(group);
  }
}

void CudaBackend::Attention(const AttentionParams& p) {
  if (!fault_.ok()) return;
  const AttentionShape& s = p.shape;
  const int n = s.num_queries, hq = s.num_q_heads, hkv = s.num_kv_heads, d = s.head_dim;
  const size_t rows = static_cast<size_t>(n) * hq;
  if (p.fixed.kv.num_rows > 0 && p.fixed.kv.dtype != DType::kBF16) {
    Check(cudaErrorInvalidValue, "attention: fixed-context KV is not bf16");
    return;
  }
  if (DeviceSelected(p)) {
    const AttentionParams* one = &p;
    SqueezedAttention(std::span<const AttentionParams* const>(&one, 1));
    return;
  }
  const bool with_fixed = p.fixed.kv.num_rows > 0;
  float* dyn_out = p.out;
  float* dyn_lse = nullptr;
  float* fixed_lse = nullptr;
  if (with_fixed) {
    fixed_lse = static_cast<float*>(Scratch(kFixedLse, rows * sizeof(float)));
    dyn_out = static_cast<float*>(Scratch(kDynOut, rows * d * sizeof(float)));
    dyn_lse = static_cast<float*>(Scratch(kDynLse, rows * sizeof(float)));
    if (fixed_lse == nullptr || dyn_out == nullptr || dyn_lse == nullptr) return;
    if (p.fixed.device_selection) {  // n > 1 (single tokens went to SqueezedAttention)
      SqueezedFixedPrefill(p, p.out, fixed_lse);
    } else {
      FixedAttention(p, p.out, fixed_lse);
    }
  }
  // Dynamic part: rows [0, past + n) of the sequence's KV, causal.
  const KvSlice& dkv = p.dynamic.kv;
  const int past = p.dynamic.causal_offset;
  if (n == 1) {
    impl_->counts.assign(hkv, past + 1);
    DecodeOverHeads(p.q, 1, hq, hkv, d, s.scale, dkv.k, dkv.v, dkv.head_stride, impl_->counts,
                    dyn_out, dyn_lse);
  } else {
    auto* qb = static_cast<bf16*>(Scratch(kQBf16, rows * d * sizeof(bf16)));
    if (qb == nullptr) return;
    Check(gpu::LaunchF32ToBf16(p.q, qb, rows * d, impl_->stream), "prefill queries");
    const gpu::PrefillAttentionParams pp =
        PrefillParams(s, qb, dkv.k, dkv.v, dkv.head_stride, past + n, dyn_out, dyn_lse);
    Check(gpu::LaunchPrefillAttention(pp, impl_->stream), "prefill attention");
  }
  if (with_fixed) {
    Check(gpu::LaunchMergeAttention(p.out, fixed_lse, dyn_out, dyn_lse, static_cast<int>(rows), d,
                                    impl_->stream),
          "attention merge");
  }
}

}  // namespace squeeze
