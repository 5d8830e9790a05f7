#include "engine/model/load_model.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/backend/cpu/cpu_backend.h"
#include "engine/common/status_macros.h"
#include "engine/model/weights.h"
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
                                                     const ModelConfig& config,
                                                     std::string* chosen,
                                                     std::string* description) {
  if (device != "auto" && device != "cpu" && device != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown device '", std::string(device), "' (expected auto, cpu or cuda)"));
  }
  std::string why_cpu = "requested";
  if (device != "cpu") {
#if SQUEEZE_HAVE_CUDA
    absl::Status supported = CudaBackend::Supports(config);
    if (device == "cuda" && !supported.ok()) return supported;
    if (!CudaDeviceAvailable()) {
      if (device == "cuda") {
        return absl::FailedPreconditionError("--device=cuda but no CUDA device is visible");
      }
      why_cpu = "no CUDA device visible";
    } else if (!supported.ok()) {
      why_cpu = std::string(supported.message());
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
  *chosen = "cpu";
  *description = absl::StrCat("CPU, fp32 reference (", why_cpu, ")");
  return std::unique_ptr<Backend>(std::make_unique<CpuBackend>());
}

absl::StatusOr<LoadedModel> LoadModel(const ModelLoadOptions& options) {
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(options.model_dir));
  LoadedModel loaded;
  ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend,
                   MakeBackend(options.device, config, &loaded.device, &loaded.description));
  if (options.random_weights) {
    ASSIGN_OR_RETURN(loaded.model, LlamaModel::CreateRandom(std::move(config), std::move(backend),
                                                            options.random_seed));
  } else {
    ASSIGN_OR_RETURN(LlamaWeights weights, LoadLlamaWeights(options.model_dir, config));
    ASSIGN_OR_RETURN(loaded.model,
                     LlamaModel::Create(std::move(config), std::move(weights), std::move(backend)));
  }
#if SQUEEZE_HAVE_CUDA
  // What the memory left after the weights holds: KV tokens (contexts and sequences together).
  if (auto* cuda = dynamic_cast<CudaBackend*>(&loaded.model->backend())) {
    size_t free_bytes = 0, total = 0;
    if (cuda->MemoryInfo(&free_bytes, &total).ok()) {
      const ModelConfig& c = loaded.model->config();
      const double per_token = 2.0 * c.num_layers * c.num_kv_heads * c.head_dim * 2;  // bf16
      const size_t headroom = CudaBackend::ResidentHeadroom(total);
      const double usable = free_bytes > headroom ? static_cast<double>(free_bytes - headroom) : 0;
      absl::StrAppendFormat(&loaded.description,
                            "; after the weights %.1f GiB free: room for about %.0f tokens of K/V "
                            "(%.0f KiB per token) next to %.1f GiB kept for activations; idle "
                            "contexts are evicted from the GPU when it fills",
                            free_bytes / 1073741824.0, usable / per_token, per_token / 1024.0,
                            headroom / 1073741824.0);
    }
  }
#endif
  return loaded;
}

}  // namespace squeeze
