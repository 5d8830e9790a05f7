// The one way CUDA and cuBLAS failures become absl::Status in the CUDA backend: CudaError for a
// single call, and CudaFault for a device whose first asynchronous failure makes every later
// operation a no-op (the backend is then unusable; the server reports NOT_SERVING instead of
// crashing).
#pragma once

#include <cuda_runtime.h>

#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace squeeze {

// INTERNAL "cuda: <what>: <error name> (<error string>)".
inline absl::Status CudaError(cudaError_t err, const char* what) {
  return absl::InternalError(absl::StrCat("cuda: ", what, ": ", cudaGetErrorName(err), " (",
                                          cudaGetErrorString(err), ")"));
}

// The first failure of a device's work; later checks keep it.
class CudaFault {
 public:
  bool ok() const { return status_.ok(); }
  const absl::Status& status() const { return status_; }
  // Records `err` (when it is a failure and none is recorded yet); returns ok().
  bool Check(cudaError_t err, const char* what) {
    if (err != cudaSuccess && status_.ok()) status_ = CudaError(err, what);
    return ok();
  }
  // The same for a cuBLAS status (CUBLAS_STATUS_SUCCESS is 0).
  bool CheckBlas(int blas_status, const char* what) {
    if (blas_status != 0 && status_.ok()) {
      status_ = absl::InternalError(absl::StrCat("cuda: ", what, ": cuBLAS status ", blas_status));
    }
    return ok();
  }
  // Records a failure that is not a CUDA error code (an allocation that could not be made).
  void Set(absl::Status why) {
    if (status_.ok() && !why.ok()) status_ = std::move(why);
  }

 private:
  absl::Status status_;
};

}  // namespace squeeze
