// Builds a LlamaModel on the backend the factory picks (engine/backend/backend_factory.h): from a
// Hugging Face directory, or with random weights of a config.json's shape made on the backend
// itself (benchmarks at real sizes, e.g. bench/configs/llama3-8b, without downloading weights).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

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

absl::StatusOr<LoadedModel> LoadModel(const ModelLoadOptions& options);

}  // namespace squeeze
