// Writes the seeds of fuzz/corpus/context_file: persisted contexts as squeeze-server writes
// them (WriteContextFile, BuildSqueezeIndex), but tiny (head dim 4, a dozen tokens), since the
// fuzz target parses the whole input on every execution and a real context's KV only adds
// floats to copy. One seed per layout the parser reads: dense, flat index, hierarchical index.
//   make_context_seeds OUT_DIR
#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/backend/kv_cache.h"
#include "engine/common/status_macros.h"
#include "engine/squeeze/query_capture.h"
#include "engine/squeeze/squeeze_index.h"
#include "engine/store/context_file.h"
#include "engine/store/registered_context.h"

namespace squeeze {
namespace {

struct Seed {
  const char* file;
  int layers, kv_heads, q_heads, head_dim, tokens;
  bool index, hierarchical;
};

absl::Status Write(const Seed& s, const std::string& dir) {
  std::mt19937 gen(s.tokens * 31 + s.layers);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  SequenceKV seq(KvShape{s.layers, s.kv_heads, s.head_dim});
  RETURN_IF_ERROR(seq.Reserve(s.tokens));
  for (int l = 0; l < s.layers; ++l) {
    for (int h = 0; h < s.kv_heads; ++h) {
      for (int t = 0; t < s.tokens; ++t) {
        for (int j = 0; j < s.head_dim; ++j) {
          seq.key(l, h, t)[j] = normal(gen);
          seq.value(l, h, t)[j] = normal(gen);
        }
      }
    }
  }
  seq.Commit(s.tokens);

  RegisteredContext c;
  c.kv = ContextKV::FromSequence(seq, s.tokens);
  for (int t = 0; t < s.tokens; ++t) c.tokens.push_back(1 + (t * 37) % 997);
  c.summary.tenant = "fuzz";
  c.summary.name = s.file;
  c.summary.content_hash = HashTokens(c.tokens);
  c.summary.created_unix = 1700000000;
  if (s.index) {
    SqueezeOptions o;
    o.window = 2;
    o.sinks = 1;
    o.centroid_fraction = 0.3;
    o.hierarchical = s.hierarchical;
    o.coarse_fraction = 0.15;
    // The window queries calibration scores: positions S - W .. S - 1, [W][Hq][d] per layer.
    QueryCapture window;
    window.from_position = s.tokens - o.window;
    for (int p = s.tokens - o.window; p < s.tokens; ++p) window.positions.push_back(p);
    window.q.resize(s.layers);
    for (auto& q : window.q) {
      q.resize(static_cast<size_t>(o.window) * s.q_heads * s.head_dim);
      for (float& x : q) x = normal(gen);
    }
    ASSIGN_OR_RETURN(SqueezeIndex index, BuildSqueezeIndex(&c.kv, window, s.q_heads, o));
    c.summary.index_options = o;
    c.index = std::make_unique<SqueezeIndex>(std::move(index));
  }
  return WriteContextFile(c, "fuzz-model", dir + "/" + s.file);
}

}  // namespace
}  // namespace squeeze

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  const squeeze::Seed seeds[] = {
      {"dense.sqzctx", 2, 1, 2, 4, 6, false, false},
      {"indexed.sqzctx", 1, 2, 4, 4, 12, true, false},
      {"hier.sqzctx", 2, 1, 2, 4, 12, true, true},
  };
  for (const auto& s : seeds) {
    const absl::Status st = squeeze::Write(s, argv[1]);
    if (!st.ok()) {
      std::fprintf(stderr, "%s: %s\n", s.file, st.ToString().c_str());
      return 1;
    }
  }
  return 0;
}
