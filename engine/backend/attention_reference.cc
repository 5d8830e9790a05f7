#include "engine/backend/attention_reference.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <span>
#include <vector>

namespace squeeze {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Query rows (token, head-in-group) processed together: the group's G heads share one key set,
// so a block of tokens x G heads is one [rows, d] matrix multiplied against each key tile.
constexpr int kMaxBlockRows = 64;
// Keys per tile of the online softmax: scores [rows, tile] stay in L2.
constexpr int kKeyTile = 256;
// Ranges with at least this many rows left are read in place; shorter pieces (small clusters)
// are gathered into one contiguous tile so that one GEMM covers many of them.
constexpr int kInPlaceMinRows = 32;

// Walks the selected rows of one KV head as tiles of contiguous K/V rows [len, d]: long runs in
// place, short runs copied into staging buffers.
class KeyTiles {
 public:
  KeyTiles(std::span<const KeyRange> ranges, int row_end, const float* k, const float* v, int d,
           float* k_stage, float* v_stage, int* rows)
      : ranges_(ranges),
        row_end_(row_end),
        k_(k),
        v_(v),
        d_(d),
        k_stage_(k_stage),
        v_stage_(v_stage),
        rows_(rows) {
    SkipEmpty();
  }

  // Returns the next tile's length (0 when no rows are left) and points *k, *v at its rows;
  // rows()[j] is the storage row of tile key j.
  int Next(const float** k, const float** v) {
    if (done()) return 0;
    if (end_ - cur_ >= kInPlaceMinRows) {
      const int len = std::min(end_ - cur_, kKeyTile);
      *k = k_ + static_cast<size_t>(cur_) * d_;
      *v = v_ + static_cast<size_t>(cur_) * d_;
      for (int j = 0; j < len; ++j) rows_[j] = cur_ + j;
      cur_ += len;
      SkipEmpty();
      return len;
    }
    int len = 0;
    while (!done() && len < kKeyTile) {
      const int take = std::min(end_ - cur_, kKeyTile - len);
      const size_t floats = static_cast<size_t>(take) * d_;
      std::memcpy(k_stage_ + static_cast<size_t>(len) * d_, k_ + static_cast<size_t>(cur_) * d_,
                  floats * sizeof(float));
      std::memcpy(v_stage_ + static_cast<size_t>(len) * d_, v_ + static_cast<size_t>(cur_) * d_,
                  floats * sizeof(float));
      for (int j = 0; j < take; ++j) rows_[len + j] = cur_ + j;
      len += take;
      cur_ += take;
      SkipEmpty();
      if (!done() && end_ - cur_ >= kInPlaceMinRows) break;  // read the long run in place
    }
    *k = k_stage_;
    *v = v_stage_;
    return len;
  }

 private:
  bool done() const { return next_ > ranges_.size(); }
  // Moves to the first range (from the current one) with rows left, clipped to [0, row_end).
  void SkipEmpty() {
    while (cur_ >= end_) {
      if (next_ == ranges_.size()) {
        next_ = ranges_.size() + 1;
        return;
      }
      cur_ = std::max(ranges_[next_].begin, 0);
      end_ = std::min(ranges_[next_].end, row_end_);
      ++next_;
    }
  }

  std::span<const KeyRange> ranges_;
  int row_end_;
  const float* k_;
  const float* v_;
  int d_;
  float* k_stage_;
  float* v_stage_;
  int* rows_;
  size_t next_ = 0;  // index of the range after the current one
  int cur_ = 0, end_ = 0;
};

// One online-softmax step (FlashAttention): turns the scores s [rows, len] into weights
// exp(s - m_new) in place, rescales the running sum l and accumulator acc [rows, d] from the old
// running max m to the new one.
void OnlineSoftmaxStep(float* s, int rows, int len, int d, float* m, float* l, float* acc) {
  for (int r = 0; r < rows; ++r) {
    float* sr = s + r * len;
    float chunk_max = kNegInf;
    for (int j = 0; j < len; ++j) chunk_max = std::max(chunk_max, sr[j]);
    if (chunk_max == kNegInf) {  // every key of this chunk is masked for this row
      std::fill(sr, sr + len, 0.0f);
      continue;
    }
    const float m_new = std::max(m[r], chunk_max);
    float sum = 0.0f;
    for (int j = 0; j < len; ++j) {
      sr[j] = std::exp(sr[j] - m_new);  // exp(-inf) = 0 for masked keys
      sum += sr[j];
    }
    if (m[r] != m_new) {
      const float alpha = std::exp(m[r] - m_new);  // 0 when m[r] = -inf
      l[r] *= alpha;
      float* a = acc + r * d;
      for (int i = 0; i < d; ++i) a[i] *= alpha;
      m[r] = m_new;
    }
    l[r] += sum;
  }
}

// Per-thread scratch, grown on demand, so repeated calls do not allocate.
struct Scratch {
  std::vector<float> q, s, acc, m, l;   // query block, scores, accumulator, running max and sum
  std::vector<float> k_stage, v_stage;  // gathered short runs [kKeyTile, d]
  std::vector<int> rows;                // storage row of each tile key [kKeyTile]
};

}  // namespace

void AttentionPartial(const AttentionShape& shape, const float* q, const AttentionKeys& keys,
                      float* out, float* lse) {
  const int n = shape.num_queries, hq = shape.num_q_heads, hkv = shape.num_kv_heads;
  const int d = shape.head_dim;
  const int group = hq / hkv;
  const int block_tokens = std::max(1, kMaxBlockRows / group);
  const int max_rows = block_tokens * group;
  const bool causal = keys.causal_offset >= 0;

  thread_local Scratch scratch;
  scratch.q.resize(static_cast<size_t>(max_rows) * d);
  scratch.s.resize(static_cast<size_t>(max_rows) * kKeyTile);
  scratch.acc.resize(static_cast<size_t>(max_rows) * d);
  scratch.m.resize(max_rows);
  scratch.l.resize(max_rows);
  scratch.k_stage.resize(static_cast<size_t>(kKeyTile) * d);
  scratch.v_stage.resize(static_cast<size_t>(kKeyTile) * d);
  scratch.rows.resize(kKeyTile);
  float* qb = scratch.q.data();
  float* s = scratch.s.data();
  float* acc = scratch.acc.data();
  float* m = scratch.m.data();
  float* l = scratch.l.data();
  const int* tile_rows = scratch.rows.data();

  const KeyRange all_rows{0, keys.kv.num_rows};
  for (int h = 0; h < hkv; ++h) {
    const std::span<const KeyRange> ranges = keys.ranges.empty()
                                                 ? std::span<const KeyRange>(&all_rows, 1)
                                                 : std::span<const KeyRange>(keys.ranges[h]);
    const float* kh = keys.kv.kf() + h * keys.kv.head_stride;
    const float* vh = keys.kv.vf() + h * keys.kv.head_stride;

    for (int t0 = 0; t0 < n; t0 += block_tokens) {
      const int nt = std::min(block_tokens, n - t0);
      const int rows = nt * group;
      // Block row r = t * G + g holds query head h * G + g of token t0 + t, pre-scaled.
      for (int t = 0; t < nt; ++t) {
        const float* src = q + (static_cast<size_t>(t0 + t) * hq + h * group) * d;
        for (int i = 0; i < group * d; ++i) qb[t * group * d + i] = src[i] * shape.scale;
      }
      std::fill(m, m + rows, kNegInf);
      std::fill(l, l + rows, 0.0f);
      std::fill(acc, acc + static_cast<size_t>(rows) * d, 0.0f);

      // Causal bounds: rows < unmasked_end are seen by every query of the block, rows >=
      // visible_end by none.
      const int visible_end = causal ? keys.causal_offset + t0 + nt : keys.kv.num_rows;
      const int unmasked_end =
          causal ? keys.causal_offset + t0 + 1 : std::numeric_limits<int>::max();

      KeyTiles tiles(ranges, std::min(visible_end, keys.kv.num_rows), kh, vh, d,
                     scratch.k_stage.data(), scratch.v_stage.data(), scratch.rows.data());
      const float* kt = nullptr;
      const float* vt = nullptr;
      for (int len; (len = tiles.Next(&kt, &vt)) > 0;) {
        // s[rows, len] = qb . kt^T
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, len, d, 1.0f, qb, d, kt, d, 0.0f,
                    s, len);
        if (causal && *std::max_element(tile_rows, tile_rows + len) >= unmasked_end) {
          for (int r = 0; r < rows; ++r) {
            const int limit = keys.causal_offset + t0 + r / group;  // last visible row
            for (int j = 0; j < len; ++j) {
              if (tile_rows[j] > limit) s[r * len + j] = kNegInf;
            }
          }
        }
        OnlineSoftmaxStep(s, rows, len, d, m, l, acc);
        // acc[rows, d] += p[rows, len] . vt[len, d]
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, d, len, 1.0f, s, len, vt, d,
                    1.0f, acc, d);
      }

      for (int r = 0; r < rows; ++r) {
        const int t = t0 + r / group, qh = h * group + r % group;
        float* o = out + (static_cast<size_t>(t) * hq + qh) * d;
        if (l[r] > 0.0f) {
          const float inv = 1.0f / l[r];
          for (int i = 0; i < d; ++i) o[i] = acc[r * d + i] * inv;
          lse[t * hq + qh] = m[r] + std::log(l[r]);
        } else {
          std::fill(o, o + d, 0.0f);
          lse[t * hq + qh] = kNegInf;
        }
      }
    }
  }
}

void MergeAttentionPartials(float* out_a, float* lse_a, const float* out_b, const float* lse_b,
                            int rows, int head_dim) {
  for (int r = 0; r < rows; ++r) {
    const float la = lse_a[r], lb = lse_b[r];
    float* oa = out_a + static_cast<size_t>(r) * head_dim;
    const float* ob = out_b + static_cast<size_t>(r) * head_dim;
    if (lb == kNegInf) continue;
    if (la == kNegInf) {
      std::copy(ob, ob + head_dim, oa);
      lse_a[r] = lb;
      continue;
    }
    const float mx = std::max(la, lb);
    const float wa = std::exp(la - mx), wb = std::exp(lb - mx);
    const float inv = 1.0f / (wa + wb);
    for (int i = 0; i < head_dim; ++i) oa[i] = (wa * oa[i] + wb * ob[i]) * inv;
    lse_a[r] = mx + std::log(wa + wb);
  }
}

void CascadeAttention(const AttentionShape& shape, const float* q, const SharedKeys& keys,
                      int chunk_keys, float* out, float* lse) {
  const int n = shape.num_queries, hq = shape.num_q_heads, hkv = shape.num_kv_heads;
  const int d = shape.head_dim;
  auto num_keys = [&](int h) {
    return keys.rows.empty() ? keys.kv.num_rows : static_cast<int>(keys.rows[h].size());
  };
  int max_chunks = 0;
  for (int h = 0; h < hkv; ++h) {
    max_chunks = std::max(max_chunks, (num_keys(h) + chunk_keys - 1) / chunk_keys);
  }
  const AttentionShape one{1, hq, hkv, d, shape.scale};
  std::vector<std::vector<KeyRange>> ranges(hkv);
  std::vector<float> part_out(static_cast<size_t>(hq) * d), part_lse(hq);
  for (int s = 0; s < n; ++s) {
    const float* qs = q + static_cast<size_t>(s) * hq * d;
    float* os = out + static_cast<size_t>(s) * hq * d;
    float* ls = lse + static_cast<size_t>(s) * hq;
    std::fill(os, os + static_cast<size_t>(hq) * d, 0.0f);
    std::fill(ls, ls + hq, kNegInf);
    for (int c = 0; c < max_chunks; ++c) {
      // The chunk's keys this sequence sees, per head, as single-row ranges.
      for (int h = 0; h < hkv; ++h) {
        ranges[h].clear();
        const int end = std::min(num_keys(h), (c + 1) * chunk_keys);
        for (int i = c * chunk_keys; i < end; ++i) {
          if (!keys.masks.empty() && ((keys.masks[h][i] >> s) & 1u) == 0) continue;
          const int row = keys.rows.empty() ? i : keys.rows[h][i];
          ranges[h].push_back(KeyRange{row, row + 1});
        }
      }
      AttentionKeys chunk;
      chunk.kv = keys.kv;
      chunk.ranges = ranges;
      AttentionPartial(one, qs, chunk, part_out.data(), part_lse.data());
      MergeAttentionPartials(os, ls, part_out.data(), part_lse.data(), hq, d);
    }
  }
}

}  // namespace squeeze
