// Helpers shared by the CPU benchmarks: load a model directory, prefill a context in chunks
// (capturing the observation-window queries), build its Squeezed Attention index.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend/cpu/cpu_backend.h"
#include "engine/backend/kv_cache.h"
#include "engine/common/status_macros.h"
#include "engine/model/llama_model.h"
#include "engine/squeeze/squeeze_index.h"
#include "engine/tokenizer/tokenizer.h"

namespace squeeze::bench {

inline double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct LoadedModel {
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<Tokenizer> tokenizer;
};

inline absl::StatusOr<LoadedModel> Load(const std::string& dir) {
  LoadedModel m;
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir));
  ASSIGN_OR_RETURN(LlamaWeights weights, LoadLlamaWeights(dir, config));
  ASSIGN_OR_RETURN(m.tokenizer, LoadTokenizer(dir));
  ASSIGN_OR_RETURN(m.model,
                   LlamaModel::Create(config, std::move(weights), std::make_unique<CpuBackend>()));
  return m;
}

inline std::string ReadFileOrDie(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    std::fprintf(stderr, "cannot read %s\n", path.c_str());
    std::exit(2);
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Tokens of `text` repeated until `n` tokens (BOS first).
inline std::vector<int32_t> ContextTokens(const Tokenizer& tok, const std::string& text, int n) {
  std::vector<int32_t> ids = tok.Encode(text).value();
  std::vector<int32_t> out;
  if (tok.bos_id() >= 0) out.push_back(tok.bos_id());
  while (static_cast<int>(out.size()) < n) {
    out.insert(out.end(), ids.begin(), ids.end());
  }
  out.resize(n);
  return out;
}

struct RegisteredForBench {
  ContextKV kv;
  std::unique_ptr<SqueezeIndex> index;
  double prefill_seconds = 0;
  BuildTimings timings;
};

// Prefills `tokens` in chunks, builds the index with `options` (no index when build == false).
inline absl::StatusOr<RegisteredForBench> Register(LlamaModel& model,
                                                   const std::vector<int32_t>& tokens,
                                                   const SqueezeOptions& options, bool build,
                                                   int chunk = 1024) {
  RegisteredForBench r;
  const int S = static_cast<int>(tokens.size());
  SequenceKV kv(model.kv_shape());
  QueryCapture capture;
  capture.from_position = S - options.window;
  const double t0 = Now();
  for (int done = 0; done < S; done += chunk) {
    const int n = std::min(chunk, S - done);
    SequenceStep step{.tokens = std::span<const int32_t>(tokens).subspan(done, n),
                      .kv = &kv,
                      .want_logits = false,
                      .capture = &capture};
    ForwardOutput out;
    RETURN_IF_ERROR(model.Forward(std::span<SequenceStep>(&step, 1), &out));
  }
  r.prefill_seconds = Now() - t0;
  r.kv = ContextKV::FromSequence(kv, S);
  if (build) {
    ASSIGN_OR_RETURN(SqueezeIndex index, BuildSqueezeIndex(&r.kv, capture, model.config().num_heads,
                                                           options, nullptr, &r.timings));
    r.index = std::make_unique<SqueezeIndex>(std::move(index));
  }
  return r;
}

}  // namespace squeeze::bench
