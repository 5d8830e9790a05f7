#include "engine/squeeze/index_io.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <string>
#include <string_view>

#include "absl/strings/str_format.h"

namespace squeeze {
namespace {

constexpr char kMagic[8] = {'S', 'Q', 'Z', 'I', 'N', 'D', 'E', 'X'};

uint64_t Fnv1a64(std::string_view bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

// Appends little-endian values to a byte string.
class Writer {
 public:
  void U8(uint8_t v) { bytes_.push_back(static_cast<char>(v)); }
  void U32(uint32_t v) { Le(v, 4); }
  void I32(int32_t v) { Le(static_cast<uint32_t>(v), 4); }
  void U64(uint64_t v) { Le(v, 8); }
  void I64(int64_t v) { Le(static_cast<uint64_t>(v), 8); }
  void F32(float v) { Le(std::bit_cast<uint32_t>(v), 4); }
  void F64(double v) { Le(std::bit_cast<uint64_t>(v), 8); }
  void Raw(const char* p, size_t n) { bytes_.append(p, n); }
  template <typename T>
  void I32s(const std::vector<T>& v) {
    for (T x : v) I32(x);
  }
  void F32s(const std::vector<float>& v) {
    for (float x : v) F32(x);
  }
  std::string& bytes() { return bytes_; }

 private:
  void Le(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) bytes_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  std::string bytes_;
};

// Reads little-endian values from a byte string; every read is bounds-checked and a failed
// read latches `ok() == false` (callers check after each group and return DataLoss).
class Reader {
 public:
  explicit Reader(std::string_view bytes) : bytes_(bytes) {}
  bool ok() const { return ok_; }
  size_t remaining() const { return bytes_.size() - pos_; }

  uint64_t Le(int n) {
    if (!ok_ || remaining() < static_cast<size_t>(n)) {
      ok_ = false;
      return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) {
      v |= static_cast<uint64_t>(static_cast<unsigned char>(bytes_[pos_ + i])) << (8 * i);
    }
    pos_ += n;
    return v;
  }
  uint8_t U8() { return static_cast<uint8_t>(Le(1)); }
  uint32_t U32() { return static_cast<uint32_t>(Le(4)); }
  int32_t I32() { return static_cast<int32_t>(static_cast<uint32_t>(Le(4))); }
  uint64_t U64() { return Le(8); }
  int64_t I64() { return static_cast<int64_t>(Le(8)); }
  float F32() { return std::bit_cast<float>(static_cast<uint32_t>(Le(4))); }
  double F64() { return std::bit_cast<double>(Le(8)); }

  // Reads `count` 4-byte values, refusing counts the remaining bytes cannot hold (so a corrupt
  // count never triggers a huge allocation).
  bool I32s(int64_t count, std::vector<int32_t>* out) {
    if (!Fits(count, 4)) return false;
    out->resize(count);
    for (int32_t& x : *out) x = I32();
    return ok_;
  }
  bool F32s(int64_t count, std::vector<float>* out) {
    if (!Fits(count, 4)) return false;
    out->resize(count);
    for (float& x : *out) x = F32();
    return ok_;
  }
  bool I64s(int64_t count, std::vector<int64_t>* out) {
    if (!Fits(count, 8)) return false;
    out->resize(count);
    for (int64_t& x : *out) x = I64();
    return ok_;
  }

 private:
  bool Fits(int64_t count, int width) {
    if (!ok_ || count < 0 || static_cast<uint64_t>(count) > remaining() / width) ok_ = false;
    return ok_;
  }
  std::string_view bytes_;
  size_t pos_ = 0;
  bool ok_ = true;
};

absl::Status Corrupt(const std::string& what) {
  return absl::DataLossError("squeeze index: " + what);
}

void WriteDistribution(const ScoreDistribution& dist, Writer* w) {
  w->I64(static_cast<int64_t>(dist.scores().size()));
  w->F32s(dist.scores());
  for (int64_t c : dist.cumulative_keys()) w->I64(c);
}

absl::StatusOr<ScoreDistribution> ReadDistribution(Reader* r, int64_t expected_keys,
                                                   const char* what) {
  const int64_t K = r->I64();
  std::vector<float> scores;
  std::vector<int64_t> cum;
  if (!r->ok() || !r->F32s(K, &scores) || !r->I64s(K, &cum)) {
    return Corrupt(absl::StrFormat("%s truncated", what));
  }
  absl::StatusOr<ScoreDistribution> dist =
      ScoreDistribution::FromParts(std::move(scores), std::move(cum), what);
  if (!dist.ok()) return Corrupt(std::string(dist.status().message()));
  if (dist->total_keys() != expected_keys) {
    return Corrupt(
        absl::StrFormat("%s covers %d keys, expected %d", what, dist->total_keys(), expected_keys));
  }
  return dist;
}

bool AllFinite(const std::vector<float>& v) {
  for (float x : v) {
    if (!std::isfinite(x)) return false;
  }
  return true;
}

// Reads an ascending CSR: count, then offsets[count + 1] with offsets[0] = first,
// offsets[count] = last and strictly increasing entries (no empty group).
bool ReadCsr(Reader* r, int32_t min_count, int32_t max_count, int32_t first, int32_t last,
             std::vector<int32_t>* offsets) {
  const int32_t count = r->I32();
  if (!r->ok() || count < min_count || count > max_count) return false;
  if (!r->I32s(static_cast<int64_t>(count) + 1, offsets)) return false;
  if ((*offsets)[0] != first || (*offsets)[count] != last) return false;
  for (int32_t i = 0; i < count; ++i) {
    if (!((*offsets)[i + 1] > (*offsets)[i])) return false;
  }
  return true;
}

absl::Status ReadHead(Reader* r, const SqueezeIndex& index, int layer, int kv_head,
                      SqueezeHeadIndex* head) {
  const int d = index.head_dim, M = index.num_clustered;
  const std::string where = absl::StrFormat("layer %d, kv head %d", layer, kv_head);
  if (!ReadCsr(r, M > 0 ? 1 : 0, M, index.sinks, index.sinks + M, &head->offsets)) {
    return Corrupt("bad or truncated cluster offsets at " + where);
  }
  const int C = static_cast<int>(head->offsets.size()) - 1;
  head->sizes.resize(C);
  for (int c = 0; c < C; ++c) head->sizes[c] = head->offsets[c + 1] - head->offsets[c];
  if (!r->F32s(static_cast<int64_t>(C) * d, &head->centroids) || !AllFinite(head->centroids)) {
    return Corrupt("bad or truncated centroids at " + where);
  }
  if (!index.hierarchical()) return absl::OkStatus();
  if (!ReadCsr(r, C > 0 ? 1 : 0, C, 0, C, &head->coarse_offsets)) {
    return Corrupt("bad or truncated coarse offsets at " + where);
  }
  const int C1 = static_cast<int>(head->coarse_offsets.size()) - 1;
  head->coarse_sizes.resize(C1);
  for (int g = 0; g < C1; ++g) {
    head->coarse_sizes[g] =
        head->offsets[head->coarse_offsets[g + 1]] - head->offsets[head->coarse_offsets[g]];
  }
  if (!r->F32s(static_cast<int64_t>(C1) * d, &head->coarse_centroids) ||
      !AllFinite(head->coarse_centroids)) {
    return Corrupt("bad or truncated coarse centroids at " + where);
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteSqueezeIndex(const SqueezeIndex& index, std::ostream& out) {
  Writer body;
  for (int v : {index.num_layers, index.num_kv_heads, index.num_q_heads, index.head_dim,
                index.num_tokens, index.sinks, index.window, index.num_clustered}) {
    body.I32(v);
  }
  const SqueezeOptions& o = index.options;
  body.F64(o.centroid_fraction);
  body.F64(o.coarse_fraction);
  body.I32(o.window);
  body.I32(o.sinks);
  body.I32(o.max_iterations);
  body.U64(o.seed);
  body.U8(o.hierarchical ? 1 : 0);
  body.F64(o.kmeans_min_changed);
  for (const SqueezeHeadIndex& head : index.heads) {
    body.I32(head.num_clusters());
    body.I32s(head.offsets);
    body.F32s(head.centroids);
    if (index.hierarchical()) {
      body.I32(head.num_coarse());
      body.I32s(head.coarse_offsets);
      body.F32s(head.coarse_centroids);
    }
  }
  WriteDistribution(index.fine_scores, &body);
  if (index.hierarchical()) WriteDistribution(index.coarse_scores, &body);

  Writer file;
  file.Raw(kMagic, sizeof(kMagic));
  file.U32(kSqueezeIndexVersion);
  file.U64(body.bytes().size() + 8);  // bytes that follow this field, checksum included
  file.Raw(body.bytes().data(), body.bytes().size());
  file.U64(Fnv1a64(file.bytes()));
  out.write(file.bytes().data(), static_cast<std::streamsize>(file.bytes().size()));
  if (!out) return absl::DataLossError("squeeze index: write failed");
  return absl::OkStatus();
}

absl::StatusOr<SqueezeIndex> ReadSqueezeIndex(std::istream& in) {
  // Prefix: magic, version, length of the rest. Reading stops exactly at the end of the index,
  // so the index can be embedded in a larger file.
  constexpr size_t kPrefix = sizeof(kMagic) + 4 + 8;
  std::string data(kPrefix, '\0');
  in.read(data.data(), kPrefix);
  const size_t got = static_cast<size_t>(in.gcount());
  if (got < sizeof(kMagic) || std::memcmp(data.data(), kMagic, sizeof(kMagic)) != 0) {
    return absl::InvalidArgumentError("squeeze index: bad magic (not a squeeze index)");
  }
  if (got < kPrefix) return Corrupt("truncated header");
  Reader prefix(std::string_view(data).substr(sizeof(kMagic)));
  const uint32_t version = prefix.U32();
  if (version < kOldestSqueezeIndexVersion || version > kSqueezeIndexVersion) {
    return absl::InvalidArgumentError(
        absl::StrFormat("squeeze index: unsupported version %d (this build reads %d to %d)",
                        version, kOldestSqueezeIndexVersion, kSqueezeIndexVersion));
  }
  const uint64_t length = prefix.U64();
  if (length < 8) return Corrupt("bad length");
  // Read in bounded chunks so a corrupt length runs into end-of-file, not a huge allocation.
  constexpr uint64_t kChunk = 1 << 20;
  for (uint64_t left = length; left > 0;) {
    const size_t n = static_cast<size_t>(std::min(left, kChunk));
    const size_t old = data.size();
    data.resize(old + n);
    in.read(data.data() + old, static_cast<std::streamsize>(n));
    if (static_cast<size_t>(in.gcount()) != n) return Corrupt("truncated");
    left -= n;
  }
  const std::string_view covered(data.data(), data.size() - 8);
  Reader tail(std::string_view(data).substr(data.size() - 8));
  if (tail.U64() != Fnv1a64(covered)) return Corrupt("checksum mismatch (corrupt file)");

  Reader r(covered.substr(kPrefix));
  SqueezeIndex index;
  index.num_layers = r.I32();
  index.num_kv_heads = r.I32();
  index.num_q_heads = r.I32();
  index.head_dim = r.I32();
  index.num_tokens = r.I32();
  index.sinks = r.I32();
  index.window = r.I32();
  index.num_clustered = r.I32();
  SqueezeOptions& o = index.options;
  o.centroid_fraction = r.F64();
  o.coarse_fraction = r.F64();
  o.window = r.I32();
  o.sinks = r.I32();
  o.max_iterations = r.I32();
  o.seed = r.U64();
  const uint8_t hierarchical = r.U8();
  if (version >= 2) o.kmeans_min_changed = r.F64();  // version 1: the exact rule, 0
  if (!r.ok()) return Corrupt("truncated header");
  if (index.num_layers < 1 || index.num_kv_heads < 1 || index.head_dim < 1 ||
      index.num_q_heads < 1 || index.num_q_heads % index.num_kv_heads != 0 ||
      index.num_tokens < 0 || index.sinks < 0 || index.window < 0 || index.num_clustered < 0 ||
      static_cast<int64_t>(index.sinks) + index.window + index.num_clustered != index.num_tokens) {
    return Corrupt(absl::StrFormat(
        "inconsistent shape (L %d, Hkv %d, Hq %d, d %d, S %d, sinks %d, window %d, M %d)",
        index.num_layers, index.num_kv_heads, index.num_q_heads, index.head_dim, index.num_tokens,
        index.sinks, index.window, index.num_clustered));
  }
  if (hierarchical > 1 || !ValidateSqueezeOptions(o).ok() || o.window != index.window ||
      o.sinks != index.sinks) {
    return Corrupt("options inconsistent with the header");
  }
  o.hierarchical = hierarchical == 1;
  // Every head takes at least 8 bytes (count + one offset): bounds the reservation below.
  const int64_t num_heads = static_cast<int64_t>(index.num_layers) * index.num_kv_heads;
  if (num_heads > static_cast<int64_t>(r.remaining() / 8)) return Corrupt("truncated clusters");
  index.heads.resize(num_heads);
  for (int l = 0; l < index.num_layers; ++l) {
    for (int h = 0; h < index.num_kv_heads; ++h) {
      SqueezeHeadIndex& head = index.heads[static_cast<size_t>(l) * index.num_kv_heads + h];
      if (absl::Status s = ReadHead(&r, index, l, h, &head); !s.ok()) return s;
    }
  }
  const int64_t keys = num_heads * index.num_clustered;
  absl::StatusOr<ScoreDistribution> fine = ReadDistribution(&r, keys, "fine score distribution");
  if (!fine.ok()) return fine.status();
  index.fine_scores = *std::move(fine);
  if (index.hierarchical()) {
    absl::StatusOr<ScoreDistribution> coarse =
        ReadDistribution(&r, keys, "coarse score distribution");
    if (!coarse.ok()) return coarse.status();
    index.coarse_scores = *std::move(coarse);
  }
  if (r.remaining() != 0) return Corrupt("trailing bytes after the score distributions");
  return index;
}

}  // namespace squeeze
