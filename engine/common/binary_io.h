// Little-endian binary serialisation helpers for persisted state. Readers validate every size
// against the bytes left, so a truncated or corrupt file yields an error, never an overread.
#pragma once

#include <cstdint>
#include <cstring>
#include <istream>
#include <ostream>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace squeeze {

class BinaryWriter {
 public:
  explicit BinaryWriter(std::ostream* out) : out_(out) {}
  template <typename T>
  void Pod(const T& value) {
    static_assert(std::is_trivially_copyable_v<T>);
    out_->write(reinterpret_cast<const char*>(&value), sizeof(T));
  }
  void String(const std::string& s) {
    Pod<uint64_t>(s.size());
    out_->write(s.data(), static_cast<std::streamsize>(s.size()));
  }
  template <typename T, typename A>
  void Vector(const std::vector<T, A>& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    Pod<uint64_t>(v.size());
    out_->write(reinterpret_cast<const char*>(v.data()),
                static_cast<std::streamsize>(v.size() * sizeof(T)));
  }
  // `bytes` bytes as they are (the caller wrote their count).
  void Raw(const void* data, size_t bytes) {
    out_->write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
  }
  bool ok() const { return out_->good(); }

 private:
  std::ostream* out_;
};

class BinaryReader {
 public:
  // `limit`: the number of bytes that may still be read (the file size).
  BinaryReader(std::istream* in, uint64_t limit) : in_(in), left_(limit) {}
  template <typename T>
  absl::Status Pod(T* value) {
    static_assert(std::is_trivially_copyable_v<T>);
    if (left_ < sizeof(T)) return Truncated();
    if (!in_->read(reinterpret_cast<char*>(value), sizeof(T))) return Truncated();
    left_ -= sizeof(T);
    return absl::OkStatus();
  }
  absl::Status String(std::string* s) {
    uint64_t n = 0;
    if (auto st = Pod(&n); !st.ok()) return st;
    if (n > left_) return Truncated();
    s->resize(n);
    if (n && !in_->read(s->data(), static_cast<std::streamsize>(n))) return Truncated();
    left_ -= n;
    return absl::OkStatus();
  }
  template <typename T, typename A>
  absl::Status Vector(std::vector<T, A>* v) {
    static_assert(std::is_trivially_copyable_v<T>);
    uint64_t n = 0;
    if (auto st = Pod(&n); !st.ok()) return st;
    if (n > left_ / sizeof(T)) return Truncated();
    v->resize(n);
    const uint64_t bytes = n * sizeof(T);
    if (bytes &&
        !in_->read(reinterpret_cast<char*>(v->data()), static_cast<std::streamsize>(bytes)))
      return Truncated();
    left_ -= bytes;
    return absl::OkStatus();
  }
  // `bytes` bytes into `data` (the caller checked their count against left()).
  absl::Status Raw(void* data, uint64_t bytes) {
    if (bytes > left_) return Truncated();
    if (bytes && !in_->read(static_cast<char*>(data), static_cast<std::streamsize>(bytes))) {
      return Truncated();
    }
    left_ -= bytes;
    return absl::OkStatus();
  }
  uint64_t left() const { return left_; }

 private:
  static absl::Status Truncated() { return absl::DataLossError("file is truncated or corrupt"); }
  std::istream* in_;
  uint64_t left_;
};

}  // namespace squeeze
