// Picks the compute backend and builds a LlamaModel on it: from a Hugging Face directory, or
// with random weights of a config.json's shape made on the backend itself (benchmarks at real
// sizes, e.g. bench/configs/llama3-8b, without downloading weights).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/model/config.h"
#include "engine/model/llama_model.h"

namespace squeeze {

struct ModelLoadOptions {
  std::string model_dir;        // config.json, and *.safetensors unless random_weights
  std::string device = "auto";  // auto (cuda when a GPU is visible, else cpu) | cpu | cuda
  bool random_weights = false;
  uint64_t random_seed = 1;
};

struct LoadedModel {
  std::unique_ptr<LlamaModel> model;
  std::string device;       // "cpu" or "cuda"
  std::string description;  // the device in words, for the start-up log
};

// Whether this build has the CUDA backend and a GPU is visible.
bool CudaAvailable();

// The backend for `device` ("auto", "cpu" or "cuda") able to run `config`; `chosen` receives
// "cpu" or "cuda" and `description` the device in words. "auto" falls back to the CPU when no
// GPU is visible or the model's shape is not supported by the CUDA kernels (and says why in
// `description`).
absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(std::string_view device,
                                                     const ModelConfig& config,
                                                     std::string* chosen,
                                                     std::string* description);

absl::StatusOr<LoadedModel> LoadModel(const ModelLoadOptions& options);

}  // namespace squeeze
