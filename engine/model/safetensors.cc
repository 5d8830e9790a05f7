#include "engine/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <set>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/common/status_macros.h"
#include "nlohmann/json.hpp"

namespace squeeze {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; big-endian hosts are not supported");

// Same limit as the reference implementation: a header this large is certainly hostile.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  size_t size;
};

constexpr DTypeInfo kDTypes[] = {
    {DType::kBool, "BOOL", 1}, {DType::kU8, "U8", 1},          {DType::kI8, "I8", 1},
    {DType::kU16, "U16", 2},   {DType::kI16, "I16", 2},        {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2}, {DType::kU32, "U32", 4},        {DType::kI32, "I32", 4},
    {DType::kF32, "F32", 4},   {DType::kU64, "U64", 8},        {DType::kI64, "I64", 8},
    {DType::kF64, "F64", 8},   {DType::kF8E4M3, "F8_E4M3", 1}, {DType::kF8E5M2, "F8_E5M2", 1},
};

// This Abseil build has its own string_view class; std::string_view needs an explicit bridge.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

const DTypeInfo& Info(DType dtype) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.dtype == dtype) return info;
  }
  return kDTypes[0];  // unreachable for valid enum values
}

// Reads a JSON integer that must be >= 0. nlohmann stores integers beyond uint64 as floats, so
// those are rejected as "not an integer" too.
absl::StatusOr<uint64_t> NonNegativeInt(const nlohmann::json& value, std::string_view what) {
  if (value.is_number_unsigned()) return value.get<uint64_t>();
  if (value.is_number_integer()) {
    return absl::InvalidArgumentError(absl::StrCat(Sv(what), " is negative: ", value.dump()));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(Sv(what), " must be a non-negative integer, got ", value.dump()));
}

absl::StatusOr<SafetensorsTensor> ParseTensorEntry(const std::string& name,
                                                   const nlohmann::json& entry,
                                                   std::span<const uint8_t> data) {
  const std::string where = absl::StrCat("tensor '", name, "'");
  if (!entry.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": entry must be a JSON object"));
  }
  SafetensorsTensor tensor;
  tensor.name = name;

  auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end() || !dtype_it->is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": missing string field 'dtype'"));
  }
  absl::StatusOr<DType> dtype = ParseDType(dtype_it->get_ref<const std::string&>());
  if (!dtype.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", dtype.status().message()));
  }
  tensor.dtype = *dtype;

  auto shape_it = entry.find("shape");
  if (shape_it == entry.end() || !shape_it->is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": missing array field 'shape'"));
  }
  // Element count with overflow checks; bytes must also fit in size_t.
  uint64_t expected_bytes = DTypeSize(tensor.dtype);
  for (const nlohmann::json& dim : *shape_it) {
    ASSIGN_OR_RETURN(uint64_t d, NonNegativeInt(dim, absl::StrCat(where, ": shape dimension")));
    if (d > static_cast<uint64_t>(INT64_MAX) ||
        __builtin_mul_overflow(expected_bytes, d, &expected_bytes)) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": shape overflows"));
    }
    tensor.shape.push_back(static_cast<int64_t>(d));
  }

  auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": missing field 'data_offsets' (an array [begin, end])"));
  }
  ASSIGN_OR_RETURN(uint64_t begin,
                   NonNegativeInt((*offsets_it)[0], absl::StrCat(where, ": data_offsets[0]")));
  ASSIGN_OR_RETURN(uint64_t end,
                   NonNegativeInt((*offsets_it)[1], absl::StrCat(where, ": data_offsets[1]")));
  if (end < begin) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": data_offsets end ", end, " is before begin ", begin));
  }
  if (end > data.size()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": data_offsets [", begin, ", ", end,
                                                   ") run past the ", data.size(),
                                                   "-byte data buffer"));
  }
  if (end - begin != expected_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": data_offsets span ", end - begin, " bytes but shape [",
                     absl::StrJoin(tensor.shape, ", "), "] of ", Sv(DTypeName(tensor.dtype)),
                     " needs ", expected_bytes));
  }
  tensor.data = data.data() + begin;
  tensor.nbytes = static_cast<size_t>(end - begin);
  return tensor;
}

}  // namespace

std::string_view DTypeName(DType dtype) { return Info(dtype).name; }
size_t DTypeSize(DType dtype) { return Info(dtype).size; }

absl::StatusOr<DType> ParseDType(std::string_view name) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.name == name) return info.dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype '", Sv(name), "'"));
}

size_t SafetensorsTensor::num_elements() const {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

absl::StatusOr<std::vector<SafetensorsTensor>> ParseSafetensorsHeader(
    std::span<const uint8_t> file_bytes) {
  if (file_bytes.size() < 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        "file is ", file_bytes.size(), " bytes, too small for the 8-byte header length"));
  }
  uint64_t header_len = 0;
  std::memcpy(&header_len, file_bytes.data(), 8);
  if (header_len > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "header length ", header_len, " exceeds the limit of ", kMaxHeaderBytes, " bytes"));
  }
  if (header_len > file_bytes.size() - 8) {
    return absl::InvalidArgumentError(absl::StrCat("header length ", header_len,
                                                   " runs past the end of the ", file_bytes.size(),
                                                   "-byte file (truncated?)"));
  }
  const auto* header_begin = reinterpret_cast<const char*>(file_bytes.data() + 8);
  std::span<const uint8_t> data = file_bytes.subspan(8 + header_len);

  // nlohmann silently keeps one of two equal keys; a stack of per-object key sets catches them.
  std::vector<absl::flat_hash_set<std::string>> open_objects;
  std::string duplicate_key;
  auto on_event = [&](int /*depth*/, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using Event = nlohmann::json::parse_event_t;
    if (event == Event::object_start) {
      open_objects.emplace_back();
    } else if (event == Event::object_end) {
      if (!open_objects.empty()) open_objects.pop_back();
    } else if (event == Event::key && !open_objects.empty() && parsed.is_string()) {
      if (!open_objects.back().insert(parsed.get<std::string>()).second && duplicate_key.empty()) {
        duplicate_key = parsed.get<std::string>();
      }
    }
    return true;
  };
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(header_begin, header_begin + header_len, on_event);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("header is not valid JSON: ", e.what()));
  }
  if (!duplicate_key.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("header has duplicate key '", duplicate_key, "'"));
  }
  if (!header.is_object()) {
    return absl::InvalidArgumentError("header must be a JSON object");
  }

  std::vector<SafetensorsTensor> tensors;
  tensors.reserve(header.size());
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    ASSIGN_OR_RETURN(SafetensorsTensor tensor, ParseTensorEntry(name, entry, data));
    tensors.push_back(std::move(tensor));
  }

  // Tensors sorted by offset must tile the data buffer exactly (the reference rule).
  std::stable_sort(tensors.begin(), tensors.end(),
                   [](const SafetensorsTensor& a, const SafetensorsTensor& b) {
                     return a.data != b.data ? a.data < b.data : a.nbytes < b.nbytes;
                   });
  size_t expected_begin = 0;
  for (const SafetensorsTensor& t : tensors) {
    const size_t begin = static_cast<size_t>(t.data - data.data());
    if (begin != expected_begin) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t.name, "' starts at data offset ", begin,
                       " but the previous tensor ends at ", expected_begin,
                       begin < expected_begin ? " (overlap)" : " (gap)"));
    }
    expected_begin = begin + t.nbytes;
  }
  if (expected_begin != data.size()) {
    return absl::InvalidArgumentError(absl::StrCat("tensors cover ", expected_begin,
                                                   " bytes but the data buffer has ", data.size(),
                                                   " (trailing bytes)"));
  }
  return tensors;
}

// ---- SafetensorsFile ----------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    std::string msg = absl::StrCat("cannot open safetensors file '", path, "': ", strerror(err));
    return err == ENOENT ? absl::NotFoundError(msg) : absl::PermissionDeniedError(msg);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat("'", path, "' is not a regular file"));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat("safetensors file '", path, "' is ", size,
                                                   " bytes, too small for the header length"));
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (map == MAP_FAILED) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot mmap '", path, "' (", size, " bytes): ", strerror(map_err)));
  }
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->map_ = map;
  file->map_size_ = size;
  absl::StatusOr<std::vector<Tensor>> tensors =
      ParseSafetensorsHeader({static_cast<const uint8_t*>(map), size});
  if (!tensors.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors file '", path, "': ", tensors.status().message()));
  }
  file->tensors_ = std::move(*tensors);
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

const SafetensorsFile::Tensor* SafetensorsFile::Find(std::string_view name) const {
  for (const Tensor& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

// ---- Conversions --------------------------------------------------------------------------------

float Float16ToFloat32(uint16_t h) {
  const uint32_t sign = uint32_t{h & 0x8000u} << 16;
  const uint32_t exp = (h >> 10) & 0x1F;
  const uint32_t mant = h & 0x3FF;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24
    const float magnitude = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -magnitude : magnitude;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7F800000u | (mant << 13));
  return std::bit_cast<float>(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t Float32ToFloat16(float value) {
  const uint32_t u = std::bit_cast<uint32_t>(value);
  const auto sign = static_cast<uint16_t>((u >> 16) & 0x8000);
  const uint32_t x = u & 0x7FFFFFFF;
  if (x > 0x7F800000) return sign | 0x7E00;   // NaN
  if (x >= 0x47800000) return sign | 0x7C00;  // >= 65536 (or inf): overflow to inf
  if (x < 0x38800000) {
    // Below the smallest normal half (2^-14): a multiple of 2^-24. Scaling by 2^24 is exact and
    // nearbyint rounds half to even; 1024 becomes the smallest normal, which has the same bits.
    const float scaled = std::ldexp(std::bit_cast<float>(x), 24);
    return sign | static_cast<uint16_t>(std::nearbyint(scaled));
  }
  const uint32_t exp = (x >> 23) - 112;  // rebias 127 -> 15; in [1, 30] here
  const uint32_t mant = x & 0x7FFFFF;
  uint32_t h = (exp << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1FFF;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;  // may carry into exp, up to inf
  return sign | static_cast<uint16_t>(h);
}

absl::Status ToFloat32(const SafetensorsTensor& tensor, std::span<float> out) {
  const size_t n = tensor.num_elements();
  if (out.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", tensor.name, "' has ", n, " elements, output holds ", out.size()));
  }
  if (tensor.nbytes != n * DTypeSize(tensor.dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", tensor.name, "' has ", tensor.nbytes,
                                                   " bytes for ", n, " elements of ",
                                                   Sv(DTypeName(tensor.dtype))));
  }
  switch (tensor.dtype) {
    case DType::kF32:
      if (n > 0) std::memcpy(out.data(), tensor.data, n * sizeof(float));
      return absl::OkStatus();
    case DType::kBF16:
    case DType::kF16: {
      const bool bf16 = tensor.dtype == DType::kBF16;
      for (size_t i = 0; i < n; ++i) {
        uint16_t bits;
        std::memcpy(&bits, tensor.data + 2 * i, 2);  // data may be unaligned
        out[i] = bf16 ? BFloat16ToFloat32(bits) : Float16ToFloat32(bits);
      }
      return absl::OkStatus();
    }
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", tensor.name, "' has dtype ", Sv(DTypeName(tensor.dtype)),
                       "; only F32, BF16 and F16 can be converted to fp32"));
  }
}

// ---- Writing ------------------------------------------------------------------------------------

absl::StatusOr<std::string> SerializeSafetensors(const std::vector<TensorToWrite>& tensors) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  header["__metadata__"] = {{"format", "pt"}};
  std::set<std::string_view> names;
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__" || !names.insert(t.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot write tensor named '", t.name, "': empty, reserved or duplicate"));
    }
    if (t.dtype != DType::kF32 && t.dtype != DType::kBF16 && t.dtype != DType::kF16) {
      return absl::InvalidArgumentError(absl::StrCat("cannot write tensor '", t.name, "' as ",
                                                     Sv(DTypeName(t.dtype)),
                                                     " (supported: F32, BF16, F16)"));
    }
    uint64_t n = 1;
    for (int64_t d : t.shape) {
      if (d < 0 || __builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor '", t.name, "' has an invalid shape"));
      }
    }
    if (n != t.values.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t.name, "' has shape [", absl::StrJoin(t.shape, ", "), "] (", n,
                       " elements) but ", t.values.size(), " values"));
    }
    const uint64_t nbytes = n * DTypeSize(t.dtype);
    header[t.name] = {{"dtype", DTypeName(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const nlohmann::json::exception& e) {  // e.g. a name that is not valid UTF-8
    return absl::InvalidArgumentError(absl::StrCat("cannot encode header: ", e.what()));
  }
  // Pad with spaces (valid JSON whitespace) so the data buffer starts 8-byte aligned.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  std::string out;
  out.reserve(8 + header_text.size() + offset);
  const uint64_t header_len = header_text.size();
  out.append(reinterpret_cast<const char*>(&header_len), 8);
  out += header_text;
  for (const TensorToWrite& t : tensors) {
    if (t.dtype == DType::kF32) {
      out.append(reinterpret_cast<const char*>(t.values.data()), t.values.size() * sizeof(float));
      continue;
    }
    for (float v : t.values) {
      const uint16_t bits = t.dtype == DType::kBF16 ? Float32ToBFloat16(v) : Float32ToFloat16(v);
      out.append(reinterpret_cast<const char*>(&bits), 2);
    }
  }
  return out;
}

absl::Status WriteFileAtomically(const std::string& path, std::string_view contents) {
  std::string tmp = path + ".tmp.XXXXXX";
  const int fd = ::mkstemp(tmp.data());
  if (fd < 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create a temporary file next to '", path, "': ", strerror(errno)));
  }
  size_t written = 0;
  while (written < contents.size()) {
    const ssize_t w = ::write(fd, contents.data() + written, contents.size() - written);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot write '", tmp, "': ", strerror(err)));
    }
    written += static_cast<size_t>(w);
  }
  // mkstemp creates 0600; model files should be as readable as any other file.
  ::fchmod(fd, 0644);
  int err = ::fsync(fd) != 0 ? errno : 0;
  if (::close(fd) != 0 && err == 0) err = errno;
  if (err == 0 && ::rename(tmp.c_str(), path.c_str()) != 0) err = errno;
  if (err != 0) {
    ::unlink(tmp.c_str());
    return absl::PermissionDeniedError(absl::StrCat("cannot write '", path, "': ", strerror(err)));
  }
  return absl::OkStatus();
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors) {
  ASSIGN_OR_RETURN(std::string bytes, SerializeSafetensors(tensors));
  return WriteFileAtomically(path, bytes);
}

}  // namespace squeeze
