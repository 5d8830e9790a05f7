// LoadLlamaWeights: Hugging Face Llama/Mistral checkpoints (*.safetensors) -> fp32 host arrays.
#include "engine/model/weights.h"

#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/common/status_macros.h"
#include "engine/model/safetensors.h"

namespace squeeze {
namespace {

// All tensors of all shards of one model directory, by name.
struct CheckpointIndex {
  std::vector<std::unique_ptr<SafetensorsFile>> files;  // keeps the mappings alive
  absl::flat_hash_map<std::string, std::pair<const SafetensorsTensor*, const SafetensorsFile*>>
      by_name;
};

absl::StatusOr<CheckpointIndex> OpenCheckpoint(const std::string& model_dir) {
  std::error_code ec;
  std::filesystem::directory_iterator it(model_dir, ec);
  if (ec) {
    return absl::NotFoundError(
        absl::StrCat("cannot list model directory '", model_dir, "': ", ec.message()));
  }
  // Sorted so that shard order, and thus error messages, do not depend on the file system.
  std::vector<std::string> paths;
  for (const auto& entry : it) {
    if (entry.path().extension() == ".safetensors") paths.push_back(entry.path().string());
  }
  std::sort(paths.begin(), paths.end());
  if (paths.empty()) {
    return absl::NotFoundError(absl::StrCat("no *.safetensors files in '", model_dir, "'"));
  }
  CheckpointIndex index;
  for (const std::string& path : paths) {
    ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
    for (const SafetensorsTensor& t : file->tensors()) {
      auto [pos, inserted] = index.by_name.try_emplace(t.name, &t, file.get());
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "' appears in both '",
                                                       pos->second.second->path(), "' and '", path,
                                                       "'"));
      }
    }
    index.files.push_back(std::move(file));
  }
  return index;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Finds `name`, checks its shape and converts it to fp32.
absl::StatusOr<std::vector<float>> LoadTensor(const CheckpointIndex& index, const std::string& name,
                                              const std::vector<int64_t>& expected_shape) {
  auto it = index.by_name.find(name);
  if (it == index.by_name.end()) {
    return absl::InvalidArgumentError(absl::StrCat("missing tensor '", name, "'"));
  }
  const auto& [tensor, file] = it->second;
  if (tensor->shape != expected_shape) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", name, "' has shape ", ShapeString(tensor->shape), ", expected ",
                     ShapeString(expected_shape), " (in '", file->path(), "')"));
  }
  std::vector<float> values(tensor->num_elements());
  absl::Status status = ToFloat32(*tensor, values);
  if (!status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(status.message(), " (in '", file->path(), "')"));
  }
  return values;
}

}  // namespace

absl::StatusOr<LlamaWeights> LoadLlamaWeights(const std::string& model_dir,
                                              const ModelConfig& config) {
  ASSIGN_OR_RETURN(CheckpointIndex index, OpenCheckpoint(model_dir));
  const int64_t D = config.hidden_size;
  const int64_t I = config.intermediate_size;
  const int64_t V = config.vocab_size;
  const int64_t q_dim = int64_t{config.num_heads} * config.head_dim;
  const int64_t kv_dim = int64_t{config.num_kv_heads} * config.head_dim;

  LlamaWeights w;
  ASSIGN_OR_RETURN(w.embed, LoadTensor(index, "model.embed_tokens.weight", {V, D}));
  w.layers.resize(config.num_layers);
  for (int i = 0; i < config.num_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    LayerWeights& l = w.layers[i];
    ASSIGN_OR_RETURN(l.attn_norm, LoadTensor(index, p + "input_layernorm.weight", {D}));
    ASSIGN_OR_RETURN(l.wq, LoadTensor(index, p + "self_attn.q_proj.weight", {q_dim, D}));
    ASSIGN_OR_RETURN(l.wk, LoadTensor(index, p + "self_attn.k_proj.weight", {kv_dim, D}));
    ASSIGN_OR_RETURN(l.wv, LoadTensor(index, p + "self_attn.v_proj.weight", {kv_dim, D}));
    ASSIGN_OR_RETURN(l.wo, LoadTensor(index, p + "self_attn.o_proj.weight", {D, q_dim}));
    ASSIGN_OR_RETURN(l.mlp_norm, LoadTensor(index, p + "post_attention_layernorm.weight", {D}));
    ASSIGN_OR_RETURN(l.w_gate, LoadTensor(index, p + "mlp.gate_proj.weight", {I, D}));
    ASSIGN_OR_RETURN(l.w_up, LoadTensor(index, p + "mlp.up_proj.weight", {I, D}));
    ASSIGN_OR_RETURN(l.w_down, LoadTensor(index, p + "mlp.down_proj.weight", {D, I}));
  }
  ASSIGN_OR_RETURN(w.final_norm, LoadTensor(index, "model.norm.weight", {D}));
  if (config.tie_word_embeddings) {
    // transformers ties lm_head to the embedding even if a stale lm_head.weight is stored.
    w.lm_head = w.embed;
  } else if (index.by_name.contains("lm_head.weight")) {
    ASSIGN_OR_RETURN(w.lm_head, LoadTensor(index, "lm_head.weight", {V, D}));
  } else {
    return absl::InvalidArgumentError(
        "missing tensor 'lm_head.weight' (config has tie_word_embeddings=false)");
  }
  return w;
}

}  // namespace squeeze
