#include "engine/model/tensor_parallel.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"

namespace squeeze {
namespace {

// Rows [first, first + count) of a row-major [rows, cols] matrix.
std::vector<float> Rows(const std::vector<float>& m, size_t cols, size_t first, size_t count) {
  if (m.empty()) return {};
  return std::vector<float>(m.begin() + first * cols, m.begin() + (first + count) * cols);
}

// Columns [first, first + count) of a row-major [rows, cols] matrix.
std::vector<float> Columns(const std::vector<float>& m, size_t cols, size_t first, size_t count) {
  const size_t rows = m.size() / cols;
  std::vector<float> out;
  out.reserve(rows * count);
  for (size_t r = 0; r < rows; ++r) {
    const auto row = m.begin() + r * cols + first;
    out.insert(out.end(), row, row + count);
  }
  return out;
}

}  // namespace

absl::Status CheckTensorParallel(const ModelConfig& config, int ranks) {
  if (ranks < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor parallel ranks must be >= 1, got ", ranks));
  }
  const struct {
    const char* name;
    int value;
  } dims[] = {{"num_attention_heads", config.num_heads},
              {"num_key_value_heads", config.num_kv_heads},
              {"intermediate_size", config.intermediate_size}};
  for (const auto& dim : dims) {
    if (dim.value % ranks != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the model cannot be split over ", ranks, " ranks: ", dim.name, " = ", dim.value,
          " is not a multiple of it (KV heads are sharded, not replicated)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ShardConfig(const ModelConfig& config, int ranks) {
  RETURN_IF_ERROR(CheckTensorParallel(config, ranks));
  ModelConfig shard = config;
  shard.num_heads /= ranks;
  shard.num_kv_heads /= ranks;
  shard.intermediate_size /= ranks;
  return shard;
}

absl::StatusOr<LlamaWeights> ShardWeights(const LlamaWeights& weights, const ModelConfig& config,
                                          int rank, int ranks) {
  RETURN_IF_ERROR(CheckTensorParallel(config, ranks));
  if (rank < 0 || rank >= ranks) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", rank, " is outside [0, ", ranks, ")"));
  }
  if (weights.layers.size() != static_cast<size_t>(config.num_layers)) {
    return absl::InvalidArgumentError(absl::StrCat("the weights have ", weights.layers.size(),
                                                   " layers, the config ", config.num_layers));
  }
  const size_t D = config.hidden_size, d = config.head_dim;
  const size_t q_rows = config.num_heads / ranks * d, kv_rows = config.num_kv_heads / ranks * d;
  const size_t i_rows = config.intermediate_size / ranks;
  const size_t q_dim = config.num_heads * d, I = config.intermediate_size;
  LlamaWeights out;
  out.embed = weights.embed;
  out.final_norm = weights.final_norm;
  out.lm_head = weights.lm_head;
  out.layers.reserve(weights.layers.size());
  for (size_t l = 0; l < weights.layers.size(); ++l) {
    const LayerWeights& w = weights.layers[l];
    if (w.wq.size() != q_dim * D || w.wo.size() != D * q_dim || w.w_down.size() != D * I) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer ", l, ": weight shapes do not match the config"));
    }
    LayerWeights s;
    s.attn_norm = w.attn_norm;
    s.wq = Rows(w.wq, D, rank * q_rows, q_rows);
    s.wk = Rows(w.wk, D, rank * kv_rows, kv_rows);
    s.wv = Rows(w.wv, D, rank * kv_rows, kv_rows);
    s.wo = Columns(w.wo, q_dim, rank * q_rows, q_rows);
    s.bq = Rows(w.bq, 1, rank * q_rows, q_rows);
    s.bk = Rows(w.bk, 1, rank * kv_rows, kv_rows);
    s.bv = Rows(w.bv, 1, rank * kv_rows, kv_rows);
    s.bo = w.bo;
    s.q_norm = w.q_norm;
    s.k_norm = w.k_norm;
    s.mlp_norm = w.mlp_norm;
    s.w_gate = Rows(w.w_gate, D, rank * i_rows, i_rows);
    s.w_up = Rows(w.w_up, D, rank * i_rows, i_rows);
    s.w_down = Columns(w.w_down, I, rank * i_rows, i_rows);
    out.layers.push_back(std::move(s));
  }
  return out;
}

}  // namespace squeeze
