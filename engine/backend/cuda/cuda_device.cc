#include "engine/backend/cuda/cuda_device.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace squeeze {
namespace {

constexpr size_t kMiB = size_t{1} << 20;
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

}  // namespace

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

namespace {

// A device block from the pool; returns to it when destroyed.
class DeviceBuffer final : public Buffer {
 public:
  DeviceBuffer(void* data, size_t bytes, size_t capacity, std::shared_ptr<PooledDeviceBlocks> pool)
      : Buffer(data, bytes), capacity_(capacity), pool_(std::move(pool)) {}
  ~DeviceBuffer() override { pool_->Give(data(), capacity_); }

 private:
  size_t capacity_;
  std::shared_ptr<PooledDeviceBlocks> pool_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<CudaDevice>> CudaDevice::Create(int device) {
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
  std::unique_ptr<CudaDevice> dev(new CudaDevice());
  dev->device_ = device;
  dev->pool_ = std::make_shared<PooledDeviceBlocks>();
  if ((err = cudaSetDevice(device)) != cudaSuccess) return CudaError(err, "cudaSetDevice");
  if ((err = cudaGetDeviceProperties(&dev->props_, device)) != cudaSuccess) {
    return CudaError(err, "cudaGetDeviceProperties");
  }
  if (dev->props_.major < 9) {
    return absl::FailedPreconditionError(
        absl::StrCat("cuda: ", dev->props_.name, " is compute capability ", dev->props_.major, ".",
                     dev->props_.minor, "; the kernels are built for Hopper (sm_90a)"));
  }
  if ((err = cudaStreamCreateWithFlags(&dev->stream_, cudaStreamNonBlocking)) != cudaSuccess) {
    return CudaError(err, "cudaStreamCreate");
  }
  if (cublasCreate(&dev->blas_) != CUBLAS_STATUS_SUCCESS) {
    return absl::InternalError("cuda: cublasCreate failed");
  }
  cublasSetStream(dev->blas_, dev->stream_);
  dev->pinned_size_ = 16 * kMiB;
  void* pinned = nullptr;
  if ((err = cudaMallocHost(&pinned, dev->pinned_size_)) != cudaSuccess) {
    return CudaError(err, "cudaMallocHost");
  }
  dev->pinned_ = static_cast<char*>(pinned);
  return dev;
}

CudaDevice::~CudaDevice() {
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  for (auto& [p, bytes] : scratch_) {
    if (p != nullptr) cudaFree(p);
  }
  for (void* p : permanent_) cudaFree(p);
  if (pinned_ != nullptr) cudaFreeHost(pinned_);
  if (blas_ != nullptr) cublasDestroy(blas_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

absl::Status CudaDevice::MemoryInfo(size_t* free_bytes, size_t* total_bytes) const {
  const cudaError_t err = cudaMemGetInfo(free_bytes, total_bytes);
  return err == cudaSuccess ? absl::OkStatus() : CudaError(err, "cudaMemGetInfo");
}

std::string CudaDevice::Describe() const {
  size_t free_bytes = 0, total = 0;
  MemoryInfo(&free_bytes, &total).IgnoreError();
  return absl::StrFormat("%s, %d SMs, %.1f GiB (%.1f free), compute capability %d.%d", props_.name,
                         props_.multiProcessorCount, total / kGiB, free_bytes / kGiB, props_.major,
                         props_.minor);
}

absl::StatusOr<std::unique_ptr<Buffer>> CudaDevice::Allocate(size_t bytes) {
  if (!ok()) return fault();
  cudaSetDevice(device_);  // the engine thread is not the thread that created us
  size_t capacity = 0;
  auto block = pool_->Take(std::max<size_t>(bytes, 1), &capacity);
  if (!block.ok()) return block.status();
  return std::unique_ptr<Buffer>(std::make_unique<DeviceBuffer>(*block, bytes, capacity, pool_));
}

absl::StatusOr<void*> CudaDevice::AllocatePermanent(size_t bytes, const char* what) {
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
  permanent_.push_back(p);
  return p;
}

void* CudaDevice::Scratch(int slot, size_t bytes) {
  auto& [p, size] = scratch_[slot];
  if (bytes <= size && p != nullptr) return p;
  if (p != nullptr) {
    // Queued ops may still read the old area.
    Check(cudaStreamSynchronize(stream_), "scratch resize");
    cudaFree(p);
    p = nullptr;
    size = 0;
  }
  const size_t grown = std::max<size_t>(bytes + bytes / 4, 4096);
  if (cudaMalloc(&p, grown) != cudaSuccess) {
    cudaGetLastError();
    pool_->Trim();
    Check(cudaMalloc(&p, grown), "scratch allocation");
    if (p == nullptr) return nullptr;
  }
  size = grown;
  return p;
}

void CudaDevice::TrimPool() { pool_->Trim(); }

char* CudaDevice::StagePinned(size_t bytes) {
  if (pinned_used_ + bytes > pinned_size_) {
    Check(cudaStreamSynchronize(stream_), "pinned staging");  // earlier copies are done
    FinishPendingCopies();
  }
  char* staged = pinned_ + pinned_used_;
  pinned_used_ += (bytes + 255) / 256 * 256;
  return staged;
}

void CudaDevice::CopyFromHost(void* dst, const void* host_src, size_t bytes) {
  if (!ok() || bytes == 0) return;
  if (bytes > pinned_size_) {  // large: pageable copy (synchronises the stream)
    Check(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_), "copy to device");
    return;
  }
  char* staged = StagePinned(bytes);
  std::memcpy(staged, host_src, bytes);
  Check(cudaMemcpyAsync(dst, staged, bytes, cudaMemcpyHostToDevice, stream_), "copy to device");
}

void CudaDevice::CopyToHost(void* host_dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  if (ok()) {
    Check(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_), "copy to host");
    Check(cudaStreamSynchronize(stream_), "copy to host");
    FinishPendingCopies();  // the stream is idle
  }
  if (!ok()) std::memset(host_dst, 0, bytes);  // never hand out stale memory
}

namespace {

// A calling thread's pinned staging for CopyToHostUnordered: two halves, a stream and an event
// per half of its own, freed when the thread ends. A device-to-host copy into pageable memory runs
// at a fraction of the link (the driver stages it in small pieces, one thread at a time); through
// these halves the next piece's DMA overlaps this thread's memcpy of the last, and threads copy
// side by side. The events block rather than spin: the copying threads leave the cores to the
// engine and the indexer while their DMA runs.
struct ThreadStaging {
  static constexpr size_t kHalf = size_t{8} << 20;
  char* buffer = nullptr;
  cudaStream_t stream = nullptr;
  cudaEvent_t landed[2] = {nullptr, nullptr};
  int device = -1;
  ThreadStaging() = default;
  ThreadStaging(const ThreadStaging&) = delete;
  ThreadStaging& operator=(const ThreadStaging&) = delete;
  ~ThreadStaging() { Release(); }
  void Release() {
    for (cudaEvent_t& e : landed) {
      if (e != nullptr) cudaEventDestroy(e);
      e = nullptr;
    }
    if (stream != nullptr) cudaStreamDestroy(stream);
    if (buffer != nullptr) cudaFreeHost(buffer);
    stream = nullptr;
    buffer = nullptr;
  }
  bool Ready(int dev) {
    if (buffer != nullptr && device == dev) return true;
    Release();
    device = dev;
    constexpr unsigned kEventFlags = cudaEventBlockingSync | cudaEventDisableTiming;
    if (cudaHostAlloc(reinterpret_cast<void**>(&buffer), 2 * kHalf, cudaHostAllocDefault) !=
            cudaSuccess ||
        cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess ||
        cudaEventCreateWithFlags(&landed[0], kEventFlags) != cudaSuccess ||
        cudaEventCreateWithFlags(&landed[1], kEventFlags) != cudaSuccess) {
      cudaGetLastError();
      Release();
      return false;
    }
    return true;
  }
};

// Copies through the staging halves; false on a CUDA error.
bool StagedCopyToHost(ThreadStaging& st, char* dst, const char* src, size_t bytes) {
  const size_t pieces = (bytes + ThreadStaging::kHalf - 1) / ThreadStaging::kHalf;
  auto piece_bytes = [&](size_t i) {
    return std::min(ThreadStaging::kHalf, bytes - i * ThreadStaging::kHalf);
  };
  auto issue = [&](size_t i) {
    return cudaMemcpyAsync(st.buffer + (i & 1) * ThreadStaging::kHalf,
                           src + i * ThreadStaging::kHalf, piece_bytes(i), cudaMemcpyDeviceToHost,
                           st.stream) == cudaSuccess &&
           cudaEventRecord(st.landed[i & 1], st.stream) == cudaSuccess;
  };
  if (!issue(0)) return false;
  for (size_t i = 0; i < pieces; ++i) {
    if (i + 1 < pieces && !issue(i + 1)) return false;                        // into the other half
    if (cudaEventSynchronize(st.landed[i & 1]) != cudaSuccess) return false;  // piece i landed
    std::memcpy(dst + i * ThreadStaging::kHalf, st.buffer + (i & 1) * ThreadStaging::kHalf,
                piece_bytes(i));
  }
  return true;
}

}  // namespace

void CudaDevice::CopyToHostUnordered(void* host_dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  cudaSetDevice(device_);
  thread_local ThreadStaging staging;
  const bool copied = bytes >= ThreadStaging::kHalf && staging.Ready(device_)
                          ? StagedCopyToHost(staging, static_cast<char*>(host_dst),
                                             static_cast<const char*>(src), bytes)
                          : cudaMemcpy(host_dst, src, bytes, cudaMemcpyDeviceToHost) == cudaSuccess;
  if (!copied) {
    cudaGetLastError();
    std::memset(host_dst, 0, bytes);  // the caller's next backend call reports the fault
  }
}

void CudaDevice::Copy2D(void* dst, size_t dst_pitch, const void* src, size_t src_pitch,
                        size_t row_bytes, size_t rows) {
  if (!ok() || rows == 0 || row_bytes == 0) return;
  Check(cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, row_bytes, rows, cudaMemcpyDeviceToDevice,
                          stream_),
        "device copy");
}

void CudaDevice::CopyToHostAtSync(void* host_dst, const void* src, size_t bytes) {
  if (!ok() || bytes == 0) return;
  char* staged = StagePinned(bytes);
  Check(cudaMemcpyAsync(staged, src, bytes, cudaMemcpyDeviceToHost, stream_), "copy to host");
  pending_to_host_.emplace_back(staged, host_dst, bytes);
}

void CudaDevice::CopyRowsToHostAtSync(std::span<void* const> host_dsts, const void* src,
                                      size_t row_bytes) {
  if (!ok() || host_dsts.empty() || row_bytes == 0) return;
  const size_t bytes = host_dsts.size() * row_bytes;
  char* staged = StagePinned(bytes);
  Check(cudaMemcpyAsync(staged, src, bytes, cudaMemcpyDeviceToHost, stream_), "copy to host");
  for (size_t i = 0; i < host_dsts.size(); ++i) {
    if (host_dsts[i] != nullptr) {
      pending_to_host_.emplace_back(staged + i * row_bytes, host_dsts[i], row_bytes);
    }
  }
}

void CudaDevice::FinishPendingCopies() {
  for (const auto& [src, dst, bytes] : pending_to_host_) {
    if (ok()) {
      std::memcpy(dst, src, bytes);
    } else {
      std::memset(dst, 0, bytes);
    }
  }
  pending_to_host_.clear();
  pinned_used_ = 0;
}

absl::Status CudaDevice::Synchronize() {
  if (ok()) Check(cudaStreamSynchronize(stream_), "synchronize");
  ++epoch_;
  FinishPendingCopies();
  if (ok()) Check(cudaGetLastError(), "asynchronous fault");
  return fault();
}

void CudaDevice::MarkIdle() {
  ++epoch_;
  FinishPendingCopies();
}

}  // namespace squeeze
