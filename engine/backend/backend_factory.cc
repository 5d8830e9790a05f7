#include "engine/backend/backend_factory.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/backend/cpu/cpu_backend.h"
#include "engine/common/status_macros.h"
#include "spdlog/spdlog.h"
#if SQUEEZE_HAVE_CUDA
#include "engine/backend/cuda/cuda_backend.h"
#endif

namespace squeeze {

bool CudaAvailable() {
#if SQUEEZE_HAVE_CUDA
  return CudaDeviceAvailable();
#else
  return false;
#endif
}

absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(std::string_view device,
                                                     const BackendRequirements& needs,
                                                     std::string* chosen,
                                                     std::string* description) {
  if (device != "auto" && device != "cpu" && device != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown device '", std::string(device), "' (expected auto, cpu or cuda)"));
  }
  std::string why_cpu = "requested";
  if (device != "cpu") {
#if SQUEEZE_HAVE_CUDA
    absl::Status supported =
        CudaBackend::Supports(needs.head_dim, needs.num_heads, needs.num_kv_heads);
    if (device == "cuda" && !supported.ok()) return supported;
    if (!supported.ok()) {
      why_cpu = std::string(supported.message());
    } else if (!CudaDeviceAvailable()) {
      if (device == "cuda") {
        return absl::FailedPreconditionError("--device=cuda but no CUDA device is visible");
      }
      why_cpu = "no CUDA device visible";
    } else {
      ASSIGN_OR_RETURN(std::unique_ptr<CudaBackend> cuda, CudaBackend::Create(0));
      *chosen = "cuda";
      *description = cuda->Describe();
      return std::unique_ptr<Backend>(std::move(cuda));
    }
#else
    if (device == "cuda") {
      return absl::FailedPreconditionError("--device=cuda but this build has no CUDA backend");
    }
    why_cpu = "built without CUDA";
#endif
  }
  if (device == "auto") {
    // Never a silent fallback: the CPU reference is orders of magnitude slower.
    spdlog::warn("--device=auto: running on the CPU backend: {}", why_cpu);
  }
  *chosen = "cpu";
  *description = absl::StrCat("CPU, fp32 reference (", why_cpu, ")");
  return std::unique_ptr<Backend>(std::make_unique<CpuBackend>());
}

}  // namespace squeeze
