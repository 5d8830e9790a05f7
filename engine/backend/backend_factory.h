// Picks the compute backend for a model's attention shape: the CUDA backend when this build has
// it, a GPU is visible and the kernels support the shape, else the CPU reference. The only place
// that names the concrete backends (llama.cpp's ggml-backend registry plays this role).
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/backend/backend.h"

namespace squeeze {

// The attention shape the backend must support.
struct BackendRequirements {
  int head_dim = 0;
  int num_heads = 0;  // query heads
  int num_kv_heads = 0;
};

// Whether this build has the CUDA backend and a GPU is visible.
bool CudaAvailable();

// The backend for `device` ("auto", "cpu" or "cuda") able to run `needs`; `chosen` receives
// "cpu" or "cuda" and `description` the device in words. "auto" falls back to the CPU when no
// GPU is visible or the shape is not supported by the CUDA kernels (and says why in
// `description` and in a warning log line); "cuda" refuses then, with the reason.
absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(std::string_view device,
                                                     const BackendRequirements& needs,
                                                     std::string* chosen, std::string* description);

}  // namespace squeeze
