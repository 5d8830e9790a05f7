// Reading and writing the safetensors format (https://github.com/huggingface/safetensors):
//   [u64 little-endian N][N bytes of JSON header][data buffer]
// The header maps tensor names to {"dtype", "shape", "data_offsets": [begin, end)} with offsets
// relative to the start of the data buffer; an optional "__metadata__" object is ignored.
//
// The parser treats every file as untrusted: it never reads outside the given bytes and rejects
// headers that lie about sizes. Like the reference implementation it requires the tensors, sorted
// by offset, to tile the data buffer exactly: overlaps, gaps and trailing bytes are errors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/common/bfloat16.h"

namespace squeeze {

// Element types named in safetensors headers ("F32", "BF16", ...).
enum class DType {
  kBool,
  kU8,
  kI8,
  kU16,
  kI16,
  kF16,
  kBF16,
  kU32,
  kI32,
  kF32,
  kU64,
  kI64,
  kF64,
  kF8E4M3,
  kF8E5M2,
};

// "F32", "BF16", ... (the header spelling).
std::string_view DTypeName(DType dtype);
// Bytes per element.
size_t DTypeSize(DType dtype);
// Inverse of DTypeName; errors name the unknown string.
absl::StatusOr<DType> ParseDType(std::string_view name);

// One tensor of a parsed file. `data` points into the caller's bytes (or the mapping) and is not
// necessarily aligned: read it with memcpy or through ToFloat32.
struct SafetensorsTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;

  // Product of `shape` (1 for a scalar); the parser guarantees it does not overflow.
  size_t num_elements() const;
};

// Parses the header of a complete safetensors file held in memory and returns its tensors sorted
// by data offset (file order), with `data` pointing into `file_bytes`. Any malformed, truncated
// or inconsistent input yields InvalidArgumentError; nothing outside `file_bytes` is ever read.
absl::StatusOr<std::vector<SafetensorsTensor>> ParseSafetensorsHeader(
    std::span<const uint8_t> file_bytes);

// A read-only memory-mapped safetensors file. Tensor data stays valid while the object lives.
class SafetensorsFile {
 public:
  using Tensor = SafetensorsTensor;

  // NotFoundError when the file cannot be opened, InvalidArgumentError when it is malformed.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // nullptr when absent.
  const Tensor* Find(std::string_view name) const;
  const std::vector<Tensor>& tensors() const { return tensors_; }
  const std::string& path() const { return path_; }

 private:
  SafetensorsFile() = default;

  std::string path_;
  void* map_ = nullptr;  // mmap'ed file, PROT_READ
  size_t map_size_ = 0;
  std::vector<Tensor> tensors_;
};

// Converts a F32, BF16 or F16 tensor to fp32. `out.size()` must equal `tensor.num_elements()`.
// Other dtypes give an error naming the tensor and its dtype.
absl::Status ToFloat32(const SafetensorsTensor& tensor, std::span<float> out);

// fp32 -> f16 bit pattern with round-to-nearest-even (NaN stays NaN, overflow -> inf), and back
// (bf16: engine/common/bfloat16.h).
uint16_t Float32ToFloat16(float value);
float Float16ToFloat32(uint16_t bits);

// A tensor to write: fp32 values stored as `dtype` (kF32, kBF16 or kF16).
struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<float> values;  // product(shape) elements, row-major
};

// Serialises tensors (in the given order) to the bytes of a safetensors file, with
// __metadata__ {"format": "pt"} and the header padded so the data buffer starts 8-byte aligned.
// Errors: duplicate or empty or reserved names, shape/values mismatch, unsupported dtype.
absl::StatusOr<std::string> SerializeSafetensors(const std::vector<TensorToWrite>& tensors);

// SerializeSafetensors to `path`, written to a temporary file in the same directory and renamed
// into place so readers never see a partial file.
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors);

// Writes `contents` to `path` atomically (temporary file + rename). Shared by the writers above.
absl::Status WriteFileAtomically(const std::string& path, std::string_view contents);

}  // namespace squeeze
