// LoadLlamaWeights: Hugging Face checkpoints (*.safetensors) of the supported families -> fp32
// host arrays in one layout (weights.h).
#include "engine/model/weights.h"

#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
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

// The checkpoint's tensors, handed out by name; remembers which were taken so that the rest
// can be refused.
class TensorReader {
 public:
  explicit TensorReader(const CheckpointIndex& index) : index_(index) {}

  bool Has(const std::string& name) const { return index_.by_name.contains(name); }

  // Finds `name`, checks its shape and converts it to fp32.
  absl::StatusOr<std::vector<float>> Read(const std::string& name,
                                          const std::vector<int64_t>& expected_shape) {
    auto it = index_.by_name.find(name);
    if (it == index_.by_name.end()) {
      return absl::InvalidArgumentError(absl::StrCat("missing tensor '", name, "'"));
    }
    used_.insert(name);
    const auto& [tensor, file] = it->second;
    if (tensor->shape != expected_shape) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "' has shape ", ShapeString(tensor->shape), ", expected ",
                       ShapeString(expected_shape), " (in '", file->path(), "')"));
    }
    std::vector<float> values(tensor->num_elements());
    absl::Status status = ToFloat32(*tensor, values);
    if (!status.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(status.message(), " (in '", file->path(), "')"));
    }
    return values;
  }

  void Ignore(const std::string& name) { used_.insert(name); }

  // An error listing the tensors nothing read. Rotary inv_freq buffers (old Llama checkpoints
  // store them) carry nothing the config does not.
  absl::Status CheckAllUsed(const ModelConfig& config) const {
    std::vector<std::string> unused;
    for (const auto& [name, entry] : index_.by_name) {
      if (!used_.contains(name) && !absl::EndsWith(name, "rotary_emb.inv_freq")) {
        unused.push_back(name);
      }
    }
    if (unused.empty()) return absl::OkStatus();
    std::sort(unused.begin(), unused.end());
    const size_t shown = std::min<size_t>(unused.size(), 5);
    return absl::InvalidArgumentError(absl::StrCat(
        "the checkpoint has ", unused.size(), " tensor(s) a ", config.architecture,
        " with this config.json does not use (e.g. '",
        absl::StrJoin(unused.begin(), unused.begin() + shown, "', '"),
        "'); quantised, multimodal or otherwise modified checkpoints are not supported"));
  }

 private:
  const CheckpointIndex& index_;
  absl::flat_hash_set<std::string> used_;
};

// Rows [begin, begin + rows) of a row-major [*, cols] matrix.
std::vector<float> RowBlock(const std::vector<float>& m, int64_t begin, int64_t rows,
                            int64_t cols) {
  return std::vector<float>(m.begin() + begin * cols, m.begin() + (begin + rows) * cols);
}

absl::Status LoadAttention(TensorReader& r, const ModelConfig& c, const std::string& p,
                           LayerWeights& l) {
  const int64_t D = c.hidden_size, d = c.head_dim;
  const int64_t q_dim = c.num_heads * d, kv_dim = c.num_kv_heads * d;
  if (c.fused_qkv) {
    // Phi-3: one [q_dim + 2 kv_dim, D] projection, rows in q, k, v order.
    ASSIGN_OR_RETURN(std::vector<float> qkv,
                     r.Read(p + "self_attn.qkv_proj.weight", {q_dim + 2 * kv_dim, D}));
    l.wq = RowBlock(qkv, 0, q_dim, D);
    l.wk = RowBlock(qkv, q_dim, kv_dim, D);
    l.wv = RowBlock(qkv, q_dim + kv_dim, kv_dim, D);
  } else {
    ASSIGN_OR_RETURN(l.wq, r.Read(p + "self_attn.q_proj.weight", {q_dim, D}));
    ASSIGN_OR_RETURN(l.wk, r.Read(p + "self_attn.k_proj.weight", {kv_dim, D}));
    ASSIGN_OR_RETURN(l.wv, r.Read(p + "self_attn.v_proj.weight", {kv_dim, D}));
  }
  ASSIGN_OR_RETURN(l.wo, r.Read(p + "self_attn.o_proj.weight", {D, q_dim}));
  if (c.qkv_bias) {
    ASSIGN_OR_RETURN(l.bq, r.Read(p + "self_attn.q_proj.bias", {q_dim}));
    ASSIGN_OR_RETURN(l.bk, r.Read(p + "self_attn.k_proj.bias", {kv_dim}));
    ASSIGN_OR_RETURN(l.bv, r.Read(p + "self_attn.v_proj.bias", {kv_dim}));
  }
  if (c.o_bias) {
    ASSIGN_OR_RETURN(l.bo, r.Read(p + "self_attn.o_proj.bias", {D}));
  }
  if (c.qk_norm) {
    ASSIGN_OR_RETURN(l.q_norm, r.Read(p + "self_attn.q_norm.weight", {d}));
    ASSIGN_OR_RETURN(l.k_norm, r.Read(p + "self_attn.k_norm.weight", {d}));
  }
  return absl::OkStatus();
}

absl::Status LoadMlp(TensorReader& r, const ModelConfig& c, const std::string& p, LayerWeights& l) {
  const int64_t D = c.hidden_size, I = c.intermediate_size;
  if (c.fused_qkv) {
    // Phi-3: gate_up_proj [2I, D], the gate rows first (transformers' chunk(2, dim=-1)).
    ASSIGN_OR_RETURN(std::vector<float> gate_up, r.Read(p + "mlp.gate_up_proj.weight", {2 * I, D}));
    l.w_gate = RowBlock(gate_up, 0, I, D);
    l.w_up = RowBlock(gate_up, I, I, D);
  } else {
    ASSIGN_OR_RETURN(l.w_gate, r.Read(p + "mlp.gate_proj.weight", {I, D}));
    ASSIGN_OR_RETURN(l.w_up, r.Read(p + "mlp.up_proj.weight", {I, D}));
  }
  ASSIGN_OR_RETURN(l.w_down, r.Read(p + "mlp.down_proj.weight", {D, I}));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<LlamaWeights> LoadLlamaWeights(const std::string& model_dir,
                                              const ModelConfig& config) {
  ASSIGN_OR_RETURN(CheckpointIndex index, OpenCheckpoint(model_dir));
  TensorReader r(index);
  const int64_t D = config.hidden_size;
  const int64_t V = config.vocab_size;

  LlamaWeights w;
  ASSIGN_OR_RETURN(w.embed, r.Read("model.embed_tokens.weight", {V, D}));
  w.layers.resize(config.num_layers);
  for (int i = 0; i < config.num_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    LayerWeights& l = w.layers[i];
    ASSIGN_OR_RETURN(l.attn_norm, r.Read(p + "input_layernorm.weight", {D}));
    RETURN_IF_ERROR(LoadAttention(r, config, p, l));
    ASSIGN_OR_RETURN(l.mlp_norm, r.Read(p + "post_attention_layernorm.weight", {D}));
    RETURN_IF_ERROR(LoadMlp(r, config, p, l));
  }
  ASSIGN_OR_RETURN(w.final_norm, r.Read("model.norm.weight", {D}));
  if (config.tie_word_embeddings) {
    // transformers ties lm_head to the embedding even if a stale lm_head.weight is stored.
    r.Ignore("lm_head.weight");
    w.lm_head = w.embed;
  } else if (r.Has("lm_head.weight")) {
    ASSIGN_OR_RETURN(w.lm_head, r.Read("lm_head.weight", {V, D}));
  } else {
    return absl::InvalidArgumentError(
        "missing tensor 'lm_head.weight' (config has tie_word_embeddings=false)");
  }
  RETURN_IF_ERROR(r.CheckAllUsed(config));
  return w;
}

}  // namespace squeeze
