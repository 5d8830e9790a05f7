// Host storage of KV elements in a backend's KV dtype: the host copy of a registered context's
// keys or values. A context of 128K tokens on an 8B shape is 34 GB in fp32 and 17 GB in bf16, so
// the host keeps what the backend computes with (bf16 for the CUDA backend, fp32 for the CPU
// reference) instead of always widening to fp32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "engine/backend/dtype.h"

namespace squeeze {

// Host storage whose resize leaves new elements uninitialised (default-init), for buffers that
// are filled right after (zeroing a context's tens of GB first would cost seconds).
template <typename T>
struct DefaultInitAllocator : std::allocator<T> {
  template <typename U>
  struct rebind {
    using other = DefaultInitAllocator<U>;
  };
  using std::allocator<T>::allocator;
  template <typename U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

// A flat host array of `size()` KV elements of one dtype: fp32 values, or bf16 bit patterns
// (rounded to nearest even, as the GPU rounds). Typed views give the storage itself; the fp32
// readers and writers convert, so code that computes in fp32 (k-means, calibration, tools)
// works with either dtype without branching on it.
class HostKvTensor {
 public:
  HostKvTensor() = default;
  // `n` uninitialised elements of `dtype`.
  HostKvTensor(DType dtype, size_t n);
  // `values` stored as `dtype` (bf16: rounded to nearest even).
  static HostKvTensor FromFloats(DType dtype, std::span<const float> values);

  DType dtype() const { return dtype_; }
  size_t size() const { return size_; }  // elements
  bool empty() const { return size_ == 0; }
  size_t bytes() const { return size_ * DTypeBytes(dtype_); }
  void* data() { return storage_.data(); }
  const void* data() const { return storage_.data(); }
  // Address of element i.
  void* at(size_t i) { return storage_.data() + i * DTypeBytes(dtype_); }
  const void* at(size_t i) const { return storage_.data() + i * DTypeBytes(dtype_); }

  // Typed storage: f32() only when dtype() == kF32, bf16() (bit patterns) only when kBF16;
  // nullptr otherwise, so a misread faults instead of reinterpreting bytes.
  float* f32() { return dtype_ == DType::kF32 ? reinterpret_cast<float*>(data()) : nullptr; }
  const float* f32() const {
    return dtype_ == DType::kF32 ? reinterpret_cast<const float*>(data()) : nullptr;
  }
  uint16_t* bf16() {
    return dtype_ == DType::kBF16 ? reinterpret_cast<uint16_t*>(data()) : nullptr;
  }
  const uint16_t* bf16() const {
    return dtype_ == DType::kBF16 ? reinterpret_cast<const uint16_t*>(data()) : nullptr;
  }

  // Elements [begin, begin + n) as fp32 into `dst` (bf16 widens exactly).
  void ReadFloats(size_t begin, size_t n, float* dst) const;
  // Elements [begin, begin + n) set from fp32 `src` (bf16: rounded to nearest even).
  void WriteFloats(size_t begin, size_t n, const float* src);
  // Elements [begin, begin + n) as fp32: a pointer into the storage when it is fp32 (no copy),
  // else widened into `*scratch` (valid until `scratch` changes).
  const float* Floats(size_t begin, size_t n, std::vector<float>* scratch) const;
  // Offset (from `begin`) of the first NaN or infinite element of [begin, begin + n); n when
  // every element is finite. Reads the storage as it is (no widening).
  size_t FindNonFinite(size_t begin, size_t n) const;
  // Every element as fp32 (tests and tools).
  std::vector<float> ToFloats() const;
  // A copy in `dtype`: widening is exact, narrowing rounds to nearest even; the same dtype
  // copies the bytes.
  HostKvTensor ConvertedTo(DType dtype) const;

  // Same dtype and the same bytes.
  bool operator==(const HostKvTensor& other) const;

 private:
  DType dtype_ = DType::kF32;
  size_t size_ = 0;
  // Allocated by operator new: aligned for float.
  std::vector<std::byte, DefaultInitAllocator<std::byte>> storage_;
};

}  // namespace squeeze
