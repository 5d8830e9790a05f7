// The Quest-style page baseline keeps the sinks, the window and the pages whose key bounds give
// the highest upper bound of a query's logits, wherever the rows sit in storage order.
#include "engine/attention/page_selection.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>

namespace squeeze {
namespace {

constexpr int kLayers = 2, kHeads = 2, kDim = 8, kTokens = 100;

// Random keys; layer 0 head 0 in token order, the rest shuffled.
ContextKV RandomContext(std::mt19937& rng) {
  ContextKV ctx;
  ctx.shape = {kLayers, kHeads, kDim};
  ctx.num_tokens = kTokens;
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const size_t n = static_cast<size_t>(kLayers) * kHeads * kTokens * kDim;
  ctx.k = HostKvTensor(DType::kF32, n);
  ctx.v = HostKvTensor(DType::kF32, n);
  for (size_t i = 0; i < n; ++i) ctx.k.f32()[i] = normal(rng);
  for (size_t i = 0; i < n; ++i) ctx.v.f32()[i] = normal(rng);
  for (int l = 0; l < kLayers; ++l) {
    for (int h = 0; h < kHeads; ++h) {
      std::vector<int32_t> order(kTokens);
      for (int i = 0; i < kTokens; ++i) order[i] = i;
      if (l + h > 0) std::shuffle(order.begin(), order.end(), rng);
      ctx.token_of.insert(ctx.token_of.end(), order.begin(), order.end());
    }
  }
  return ctx;
}

std::set<int32_t> KeptTokens(const ContextKV& ctx, const LayerSelection& sel, int l, int h) {
  std::set<int32_t> tokens;
  int32_t previous_end = -1;
  for (const KeyRange& r : sel.ranges[h]) {
    EXPECT_LT(r.begin, r.end);
    EXPECT_GT(r.begin, previous_end);  // ascending, non-adjacent
    previous_end = r.end;
    for (int32_t row = r.begin; row < r.end; ++row) {
      tokens.insert(ctx.token_of[(static_cast<size_t>(l) * kHeads + h) * kTokens + row]);
    }
  }
  return tokens;
}

TEST(PageSelection, KeepsThePagesWithTheHighestLogitBound) {
  std::mt19937 rng(11);
  ContextKV ctx = RandomContext(rng);
  // Pages of 8 over tokens [4, 90): 11 pages (the last one of 6 tokens); budget 0.2 of 86
  // tokens = 3 pages. One query head per KV head... two: G = 2.
  PageSelectionOptions opt;
  opt.sinks = 4;
  opt.window = 10;
  opt.budget = 0.2;
  opt.page_tokens = 8;
  opt.num_q_heads = 2 * kHeads;
  PageFixedContextAttention pages(ctx, opt);
  EXPECT_EQ(pages.pages_kept(), 3);
  EXPECT_DOUBLE_EQ(pages.kept_fraction(), (4 + 10 + 24) / 100.0);
  EXPECT_DOUBLE_EQ(pages.realised_budget(), (4 + 10 + 24 + 11) / 100.0);

  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int n = 2;
  std::vector<float> q(static_cast<size_t>(n) * opt.num_q_heads * kDim);
  for (float& x : q) x = normal(rng);
  LayerSelection sel;
  for (int l = 0; l < kLayers; ++l) {
    pages.Select(l, q.data(), n, &sel);
    ASSERT_EQ(sel.ranges.size(), static_cast<size_t>(kHeads));
    for (int h = 0; h < kHeads; ++h) {
      // The reference: each page's bound from its keys, the 3 best pages.
      std::vector<std::pair<float, int>> bounds;
      for (int p = 0; p < 11; ++p) {
        std::vector<float> lo(kDim, 1e30f), hi(kDim, -1e30f);
        for (int t = 4 + 8 * p; t < std::min(90, 4 + 8 * (p + 1)); ++t) {
          int row = 0;
          while (ctx.token_of[(static_cast<size_t>(l) * kHeads + h) * kTokens + row] != t) ++row;
          for (int i = 0; i < kDim; ++i) {
            lo[i] = std::min(lo[i], ctx.key(l, h, row)[i]);
            hi[i] = std::max(hi[i], ctx.key(l, h, row)[i]);
          }
        }
        float best = -1e30f;
        for (int t = 0; t < n; ++t) {
          for (int g = 0; g < 2; ++g) {
            const float* qr = &q[(static_cast<size_t>(t) * opt.num_q_heads + 2 * h + g) * kDim];
            float s = 0;
            for (int i = 0; i < kDim; ++i) s += std::max(qr[i] * lo[i], qr[i] * hi[i]);
            best = std::max(best, s);
          }
        }
        bounds.push_back({-best, p});
      }
      std::sort(bounds.begin(), bounds.end());
      std::set<int32_t> want;
      for (int t = 0; t < 4; ++t) want.insert(t);
      for (int t = 90; t < 100; ++t) want.insert(t);
      for (int j = 0; j < 3; ++j) {
        const int p = bounds[j].second;
        for (int t = 4 + 8 * p; t < std::min(90, 4 + 8 * (p + 1)); ++t) want.insert(t);
      }
      EXPECT_EQ(KeptTokens(ctx, sel, l, h), want) << "layer " << l << " head " << h;
    }
  }
}

// A key far more aligned with the query than any other lies in the kept pages: the bound of its
// page is at least its logit.
TEST(PageSelection, KeepsThePageOfAStrongKey) {
  std::mt19937 rng(12);
  ContextKV ctx = RandomContext(rng);
  std::vector<float> q(kHeads * kDim);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& x : q) x = normal(rng);
  const int strong_token = 57;
  for (int l = 0; l < kLayers; ++l) {
    for (int h = 0; h < kHeads; ++h) {
      int row = 0;
      while (ctx.token_of[(static_cast<size_t>(l) * kHeads + h) * kTokens + row] != strong_token) {
        ++row;
      }
      float* k = ctx.k.f32() + ctx.Offset(l, h, row);
      for (int i = 0; i < kDim; ++i) k[i] = 20.0f * q[h * kDim + i];
    }
  }
  PageSelectionOptions opt;
  opt.budget = 0.05;
  opt.window = 10;
  opt.num_q_heads = kHeads;
  // The same from a bf16 host copy (the CUDA backend's).
  const ContextKV bf16_ctx = ctx.ConvertedTo(DType::kBF16);
  for (const ContextKV* c : {static_cast<const ContextKV*>(&ctx), &bf16_ctx}) {
    SCOPED_TRACE(DTypeName(c->dtype()));
    PageFixedContextAttention pages(*c, opt);
    ASSERT_EQ(pages.pages_kept(), 1);
    LayerSelection sel;
    for (int l = 0; l < kLayers; ++l) {
      pages.Select(l, q.data(), 1, &sel);
      for (int h = 0; h < kHeads; ++h) {
        const std::set<int32_t> kept = KeptTokens(*c, sel, l, h);
        EXPECT_TRUE(kept.count(strong_token)) << "layer " << l << " head " << h;
        EXPECT_EQ(kept.size(), 4u + 10u + 16u);
      }
    }
  }
}

TEST(PageSelection, ClampsTheBudgetAndKeepsOnlySinksAndWindowWithoutQueries) {
  std::mt19937 rng(13);
  const ContextKV ctx = RandomContext(rng);
  PageSelectionOptions opt;
  opt.window = 10;
  opt.budget = 7.0;  // clamped to 1: every page
  opt.num_q_heads = kHeads;
  PageFixedContextAttention all(ctx, opt);
  EXPECT_DOUBLE_EQ(all.kept_fraction(), 1.0);
  std::vector<float> q(kHeads * kDim, 0.5f);
  LayerSelection sel;
  all.Select(1, q.data(), 1, &sel);
  EXPECT_EQ(KeptTokens(ctx, sel, 1, 1).size(), static_cast<size_t>(kTokens));
  all.Select(1, q.data(), 0, &sel);  // no queries: the sinks and the window only
  std::set<int32_t> want = {0, 1, 2, 3};
  for (int t = 90; t < 100; ++t) want.insert(t);
  EXPECT_EQ(KeptTokens(ctx, sel, 1, 0), want);
  // A window longer than the context keeps everything, with no pages.
  opt.window = 1000;
  opt.budget = 0.0;
  PageFixedContextAttention window_only(ctx, opt);
  EXPECT_EQ(window_only.pages_kept(), 0);
  window_only.Select(0, q.data(), 1, &sel);
  EXPECT_EQ(KeptTokens(ctx, sel, 0, 1).size(), static_cast<size_t>(kTokens));
}

}  // namespace
}  // namespace squeeze
