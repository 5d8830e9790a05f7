// OpenBLAS runs every call on one process-wide thread pool, and calls made at the same time
// from several threads wait for one another on it: host loops that already spread BLAS calls
// over the cores (ParallelFor) would run them one after the other. While a ScopedSerialBlas
// lives, every call runs on its calling thread instead. Scopes may overlap (on any threads):
// the first sets OpenBLAS to one thread, the last restores the count it found.
#pragma once

namespace squeeze {

class ScopedSerialBlas {
 public:
  ScopedSerialBlas();
  ~ScopedSerialBlas();
  ScopedSerialBlas(const ScopedSerialBlas&) = delete;
  ScopedSerialBlas& operator=(const ScopedSerialBlas&) = delete;
};

}  // namespace squeeze
