#include "engine/common/serial_blas.h"

#include <cblas.h>

#include <mutex>

namespace squeeze {
namespace {

std::mutex g_mu;
int g_scopes = 0;         // guarded by g_mu
int g_saved_threads = 0;  // guarded by g_mu: OpenBLAS's count before the first scope

}  // namespace

ScopedSerialBlas::ScopedSerialBlas() {
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_scopes++ == 0) {
    g_saved_threads = openblas_get_num_threads();
    openblas_set_num_threads(1);
  }
}

ScopedSerialBlas::~ScopedSerialBlas() {
  std::lock_guard<std::mutex> lock(g_mu);
  if (--g_scopes == 0) openblas_set_num_threads(g_saved_threads);
}

}  // namespace squeeze
