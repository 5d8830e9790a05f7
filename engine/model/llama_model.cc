#include "engine/model/llama_model.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "engine/model/rope.h"

namespace squeeze {
namespace {

absl::Status CheckShape(const std::vector<float>& tensor, size_t rows, size_t cols,
                        const std::string& name) {
  if (tensor.size() == rows * cols) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("weight '", name, "' has ", tensor.size(),
                                                 " values, expected [", rows, ", ", cols,
                                                 "] = ", rows * cols, " from config.json"));
}

absl::Status ValidateConfig(const ModelConfig& c) {
  const std::pair<const char*, int> positive[] = {{"vocab_size", c.vocab_size},
                                                  {"hidden_size", c.hidden_size},
                                                  {"intermediate_size", c.intermediate_size},
                                                  {"num_hidden_layers", c.num_layers},
                                                  {"num_attention_heads", c.num_heads},
                                                  {"num_key_value_heads", c.num_kv_heads},
                                                  {"head_dim", c.head_dim}};
  for (const auto& [field, value] : positive) {
    if (value <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("model config: ", field, " must be > 0, got ", value));
    }
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config: num_attention_heads (", c.num_heads,
                     ") must be a multiple of num_key_value_heads (", c.num_kv_heads, ")"));
  }
  if (!(c.rms_norm_eps >= 0.0f) || !std::isfinite(c.rms_norm_eps)) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config: rms_norm_eps must be >= 0, got ", c.rms_norm_eps));
  }
  return absl::OkStatus();
}

// Tensor names follow the Hugging Face checkpoint so an error points at the file's tensor.
absl::Status ValidateWeights(const ModelConfig& c, const LlamaWeights& w) {
  const size_t D = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  const size_t q_dim = static_cast<size_t>(c.num_heads) * c.head_dim;
  const size_t kv_dim = static_cast<size_t>(c.num_kv_heads) * c.head_dim;
  RETURN_IF_ERROR(CheckShape(w.embed, V, D, "model.embed_tokens.weight"));
  if (w.layers.size() != static_cast<size_t>(c.num_layers)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "weights have ", w.layers.size(), " layers, config num_hidden_layers is ", c.num_layers));
  }
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const LayerWeights& lw = w.layers[l];
    const std::string p = absl::StrCat("model.layers.", l, ".");
    RETURN_IF_ERROR(CheckShape(lw.attn_norm, 1, D, p + "input_layernorm.weight"));
    RETURN_IF_ERROR(CheckShape(lw.wq, q_dim, D, p + "self_attn.q_proj.weight"));
    RETURN_IF_ERROR(CheckShape(lw.wk, kv_dim, D, p + "self_attn.k_proj.weight"));
    RETURN_IF_ERROR(CheckShape(lw.wv, kv_dim, D, p + "self_attn.v_proj.weight"));
    RETURN_IF_ERROR(CheckShape(lw.wo, D, q_dim, p + "self_attn.o_proj.weight"));
    const size_t bias = c.qkv_bias ? 1 : 0, o_bias = c.o_bias ? 1 : 0, norm = c.qk_norm ? 1 : 0;
    RETURN_IF_ERROR(CheckShape(lw.bq, bias, q_dim, p + "self_attn.q_proj.bias"));
    RETURN_IF_ERROR(CheckShape(lw.bk, bias, kv_dim, p + "self_attn.k_proj.bias"));
    RETURN_IF_ERROR(CheckShape(lw.bv, bias, kv_dim, p + "self_attn.v_proj.bias"));
    RETURN_IF_ERROR(CheckShape(lw.bo, o_bias, D, p + "self_attn.o_proj.bias"));
    RETURN_IF_ERROR(CheckShape(lw.q_norm, norm, c.head_dim, p + "self_attn.q_norm.weight"));
    RETURN_IF_ERROR(CheckShape(lw.k_norm, norm, c.head_dim, p + "self_attn.k_norm.weight"));
    RETURN_IF_ERROR(CheckShape(lw.mlp_norm, 1, D, p + "post_attention_layernorm.weight"));
    RETURN_IF_ERROR(CheckShape(lw.w_gate, I, D, p + "mlp.gate_proj.weight"));
    RETURN_IF_ERROR(CheckShape(lw.w_up, I, D, p + "mlp.up_proj.weight"));
    RETURN_IF_ERROR(CheckShape(lw.w_down, D, I, p + "mlp.down_proj.weight"));
  }
  RETURN_IF_ERROR(CheckShape(w.final_norm, 1, D, "model.norm.weight"));
  RETURN_IF_ERROR(CheckShape(w.lm_head, V, D, "lm_head.weight"));
  return absl::OkStatus();
}

// transformers multiplies cos and sin by the RoPE attention factor (YaRN, LongRoPE), i.e. q and k
// after RoPE. RoPE is linear, so the same scale applied before it is exact: it is folded into
// the per-head q/k norm gains when the model has them (their output is what RoPE rotates), else
// into the q and k projections and their biases. Keys are then stored exactly as transformers
// computes them, and every consumer of q and k (attention, clustering, selection) sees them.
void FoldRopeAttentionFactor(const ModelConfig& c, LlamaWeights& w) {
  const float f = RopeAttentionFactor(c.rope_scaling);
  if (f == 1.0f) return;
  auto scale = [f](std::vector<float>& v) {
    for (float& x : v) x *= f;
  };
  for (LayerWeights& l : w.layers) {
    if (c.qk_norm) {
      scale(l.q_norm);
      scale(l.k_norm);
    } else {
      scale(l.wq);
      scale(l.bq);
      scale(l.wk);
      scale(l.bk);
    }
  }
}

bool SameShape(const KvShape& a, const KvShape& b) {
  return a.num_layers == b.num_layers && a.num_kv_heads == b.num_kv_heads &&
         a.head_dim == b.head_dim;
}

std::string ShapeString(const KvShape& s) {
  return absl::StrCat("[layers=", s.num_layers, ", kv_heads=", s.num_kv_heads,
                      ", head_dim=", s.head_dim, "]");
}

// Checks every step before the forward touches any state. Errors name the step and the field.
absl::Status ValidateSteps(std::span<const SequenceStep> steps, const ModelConfig& c,
                           const KvShape& shape, const Backend& be) {
  absl::flat_hash_set<const SequenceKV*> seen_kv;
  for (size_t i = 0; i < steps.size(); ++i) {
    const SequenceStep& s = steps[i];
    if (s.tokens.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("Forward: step ", i, " has no tokens"));
    }
    if (s.kv == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("Forward: step ", i, " has no SequenceKV"));
    }
    if (!seen_kv.insert(s.kv).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("Forward: step ", i, " uses a SequenceKV already used by another step"));
    }
    const bool storage_ok =
        s.kv->backend() == &be ||
        (s.kv->backend() == nullptr && be.host_memory() && be.kv_dtype() == DType::kF32);
    if (!storage_ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Forward: step ", i, " SequenceKV lives in another backend's memory than the model's (",
          std::string(be.name()), "); make it with LlamaModel::NewSequenceKV()"));
    }
    if (!SameShape(s.kv->shape(), shape)) {
      return absl::InvalidArgumentError(
          absl::StrCat("Forward: step ", i, " SequenceKV shape ", ShapeString(s.kv->shape()),
                       " does not match the model's ", ShapeString(shape)));
    }
    if (s.context != nullptr) {
      const ContextKV& ctx = *s.context;
      const size_t elements = static_cast<size_t>(shape.num_layers) * shape.num_kv_heads *
                              std::max(ctx.num_tokens, 0) * shape.head_dim;
      if (!SameShape(ctx.shape, shape) || ctx.num_tokens < 0 || ctx.k.size() != elements ||
          ctx.v.size() != elements || ctx.k.dtype() != ctx.v.dtype()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Forward: step ", i, " fixed context KV ", ShapeString(ctx.shape), " with ",
            ctx.num_tokens, " tokens does not match the model's ", ShapeString(shape)));
      }
    } else if (s.fixed != nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("Forward: step ", i, " has a fixed-context selector but no context"));
    }
    for (size_t j = 0; j < s.tokens.size(); ++j) {
      if (s.tokens[j] < 0 || s.tokens[j] >= c.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("token id ", s.tokens[j], " (step ", i,
                                                       ", token ", j, ") is out of range [0, ",
                                                       c.vocab_size, ")"));
      }
    }
  }
  return absl::OkStatus();
}

// Host-side plan of one forward: the tokens of all steps concatenated, step i owning rows
// [offset[i], offset[i] + n_i).
struct StepPlan {
  std::vector<int32_t> tokens;      // [T]
  std::vector<int32_t> positions;   // [T] absolute positions
  std::vector<int32_t> offset;      // [steps]
  std::vector<int32_t> logit_rows;  // last row of each step with want_logits
};

StepPlan PlanSteps(std::span<const SequenceStep> steps) {
  StepPlan plan;
  plan.offset.resize(steps.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    const SequenceStep& s = steps[i];
    plan.offset[i] = static_cast<int32_t>(plan.tokens.size());
    const int base = (s.context ? s.context->num_tokens : 0) + s.kv->length();
    for (size_t j = 0; j < s.tokens.size(); ++j) {
      plan.tokens.push_back(s.tokens[j]);
      plan.positions.push_back(base + static_cast<int32_t>(j));
    }
    if (s.want_logits) plan.logit_rows.push_back(static_cast<int32_t>(plan.tokens.size() - 1));
  }
  return plan;
}

// The forward's activations, carved from one backend allocation sized by the step.
struct Activations {
  std::unique_ptr<Buffer> buffer;
  float* x = nullptr;             // [T, D] residual stream
  float* h = nullptr;             // [T, D] normed input of the attention / MLP block
  float* q = nullptr;             // [T, Hq, d]
  float* k = nullptr;             // [T, Hkv, d]
  float* v = nullptr;             // [T, Hkv, d]
  float* att = nullptr;           // [T, Hq, d] attention output
  float* gate = nullptr;          // [T, I] gate projection, then silu(gate) * up
  float* up = nullptr;            // [T, I]
  float* last = nullptr;          // [num_logits, D] last hidden rows
  float* logits = nullptr;        // [num_logits, V]
  int32_t* tokens = nullptr;      // [T]
  int32_t* positions = nullptr;   // [T]
  int32_t* logit_rows = nullptr;  // [num_logits]
};

absl::StatusOr<Activations> AllocateActivations(Backend& be, const ModelConfig& c, int T,
                                                int num_logits) {
  const size_t t = T, q_dim = static_cast<size_t>(c.num_heads) * c.head_dim;
  const size_t kv_dim = static_cast<size_t>(c.num_kv_heads) * c.head_dim;
  // Byte offsets, each rounded up to 64 bytes.
  size_t bytes = 0;
  auto add = [&bytes](size_t count, size_t elem_size) {
    const size_t offset = bytes;
    bytes += (count * elem_size + 63) / 64 * 64;
    return offset;
  };
  const size_t x = add(t * c.hidden_size, 4), h = add(t * c.hidden_size, 4);
  const size_t q = add(t * q_dim, 4), k = add(t * kv_dim, 4), v = add(t * kv_dim, 4);
  const size_t att = add(t * q_dim, 4);
  const size_t gate = add(t * c.intermediate_size, 4), up = add(t * c.intermediate_size, 4);
  const size_t last = add(static_cast<size_t>(num_logits) * c.hidden_size, 4);
  const size_t logits = add(static_cast<size_t>(num_logits) * c.vocab_size, 4);
  const size_t tokens = add(t, 4), positions = add(t, 4), rows = add(num_logits, 4);

  Activations a;
  ASSIGN_OR_RETURN(a.buffer, be.Allocate(bytes));
  char* base = a.buffer->as<char>();
  auto f32 = [base](size_t offset) { return reinterpret_cast<float*>(base + offset); };
  auto i32 = [base](size_t offset) { return reinterpret_cast<int32_t*>(base + offset); };
  a.x = f32(x);
  a.h = f32(h);
  a.q = f32(q);
  a.k = f32(k);
  a.v = f32(v);
  a.att = f32(att);
  a.gate = f32(gate);
  a.up = f32(up);
  a.last = f32(last);
  a.logits = f32(logits);
  a.tokens = i32(tokens);
  a.positions = i32(positions);
  a.logit_rows = i32(rows);
  return a;
}

// Appends the post-RoPE q rows [n, Hq*d] of the step's tokens at positions >= from_position.
void CaptureQueries(Backend& be, int layer, const float* q, const int32_t* positions, int n,
                    int q_dim, QueryCapture* capture) {
  std::vector<float>& dst = capture->q[layer];
  for (int j = 0; j < n; ++j) {
    if (positions[j] < capture->from_position) continue;
    const size_t old = dst.size();
    dst.resize(old + q_dim);
    be.CopyToHost(dst.data() + old, q + static_cast<size_t>(j) * q_dim, sizeof(float) * q_dim);
    if (layer == 0) capture->positions.push_back(positions[j]);
  }
}

}  // namespace

LlamaModel::LlamaModel(ModelConfig config, LlamaWeights weights, std::unique_ptr<Backend> backend)
    : config_(std::move(config)), weights_(std::move(weights)), backend_(std::move(backend)) {}

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Create(ModelConfig config,
                                                               LlamaWeights weights,
                                                               std::unique_ptr<Backend> backend) {
  if (backend == nullptr) return absl::InvalidArgumentError("LlamaModel needs a backend");
  RETURN_IF_ERROR(ValidateConfig(config));
  RETURN_IF_ERROR(ValidateWeights(config, weights));
  FoldRopeAttentionFactor(config, weights);
  std::unique_ptr<LlamaModel> model(
      new LlamaModel(std::move(config), std::move(weights), std::move(backend)));
  RETURN_IF_ERROR(model->UploadInvFreq());
  RETURN_IF_ERROR(model->Upload());
  return model;
}

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::CreateRandom(
    ModelConfig config, std::unique_ptr<Backend> backend, uint64_t seed) {
  if (backend == nullptr) return absl::InvalidArgumentError("LlamaModel needs a backend");
  RETURN_IF_ERROR(ValidateConfig(config));
  std::unique_ptr<LlamaModel> model(
      new LlamaModel(std::move(config), LlamaWeights{}, std::move(backend)));
  RETURN_IF_ERROR(model->UploadInvFreq());
  RETURN_IF_ERROR(model->MakeRandom(seed));
  return model;
}

absl::Status LlamaModel::UploadInvFreq() {
  ASSIGN_OR_RETURN(rope_inv_freq_,
                   ComputeRopeInvFreq(config_.head_dim, config_.rope_theta, config_.rope_scaling));
  ASSIGN_OR_RETURN(w_.inv_freq, backend_->UploadVector(rope_inv_freq_));
  return absl::OkStatus();
}

absl::Status LlamaModel::Upload() {
  Backend& be = *backend_;
  const ModelConfig& c = config_;
  const int D = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  const int q_dim = c.num_heads * c.head_dim, kv_dim = c.num_kv_heads * c.head_dim;
  auto matrix = [&](std::vector<float>& host, int rows, int cols) -> absl::StatusOr<Matrix> {
    ASSIGN_OR_RETURN(Matrix m, be.UploadMatrix(host, rows, cols));
    weight_bytes_ += static_cast<size_t>(rows) * cols * DTypeBytes(m.dtype);
    if (!be.borrows_host_weights()) std::vector<float>().swap(host);
    return m;
  };
  auto vector = [&](std::vector<float>& host) -> absl::StatusOr<const float*> {
    ASSIGN_OR_RETURN(const float* p, be.UploadVector(host));
    weight_bytes_ += host.size() * sizeof(float);
    if (!be.borrows_host_weights()) std::vector<float>().swap(host);
    return p;
  };
  LlamaWeights& hw = weights_;
  ASSIGN_OR_RETURN(w_.embed, matrix(hw.embed, V, D));
  w_.layers.resize(c.num_layers);
  for (int l = 0; l < c.num_layers; ++l) {
    LayerWeights& h = hw.layers[l];
    ResidentLayer& r = w_.layers[l];
    ASSIGN_OR_RETURN(r.attn_norm, vector(h.attn_norm));
    ASSIGN_OR_RETURN(r.wq, matrix(h.wq, q_dim, D));
    ASSIGN_OR_RETURN(r.wk, matrix(h.wk, kv_dim, D));
    ASSIGN_OR_RETURN(r.wv, matrix(h.wv, kv_dim, D));
    ASSIGN_OR_RETURN(r.wo, matrix(h.wo, D, q_dim));
    if (c.qkv_bias) {
      ASSIGN_OR_RETURN(r.bq, vector(h.bq));
      ASSIGN_OR_RETURN(r.bk, vector(h.bk));
      ASSIGN_OR_RETURN(r.bv, vector(h.bv));
    }
    if (c.o_bias) {
      ASSIGN_OR_RETURN(r.bo, vector(h.bo));
    }
    if (c.qk_norm) {
      ASSIGN_OR_RETURN(r.q_norm, vector(h.q_norm));
      ASSIGN_OR_RETURN(r.k_norm, vector(h.k_norm));
    }
    ASSIGN_OR_RETURN(r.mlp_norm, vector(h.mlp_norm));
    ASSIGN_OR_RETURN(r.gate, matrix(h.w_gate, I, D));
    ASSIGN_OR_RETURN(r.up, matrix(h.w_up, I, D));
    ASSIGN_OR_RETURN(r.down, matrix(h.w_down, D, I));
  }
  ASSIGN_OR_RETURN(w_.final_norm, vector(hw.final_norm));
  // Tied embeddings share one resident matrix (the host weights hold lm_head as a copy).
  if (c.tie_word_embeddings) {
    w_.lm_head = w_.embed;
    if (!be.borrows_host_weights()) std::vector<float>().swap(hw.lm_head);
  } else {
    ASSIGN_OR_RETURN(w_.lm_head, matrix(hw.lm_head, V, D));
  }
  return absl::OkStatus();
}

absl::Status LlamaModel::MakeRandom(uint64_t seed) {
  Backend& be = *backend_;
  const ModelConfig& c = config_;
  const int D = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  const int q_dim = c.num_heads * c.head_dim, kv_dim = c.num_kv_heads * c.head_dim;
  uint64_t stream = 0;  // each tensor its own seed
  auto matrix = [&](int rows, int cols) -> absl::StatusOr<Matrix> {
    ASSIGN_OR_RETURN(Matrix m, be.RandomMatrix(rows, cols, seed * 1000003 + ++stream,
                                               1.0f / std::sqrt(static_cast<float>(cols))));
    weight_bytes_ += static_cast<size_t>(rows) * cols * DTypeBytes(m.dtype);
    return m;
  };
  auto vector = [&](int n, float mean, float stddev) -> absl::StatusOr<const float*> {
    weight_bytes_ += static_cast<size_t>(n) * sizeof(float);
    return be.RandomVector(n, seed * 1000003 + ++stream, mean, stddev);
  };
  auto gain = [&]() { return vector(D, 1.0f, 0.05f); };
  ASSIGN_OR_RETURN(w_.embed, matrix(V, D));
  w_.layers.resize(c.num_layers);
  for (ResidentLayer& r : w_.layers) {
    ASSIGN_OR_RETURN(r.attn_norm, gain());
    ASSIGN_OR_RETURN(r.wq, matrix(q_dim, D));
    ASSIGN_OR_RETURN(r.wk, matrix(kv_dim, D));
    ASSIGN_OR_RETURN(r.wv, matrix(kv_dim, D));
    ASSIGN_OR_RETURN(r.wo, matrix(D, q_dim));
    if (c.qkv_bias) {
      ASSIGN_OR_RETURN(r.bq, vector(q_dim, 0.0f, 0.1f));
      ASSIGN_OR_RETURN(r.bk, vector(kv_dim, 0.0f, 0.1f));
      ASSIGN_OR_RETURN(r.bv, vector(kv_dim, 0.0f, 0.1f));
    }
    if (c.o_bias) {
      ASSIGN_OR_RETURN(r.bo, vector(D, 0.0f, 0.1f));
    }
    if (c.qk_norm) {
      ASSIGN_OR_RETURN(r.q_norm, vector(c.head_dim, 1.0f, 0.05f));
      ASSIGN_OR_RETURN(r.k_norm, vector(c.head_dim, 1.0f, 0.05f));
    }
    ASSIGN_OR_RETURN(r.mlp_norm, gain());
    ASSIGN_OR_RETURN(r.gate, matrix(I, D));
    ASSIGN_OR_RETURN(r.up, matrix(I, D));
    ASSIGN_OR_RETURN(r.down, matrix(D, I));
  }
  ASSIGN_OR_RETURN(w_.final_norm, gain());
  if (c.tie_word_embeddings) {
    w_.lm_head = w_.embed;
  } else {
    ASSIGN_OR_RETURN(w_.lm_head, matrix(V, D));
  }
  return be.Synchronize();
}

absl::Status LlamaModel::Forward(std::span<SequenceStep> steps, ForwardOutput* out) {
  absl::Status status = ForwardRank(steps, out);
  // A rank that fails would leave the others waiting in a collective: they fail with it.
  if (!status.ok() && comm_ != nullptr && comm_->size() > 1) comm_->Abort(status);
  return status;
}

absl::Status LlamaModel::ForwardRank(std::span<SequenceStep> steps, ForwardOutput* out) {
  if (out == nullptr) return absl::InvalidArgumentError("Forward: `out` is null");
  out->logits.assign(steps.size(), {});
  if (steps.empty()) return absl::OkStatus();
  RETURN_IF_ERROR(ValidateSteps(steps, config_, kv_shape(), *backend_));

  const ModelConfig& c = config_;
  const int D = c.hidden_size, V = c.vocab_size, L = c.num_layers;
  const int Hq = c.num_heads, Hkv = c.num_kv_heads, d = c.head_dim;
  const int q_dim = Hq * d, kv_dim = Hkv * d;
  const float eps = c.rms_norm_eps;
  Backend& be = *backend_;

  // A step that fails part-way leaves the backend idle before returning: queued work finished,
  // pending copies delivered, and (device backends) the contexts it made resident evictable
  // again.
  bool settled = false;
  absl::Cleanup settle = [&] {
    if (!settled) be.Synchronize().IgnoreError();
  };
  const StepPlan plan = PlanSteps(steps);
  const int T = static_cast<int>(plan.tokens.size());
  const int num_logits = static_cast<int>(plan.logit_rows.size());
  ASSIGN_OR_RETURN(Activations a, AllocateActivations(be, c, T, num_logits));
  be.CopyFromHost(a.tokens, plan.tokens.data(), sizeof(int32_t) * T);
  be.CopyFromHost(a.positions, plan.positions.data(), sizeof(int32_t) * T);
  be.CopyFromHost(a.logit_rows, plan.logit_rows.data(), sizeof(int32_t) * num_logits);
  for (SequenceStep& s : steps) {
    RETURN_IF_ERROR(s.kv->Reserve(static_cast<int>(s.tokens.size())));
    if (s.capture != nullptr && s.capture->q.size() < static_cast<size_t>(L)) {
      s.capture->q.resize(L);
    }
  }
  const float* inv_freq = w_.inv_freq;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  // Each step's fixed context in backend memory (made resident once per context by device
  // backends) and its selector's policy for the step.
  std::vector<ContextKvView> context_views(steps.size());
  std::vector<ContextAttentionPolicy> policies(steps.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    if (steps[i].context != nullptr && steps[i].context->num_tokens > 0) {
      ASSIGN_OR_RETURN(context_views[i], be.ResidentContextKv(*steps[i].context));
    }
    if (steps[i].fixed != nullptr) policies[i] = steps[i].fixed->policy();
  }
  // Attention calls: one per step, or per query block of a selected step whose policy asks for
  // blocks (ContextAttentionPolicy::query_block): call j attends tokens [block_begin[j],
  // block_begin[j] + block_tokens[j]) of step call_step[j].
  std::vector<int> call_step, block_begin, block_tokens;
  for (size_t i = 0; i < steps.size(); ++i) {
    const int n = static_cast<int>(steps[i].tokens.size());
    const bool has_context = steps[i].context != nullptr && steps[i].context->num_tokens > 0;
    const int qb = steps[i].fixed != nullptr && has_context ? policies[i].query_block : 0;
    const int block = qb > 0 && n > qb ? qb : n;
    for (int t = 0; t < n; t += block) {
      call_step.push_back(static_cast<int>(i));
      block_begin.push_back(t);
      block_tokens.push_back(std::min(block, n - t));
    }
  }
  const size_t num_calls = call_step.size();
  // One layer's attention calls, issued together (a device backend batches what it can), and
  // what the backend kept of each call's selected context: [call][layer][kv head], -1 where
  // nothing was selected (no selector, or not hierarchical for the candidates).
  std::vector<AttentionParams> calls(num_calls);
  std::vector<Backend::KvAppend> appends(steps.size());
  kept_rows_.assign(num_calls * L * Hkv, -1);
  candidates_.assign(num_calls * L * Hkv, -1);

  // Tensor parallelism: a row-parallel projection writes this rank's partial sum into `partial`
  // (the free [T, D] buffer h), which the ranks sum, and the sum joins the residual stream.
  const bool sharded = comm_ != nullptr && comm_->size() > 1;
  auto AddAllReduced = [&](float* partial, float* x) -> absl::Status {
    RETURN_IF_ERROR(comm_->AllReduceSum(be, partial, static_cast<size_t>(T) * D));
    be.AddBias(x, partial, 1, T * D);  // x += partial, as one row of T * D columns
    return absl::OkStatus();
  };

  be.Embed(w_.embed, a.tokens, T, a.x);
  for (int l = 0; l < L; ++l) {
    const ResidentLayer& lw = w_.layers[l];

    // Attention block: x += o_proj(attention(rope(q), rope(k), v)), GEMMs over all T tokens.
    const Backend::MatMulOutput qkv[] = {{&lw.wq, a.q}, {&lw.wk, a.k}, {&lw.wv, a.v}};
    be.NormMatMuls(a.x, lw.attn_norm, eps, a.h, T, qkv);
    if (lw.bq != nullptr) {  // Qwen2
      be.AddBias(a.q, lw.bq, T, q_dim);
      be.AddBias(a.k, lw.bk, T, kv_dim);
      be.AddBias(a.v, lw.bv, T, kv_dim);
    }
    if (lw.q_norm != nullptr) {  // Qwen3: RMSNorm of every head's q and k, rows [T*H, d]
      be.RmsNorm(a.q, lw.q_norm, a.q, T * Hq, d, eps);
      be.RmsNorm(a.k, lw.k_norm, a.k, T * Hkv, d, eps);
    }

    // RoPE of q and k, and every sequence's new K/V joins its dynamic KV (one call for the
    // step); then its queries attend to the fixed context and, causally, to the dynamic KV.
    for (size_t i = 0; i < steps.size(); ++i) {
      SequenceKV& kv = *steps[i].kv;
      const int past = kv.length();  // this step's tokens are committed after the last layer
      appends[i] = {kv.key_data(l, 0, past), kv.value_data(l, 0, past),
                    static_cast<size_t>(kv.capacity()) * d, plan.offset[i],
                    static_cast<int>(steps[i].tokens.size())};
    }
    be.RopeAppendKvBatch(a.q, Hq, a.k, a.v, Hkv, a.positions, T, d, inv_freq, appends);
    for (size_t i = 0; i < steps.size(); ++i) {
      SequenceStep& s = steps[i];
      if (s.capture != nullptr) {
        const size_t row = plan.offset[i];
        CaptureQueries(be, l, a.q + row * q_dim, &plan.positions[row],
                       static_cast<int>(s.tokens.size()), q_dim, s.capture);
      }
    }
    for (size_t j = 0; j < num_calls; ++j) {
      const size_t i = call_step[j];
      SequenceStep& s = steps[i];
      const int n = block_tokens[j];
      const size_t row = plan.offset[i] + block_begin[j];
      SequenceKV& kv = *s.kv;
      // This call's queries sit after the step's earlier blocks in the dynamic rows.
      const int past = kv.length() + block_begin[j];
      const size_t kv_head_stride = static_cast<size_t>(kv.capacity()) * d;

      AttentionParams p;
      p.shape = {n, Hq, Hkv, d, scale};
      p.q = a.q + row * q_dim;
      p.out = a.att + row * q_dim;
      if (s.context != nullptr && s.context->num_tokens > 0) {
        const ContextKV& ctx = *s.context;
        const size_t offset = ctx.Offset(l, 0, 0) * DTypeBytes(be.kv_dtype());
        p.fixed.kv = {static_cast<const char*>(context_views[i].k) + offset,
                      static_cast<const char*>(context_views[i].v) + offset,
                      static_cast<size_t>(ctx.num_tokens) * d, ctx.num_tokens, be.kv_dtype()};
        if (s.fixed != nullptr) {  // the backend selects; what it kept reaches the selector
          p.fixed.selector = s.fixed;
          p.fixed.policy = policies[i];
          p.fixed.layer = l;
          p.fixed.kept_rows = &kept_rows_[(j * L + l) * Hkv];
          p.fixed.candidates = &candidates_[(j * L + l) * Hkv];
        }
      }
      p.dynamic.kv = {kv.key_data(l, 0, 0), kv.value_data(l, 0, 0), kv_head_stride, past + n,
                      kv.dtype()};
      p.dynamic.causal_offset = past;
      calls[j] = p;
    }
    be.AttentionBatch(calls);
    if (!sharded) {
      be.MatMul(a.att, lw.wo, a.x, T, /*accumulate=*/true);
    } else {  // this rank's heads' share of o_proj, summed over the ranks, then added
      be.MatMul(a.att, lw.wo, a.h, T, /*accumulate=*/false);
      RETURN_IF_ERROR(AddAllReduced(a.h, a.x));
    }
    if (lw.bo != nullptr) be.AddBias(a.x, lw.bo, T, D);

    // MLP block: x += down(silu(gate(h)) * up(h)).
    const Backend::MatMulOutput gate_up[] = {{&lw.gate, a.gate}, {&lw.up, a.up}};
    be.NormMatMuls(a.x, lw.mlp_norm, eps, a.h, T, gate_up);
    if (!sharded) {
      be.SiluMulMatMul(a.gate, a.up, lw.down, a.x, T, /*accumulate=*/true);
    } else {
      be.SiluMulMatMul(a.gate, a.up, lw.down, a.h, T, /*accumulate=*/false);
      RETURN_IF_ERROR(AddAllReduced(a.h, a.x));
    }
  }

  // Final norm and lm_head only for the last token of steps that want logits: a registration
  // chunk of thousands of tokens must not pay for [T, V] logits.
  if (num_logits > 0) {
    be.GatherRows(a.x, a.logit_rows, num_logits, D, a.last);
    const Backend::MatMulOutput head[] = {{&w_.lm_head, a.logits}};
    be.NormMatMuls(a.last, w_.final_norm, eps, a.last, num_logits, head);
  }
  RETURN_IF_ERROR(ScoreTargets(steps, plan.offset, a.x));
  settled = true;
  RETURN_IF_ERROR(be.Synchronize());
  // What the backend kept of each selected context, now written: into the selectors (a step
  // selected in query blocks records each block as a step).
  for (size_t j = 0; j < num_calls; ++j) {
    FixedContextAttention* fixed = steps[call_step[j]].fixed;
    if (fixed == nullptr) continue;
    for (int l = 0; l < L; ++l) {
      const std::span<const int32_t> kept(&kept_rows_[(j * L + l) * Hkv], Hkv);
      const std::span<const int32_t> candidates(&candidates_[(j * L + l) * Hkv], Hkv);
      if (kept[0] >= 0) {
        fixed->Record(l, kept, candidates[0] >= 0 ? candidates : std::span<const int32_t>());
      }
    }
  }

  for (SequenceStep& s : steps) s.kv->Commit(static_cast<int>(s.tokens.size()));
  // Sampled by the backend when every logits row has a job (rows in step order): a device
  // backend sends back only the tokens and requested logprobs.
  std::vector<SampleJob*> jobs;
  for (const SequenceStep& s : steps) {
    if (s.want_logits) jobs.push_back(s.sample);
  }
  if (!jobs.empty() && std::find(jobs.begin(), jobs.end(), nullptr) == jobs.end()) {
    return be.SampleRows(a.logits, V, jobs);
  }
  for (size_t i = 0, li = 0; i < steps.size(); ++i) {
    if (!steps[i].want_logits) continue;
    out->logits[i].resize(V);
    be.CopyToHost(out->logits[i].data(), a.logits + li * V, sizeof(float) * V);
    ++li;
  }
  return be.Synchronize();
}

absl::Status LlamaModel::ScoreTargets(std::span<SequenceStep> steps,
                                      std::span<const int32_t> offsets, const float* x) {
  // (row, step, target) of every scored row.
  struct Scored {
    int32_t row;
    int32_t step;
    int32_t target;
  };
  std::vector<Scored> scored;
  const int V = config_.vocab_size, D = config_.hidden_size;
  for (size_t i = 0; i < steps.size(); ++i) {
    const SequenceStep& s = steps[i];
    if (s.scores == nullptr) continue;
    const size_t n = std::min(s.score_targets.size(), s.tokens.size());
    for (size_t j = 0; j < n; ++j) {
      if (s.score_targets[j] < 0 || s.score_targets[j] >= V) {
        return absl::InvalidArgumentError(
            absl::StrCat("scored token id ", s.score_targets[j], " is outside the vocabulary"));
      }
      scored.push_back(
          {offsets[i] + static_cast<int32_t>(j), static_cast<int32_t>(i), s.score_targets[j]});
    }
  }
  if (scored.empty()) return absl::OkStatus();
  // Blocks of rows through the final norm and lm_head ([rows, V] logits at a time, so that a
  // long input never holds [T, V]), each block's logits scored on the host.
  constexpr int kBlockRows = 64;
  const int block = std::min<int>(kBlockRows, static_cast<int>(scored.size()));
  auto aligned = [](size_t bytes) { return (bytes + 63) / 64 * 64; };
  const size_t rows_bytes = aligned(sizeof(int32_t) * block);
  const size_t hidden_bytes = aligned(sizeof(float) * block * D);
  Backend& be = *backend_;
  ASSIGN_OR_RETURN(std::unique_ptr<Buffer> buffer,
                   be.Allocate(rows_bytes + hidden_bytes + sizeof(float) * block * V));
  char* base = static_cast<char*>(buffer->data());
  auto* rows = reinterpret_cast<int32_t*>(base);
  auto* hidden = reinterpret_cast<float*>(base + rows_bytes);
  auto* logits = reinterpret_cast<float*>(base + rows_bytes + hidden_bytes);
  std::vector<int32_t> host_rows(block);
  std::vector<float> host_logits(static_cast<size_t>(block) * V);
  for (size_t at = 0; at < scored.size(); at += block) {
    const int n = static_cast<int>(std::min<size_t>(block, scored.size() - at));
    for (int k = 0; k < n; ++k) host_rows[k] = scored[at + k].row;
    be.CopyFromHost(rows, host_rows.data(), sizeof(int32_t) * n);
    be.GatherRows(x, rows, n, D, hidden);
    const Backend::MatMulOutput head[] = {{&w_.lm_head, logits}};
    be.NormMatMuls(hidden, w_.final_norm, config_.rms_norm_eps, hidden, n, head);
    be.CopyToHost(host_logits.data(), logits, sizeof(float) * n * V);
    RETURN_IF_ERROR(be.Synchronize());
    for (int k = 0; k < n; ++k) {
      const Scored& r = scored[at + k];
      const SequenceStep& s = steps[r.step];
      s.scores->push_back(
          ScoreToken(std::span<const float>(host_logits.data() + static_cast<size_t>(k) * V, V),
                     r.target, s.score_top));
    }
  }
  return absl::OkStatus();
}

}  // namespace squeeze
