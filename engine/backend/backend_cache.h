// A backend's copy of some host data (a context's KV, its index), kept with that data and
// released with it. Never part of the data's value: copies share it, comparisons ignore it.
#pragma once

#include <memory>
#include <utility>

namespace squeeze {

struct BackendCache {
  mutable std::shared_ptr<void> value;
  mutable const void* owner = nullptr;  // who made `value` (a backend, or a part of one)

  // `value` as a T when `who` made it, else nullptr (another backend's copy is not a T).
  template <typename T>
  T* Get(const void* who) const {
    return owner == who ? static_cast<T*>(value.get()) : nullptr;
  }
  void Set(const void* who, std::shared_ptr<void> v) const {
    owner = who;
    value = std::move(v);
  }
  bool operator==(const BackendCache&) const { return true; }
};

}  // namespace squeeze
