// Sampling parameters of one request, already validated by the server.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace squeeze {

struct SamplingParams {
  float temperature = 1.0f;         // 0 => greedy
  int top_k = 0;                    // 0 => off
  float top_p = 1.0f;               // 1 => off
  float min_p = 0.0f;               // 0 => off
  float repetition_penalty = 1.0f;  // 1 => off (HF/CTRL style, over prompt + generated tokens)
  float presence_penalty = 0.0f;    // OpenAI style, over generated tokens
  float frequency_penalty = 0.0f;   // OpenAI style, over generated tokens
  uint64_t seed = 0;
  bool has_seed = false;  // without a seed, the engine draws one
  int max_tokens = 16;
  std::vector<std::string> stop;  // stop strings (not emitted)
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  int logprobs = 0;  // top logprobs per token (0 => chosen token's only if requested)
  bool return_logprobs = false;
};

}  // namespace squeeze
