// A backend's copy of some host data (a context's KV, its index), kept with that data and
// released with it. Never part of the data's value: copies share it, comparisons ignore it.
#pragma once

#include <memory>

namespace squeeze {

struct BackendCache {
  mutable std::shared_ptr<void> value;
  bool operator==(const BackendCache&) const { return true; }
};

}  // namespace squeeze
