#include "engine/model/load_model.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/backend/backend_factory.h"
#include "engine/common/status_macros.h"
#include "engine/model/weights.h"

namespace squeeze {

absl::StatusOr<LoadedModel> LoadModel(const ModelLoadOptions& options) {
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(options.model_dir));
  LoadedModel loaded;
  ASSIGN_OR_RETURN(
      std::unique_ptr<Backend> backend,
      MakeBackend(options.device, {config.head_dim, config.num_heads, config.num_kv_heads},
                  &loaded.device, &loaded.description));
  if (options.random_weights) {
    ASSIGN_OR_RETURN(loaded.model, LlamaModel::CreateRandom(std::move(config), std::move(backend),
                                                            options.random_seed));
  } else {
    ASSIGN_OR_RETURN(LlamaWeights weights, LoadLlamaWeights(options.model_dir, config));
    ASSIGN_OR_RETURN(loaded.model,
                     LlamaModel::Create(std::move(config), std::move(weights), std::move(backend)));
  }
  // What the memory left after the weights holds: KV tokens (contexts and sequences together).
  if (const auto memory = loaded.model->backend().device_memory()) {
    const ModelConfig& c = loaded.model->config();
    const double per_token = 2.0 * c.num_layers * c.num_kv_heads * c.head_dim * 2;  // bf16
    const size_t free_bytes = memory->free_bytes, headroom = memory->headroom_bytes;
    const double usable = free_bytes > headroom ? static_cast<double>(free_bytes - headroom) : 0;
    absl::StrAppendFormat(&loaded.description,
                          "; after the weights %.1f GiB free: room for about %.0f tokens of K/V "
                          "(%.0f KiB per token) next to %.1f GiB kept for activations; idle "
                          "contexts are evicted from the GPU when it fills",
                          free_bytes / 1073741824.0, usable / per_token, per_token / 1024.0,
                          headroom / 1073741824.0);
  }
  return loaded;
}

}  // namespace squeeze
