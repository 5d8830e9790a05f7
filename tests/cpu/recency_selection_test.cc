// The query-blind recent-keys baseline selects exactly the sink and recent token positions,
// wherever the rows of a (layer, KV head) sit in storage order.
#include "engine/attention/recency_selection.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>

namespace squeeze {
namespace {

TEST(RecencySelection, KeepsSinksAndRecentTokensInAnyStorageOrder) {
  ContextKV ctx;
  ctx.shape = {3, 2, 4};
  ctx.num_tokens = 50;
  std::mt19937 rng(7);
  for (int l = 0; l < 3; ++l) {
    for (int h = 0; h < 2; ++h) {
      std::vector<int32_t> order(50);
      for (int i = 0; i < 50; ++i) order[i] = i;
      if (l + h > 0) std::shuffle(order.begin(), order.end(), rng);  // (0, 0) stays in token order
      ctx.token_of.insert(ctx.token_of.end(), order.begin(), order.end());
    }
  }
  RecencyFixedContextAttention recency(ctx, /*sinks=*/4, /*recent=*/10);
  EXPECT_DOUBLE_EQ(recency.kept_fraction(), 14.0 / 50);
  LayerSelection sel;
  for (int l = 0; l < 3; ++l) {
    recency.Select(l, nullptr, 1, &sel);
    ASSERT_EQ(sel.ranges.size(), 2u);
    for (int h = 0; h < 2; ++h) {
      std::set<int32_t> tokens;
      int32_t previous_end = -1;
      for (const KeyRange& r : sel.ranges[h]) {
        EXPECT_LT(r.begin, r.end);
        EXPECT_GT(r.begin, previous_end);  // ascending, non-adjacent (merged)
        previous_end = r.end;
        for (int32_t row = r.begin; row < r.end; ++row) {
          tokens.insert(ctx.token_of[(static_cast<size_t>(l) * 2 + h) * 50 + row]);
        }
      }
      std::set<int32_t> want = {0, 1, 2, 3};
      for (int t = 40; t < 50; ++t) want.insert(t);
      EXPECT_EQ(tokens, want) << "layer " << l << " head " << h;
    }
  }
  // Token order: two ranges, [0, 4) and [40, 50).
  recency.Select(0, nullptr, 1, &sel);
  ASSERT_EQ(sel.ranges[0].size(), 2u);
  EXPECT_EQ(sel.ranges[0][0].begin, 0);
  EXPECT_EQ(sel.ranges[0][0].end, 4);
  EXPECT_EQ(sel.ranges[0][1].begin, 40);
  EXPECT_EQ(sel.ranges[0][1].end, 50);
}

TEST(RecencySelection, ClampsToTheContext) {
  ContextKV ctx;
  ctx.shape = {1, 1, 4};
  ctx.num_tokens = 8;
  for (int i = 0; i < 8; ++i) ctx.token_of.push_back(i);
  RecencyFixedContextAttention all(ctx, 4, 100);
  EXPECT_DOUBLE_EQ(all.kept_fraction(), 1.0);
  RecencyFixedContextAttention none(ctx, 0, 0);
  EXPECT_DOUBLE_EQ(none.kept_fraction(), 0.0);
  LayerSelection sel;
  none.Select(0, nullptr, 1, &sel);
  EXPECT_TRUE(sel.ranges[0].empty());
}

}  // namespace
}  // namespace squeeze
