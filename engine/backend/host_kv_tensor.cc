#include "engine/backend/host_kv_tensor.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "engine/common/bfloat16.h"
#include "engine/common/parallel_for.h"

namespace squeeze {
namespace {

// Whole-tensor conversions run in chunks of this many elements, spread over the cores (a
// 128K-token context on an 8B shape is 8.6 G elements).
constexpr size_t kChunk = size_t{1} << 22;

// Asks for transparent huge pages over a large, not yet touched allocation (a 128K-token context
// of an 8B model is 8.6 GB per tensor): the first write of every 4 KiB page is a fault, and at
// that size the faults, not the copy, bound how fast a device copies the context to the host.
// Advice only: where the kernel has no huge pages to give, nothing changes.
void AdviseHugePages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  if (bytes < 16 * kHuge) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

}  // namespace

HostKvTensor::HostKvTensor(DType dtype, size_t n)
    : dtype_(dtype), size_(n), storage_(n * DTypeBytes(dtype)) {
  AdviseHugePages(storage_.data(), storage_.size());
}

HostKvTensor HostKvTensor::FromFloats(DType dtype, std::span<const float> values) {
  HostKvTensor t(dtype, values.size());
  t.WriteFloats(0, values.size(), values.data());
  return t;
}

void HostKvTensor::ReadFloats(size_t begin, size_t n, float* dst) const {
  if (n == 0) return;
  if (dtype_ == DType::kF32) {
    std::memcpy(dst, f32() + begin, n * sizeof(float));
    return;
  }
  const uint16_t* src = bf16() + begin;
  for (size_t i = 0; i < n; ++i) dst[i] = BFloat16ToFloat32(src[i]);
}

void HostKvTensor::WriteFloats(size_t begin, size_t n, const float* src) {
  if (n == 0) return;
  if (dtype_ == DType::kF32) {
    std::memcpy(f32() + begin, src, n * sizeof(float));
    return;
  }
  uint16_t* dst = bf16() + begin;
  for (size_t i = 0; i < n; ++i) dst[i] = Float32ToBFloat16(src[i]);
}

const float* HostKvTensor::Floats(size_t begin, size_t n, std::vector<float>* scratch) const {
  if (dtype_ == DType::kF32) return f32() + begin;
  scratch->resize(n);
  ReadFloats(begin, n, scratch->data());
  return scratch->data();
}

size_t HostKvTensor::FindNonFinite(size_t begin, size_t n) const {
  if (dtype_ == DType::kF32) {
    const float* x = f32() + begin;
    for (size_t i = 0; i < n; ++i) {
      if (!std::isfinite(x[i])) return i;
    }
    return n;
  }
  const uint16_t* x = bf16() + begin;
  for (size_t i = 0; i < n; ++i) {
    if ((x[i] & 0x7F80u) == 0x7F80u) return i;  // exponent all ones: inf or NaN
  }
  return n;
}

std::vector<float> HostKvTensor::ToFloats() const {
  std::vector<float> out(size_);
  ReadFloats(0, size_, out.data());
  return out;
}

HostKvTensor HostKvTensor::ConvertedTo(DType dtype) const {
  HostKvTensor out(dtype, size_);
  const size_t chunks = (size_ + kChunk - 1) / kChunk;
  ParallelFor(chunks, [&](size_t c) {
    const size_t begin = c * kChunk, n = std::min(kChunk, size_ - begin);
    if (dtype == dtype_) {
      std::memcpy(out.at(begin), at(begin), n * DTypeBytes(dtype));
    } else if (dtype == DType::kF32) {
      ReadFloats(begin, n, out.f32() + begin);
    } else {
      out.WriteFloats(begin, n, f32() + begin);
    }
  });
  return out;
}

bool HostKvTensor::operator==(const HostKvTensor& other) const {
  return dtype_ == other.dtype_ && size_ == other.size_ &&
         (size_ == 0 || std::memcmp(storage_.data(), other.storage_.data(), bytes()) == 0);
}

}  // namespace squeeze
