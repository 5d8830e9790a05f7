// A query-aware baseline for the fixed context in the style of Quest (Tang et al., 2024): the
// context's tokens, in their original order, are cut into pages of `page_tokens`; each page keeps
// the element-wise minimum and maximum of its keys per layer and KV head. For a step's queries,
// a page's score is an upper bound of any of its keys' logits,
//   bound(page) = max over query rows r (tokens x heads of the group) of
//                 sum_i max(q_ri * min_i, q_ri * max_i),
// and the highest-bound pages are kept, as many as `budget` of the clustered tokens, plus the
// attention sinks and the observation window that squeezed mode always keeps. Selection per KV
// head, per layer, per step, on the host. Used by the accuracy benchmark to compare Squeezed
// Attention's clusters with page-level selection at an equal realised budget.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/backend/fixed_context.h"
#include "engine/backend/kv_cache.h"

namespace squeeze {

struct PageSelectionOptions {
  int sinks = 4;         // first tokens always kept
  int window = 100;      // last tokens always kept
  double budget = 0.1;   // kept fraction of the tokens in between, in [0, 1]
  int page_tokens = 16;  // tokens per page (Quest's default)
  int num_q_heads = 0;   // Hq of the model (the queries' heads); Hkv comes from the context
};

class PageFixedContextAttention final : public FixedContextAttention {
 public:
  // Builds the page bounds of every layer and KV head from `context` (cluster-ordered or not:
  // tokens are found through context.token_of). `context` must outlive this object.
  PageFixedContextAttention(const ContextKV& context, const PageSelectionOptions& options);

  // q: [n][Hq][d] post-RoPE queries. Ranges of storage rows per KV head.
  void Select(int layer, const float* q, int n, LayerSelection* out) override;

  // Tokens kept per KV head and layer / S (the same at every step).
  double kept_fraction() const { return kept_fraction_; }
  // The realised KV budget as squeezed mode counts it (DESIGN §1.2: kept rows / S + 0.5 x key
  // vectors scored / S): each page's bounds are two key-sized vectors, read per step like
  // centroids, so kept_fraction() + pages / S.
  double realised_budget() const {
    return context_.num_tokens > 0
               ? kept_fraction_ + static_cast<double>(num_pages_) / context_.num_tokens
               : 0;
  }
  int pages_kept() const { return pages_kept_; }

 private:
  const ContextKV& context_;
  PageSelectionOptions options_;
  int num_pages_ = 0;        // pages over [sinks, S - window)
  int pages_kept_ = 0;       // per KV head and step
  int first_ = 0, end_ = 0;  // the paged token span [first_, end_)
  double kept_fraction_ = 0;
  // [L][Hkv][page][d]: element-wise min / max of the page's keys.
  std::vector<float> min_, max_;
  // [L][Hkv][S]: storage row of each token position (the inverse of token_of).
  std::vector<int32_t> row_of_;
  // Scratch of Select.
  std::vector<float> bound_;
  std::vector<int32_t> order_, rows_;
};

}  // namespace squeeze
