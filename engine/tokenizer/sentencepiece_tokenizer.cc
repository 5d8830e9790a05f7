// SentencePiece encoding and decoding, following libsentencepiece 0.1.97 step by step
// (normalizer.cc, bpe_model.cc, unigram_model.cc EncodeOptimized, model_interface.cc,
// sentencepiece_processor.cc) so that ids and decoded text match it exactly.
#include "engine/tokenizer/sentencepiece_tokenizer.h"

#include <algorithm>
#include <cfloat>
#include <fstream>
#include <iterator>
#include <queue>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"

namespace squeeze {
namespace {

constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";      // U+2581 '▁'
constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD
// Added to the lowest piece score for a character the unigram vocabulary lacks.
constexpr float kUnkPenalty = 10.0f;

// Bytes of the UTF-8 character that `text` starts with, judged by its first byte alone (a stray
// continuation byte counts as 1), clipped to what is left. `text` must not be empty.
size_t OneCharLen(std::string_view text) {
  static constexpr uint8_t kLen[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return std::min<size_t>(kLen[static_cast<uint8_t>(text[0]) >> 4], text.size());
}

bool IsTrailByte(char c) { return (static_cast<uint8_t>(c) & 0xC0) == 0x80; }

// Whether `text` starts with a well-formed UTF-8 character (no overlongs, surrogates or code
// points above U+10FFFF); sets *length to its size, or to 1 when it is malformed.
bool ValidUtf8Prefix(std::string_view text, size_t* length) {
  const auto b0 = static_cast<uint8_t>(text[0]);
  *length = 1;
  if (b0 < 0x80) return true;
  uint32_t cp = 0;
  size_t len = 0;
  if ((b0 & 0xE0) == 0xC0) {
    len = 2;
    cp = b0 & 0x1F;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3;
    cp = b0 & 0x0F;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4;
    cp = b0 & 0x07;
  } else {
    return false;
  }
  if (text.size() < len) return false;
  for (size_t i = 1; i < len; ++i) {
    if (!IsTrailByte(text[i])) return false;
    cp = cp << 6 | (static_cast<uint8_t>(text[i]) & 0x3F);
  }
  static constexpr uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMin[len] || (cp >= 0xD800 && cp < 0xE000) || cp > 0x10FFFF) return false;
  *length = len;
  return true;
}

// Appends `bytes` with each byte that does not start a well-formed character replaced by U+FFFD.
void AppendBytesAsUtf8(std::string_view bytes, std::string* out) {
  while (!bytes.empty()) {
    size_t length = 0;
    if (ValidUtf8Prefix(bytes, &length)) {
      out->append(bytes.substr(0, length));
    } else {
      out->append(kReplacementChar);
    }
    bytes.remove_prefix(length);
  }
}

// "<0xNN>" (upper-case hex, as the trainer writes it) -> NN, else -1.
int PieceToByte(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return -1;
  int value = 0;
  for (char c : piece.substr(3, 2)) {
    value <<= 4;
    if (c >= '0' && c <= '9') {
      value |= c - '0';
    } else if (c >= 'A' && c <= 'F') {
      value |= c - 'A' + 10;
    } else {
      return -1;
    }
  }
  return value;
}

std::string ReplaceSpaceMarkers(std::string_view piece) {
  std::string out;
  out.reserve(piece.size());
  while (!piece.empty()) {
    if (piece.substr(0, kSpaceSymbol.size()) == kSpaceSymbol) {
      out.push_back(' ');
      piece.remove_prefix(kSpaceSymbol.size());
    } else {
      out.push_back(piece.front());
      piece.remove_prefix(1);
    }
  }
  return out;
}

}  // namespace

// ---- ByteTrie -----------------------------------------------------------------------------------

// A byte-wise trie over a fixed set of keys with int32 values, stored as sorted edge lists
// (CSR); the root's children are a direct 256-entry table since every lookup passes through it.
class SentencePieceTokenizer::ByteTrie {
 public:
  explicit ByteTrie(std::vector<std::pair<std::string_view, int32_t>> keys) {
    std::sort(keys.begin(), keys.end());
    root_.fill(kNone);
    // Breadth-first: a node covers the keys [lo, hi) that share its `depth`-byte prefix. Nodes
    // are numbered and expanded in queue order, so each node's edges are contiguous.
    struct Span {
      uint32_t node;
      size_t lo, hi, depth;
    };
    std::vector<Span> queue = {{0, 0, keys.size(), 0}};
    values_.push_back(-1);
    for (size_t q = 0; q < queue.size(); ++q) {
      auto [node, lo, hi, depth] = queue[q];
      edge_begin_.push_back(static_cast<uint32_t>(labels_.size()));
      for (; lo < hi && keys[lo].first.size() == depth; ++lo) {
        if (values_[node] < 0) values_[node] = keys[lo].second;  // duplicates: first wins
      }
      while (lo < hi) {
        const auto label = static_cast<uint8_t>(keys[lo].first[depth]);
        size_t end = lo;
        while (end < hi && static_cast<uint8_t>(keys[end].first[depth]) == label) ++end;
        const auto child = static_cast<uint32_t>(values_.size());
        values_.push_back(-1);
        labels_.push_back(label);
        targets_.push_back(child);
        if (node == 0) root_[label] = child;
        queue.push_back({child, lo, end, depth + 1});
        lo = end;
      }
    }
    edge_begin_.push_back(static_cast<uint32_t>(labels_.size()));
  }

  // Calls visit(length, value) for every key that is a prefix of `text`, shortest first.
  template <typename Visit>
  void ForEachPrefix(std::string_view text, Visit&& visit) const {
    uint32_t node = 0;
    for (size_t i = 0; i < text.size(); ++i) {
      node = Child(node, static_cast<uint8_t>(text[i]));
      if (node == kNone) return;
      if (values_[node] >= 0) visit(i + 1, values_[node]);
    }
  }

  // Length of the longest key that is a prefix of `text`; 0 when none.
  size_t LongestPrefix(std::string_view text) const {
    size_t longest = 0;
    ForEachPrefix(text, [&](size_t length, int32_t) { longest = length; });
    return longest;
  }

 private:
  static constexpr uint32_t kNone = 0xFFFFFFFFu;

  uint32_t Child(uint32_t node, uint8_t label) const {
    if (node == 0) return root_[label];
    const auto first = labels_.begin() + edge_begin_[node];
    const auto last = labels_.begin() + edge_begin_[node + 1];
    const auto it = std::lower_bound(first, last, label);
    if (it == last || *it != label) return kNone;
    return targets_[static_cast<size_t>(it - labels_.begin())];
  }

  std::vector<int32_t> values_;       // [num_nodes] value of the key ending here, -1 if none
  std::vector<uint32_t> edge_begin_;  // [num_nodes + 1] first edge of each node
  std::vector<uint8_t> labels_;       // [num_edges] sorted within a node
  std::vector<uint32_t> targets_;     // [num_edges] child node
  std::array<uint32_t, 256> root_;    // root's child per byte, kNone if absent
};

// ---- Normalizer ---------------------------------------------------------------------------------

// NormalizerSpec applied to input text (normalizer.cc, Normalizer::Normalize).
class SentencePieceTokenizer::Normalizer {
 public:
  Normalizer(const SentencePieceModel::NormalizerSpec& spec, PrecompiledCharsMap charsmap,
             bool whitespace_as_suffix, const ByteTrie* user_defined)
      : spec_(spec),
        charsmap_(std::move(charsmap)),
        whitespace_as_suffix_(whitespace_as_suffix),
        user_defined_(user_defined) {}

  std::string Normalize(std::string_view input) const {
    std::string out;
    if (input.empty()) return out;
    if (spec_.remove_extra_whitespaces) {  // leading whitespace
      while (!input.empty()) {
        const auto [normalized, consumed] = NormalizePrefix(input);
        if (normalized != " ") break;
        input.remove_prefix(consumed);
      }
    }
    if (input.empty()) return out;  // nothing but whitespace: no dummy prefix either

    out.reserve(input.size() * 3);
    const std::string_view space = spec_.escape_whitespaces ? kSpaceSymbol : " ";
    if (!whitespace_as_suffix_ && spec_.add_dummy_prefix) out.append(space);
    bool is_prev_space = spec_.remove_extra_whitespaces;
    while (!input.empty()) {
      auto [normalized, consumed] = NormalizePrefix(input);
      // Collapses whitespace runs: drops spaces that follow a space.
      while (is_prev_space && !normalized.empty() && normalized.front() == ' ') {
        normalized.remove_prefix(1);
      }
      if (!normalized.empty()) {
        for (char c : normalized) {
          if (c == ' ' && spec_.escape_whitespaces) {
            out.append(kSpaceSymbol);
          } else {
            out.push_back(c);
          }
        }
        is_prev_space = normalized.back() == ' ';
      }
      input.remove_prefix(consumed);
      if (!spec_.remove_extra_whitespaces) is_prev_space = false;
    }
    if (spec_.remove_extra_whitespaces) {  // trailing whitespace
      while (out.size() >= space.size() &&
             out.compare(out.size() - space.size(), space.size(), space) == 0) {
        out.resize(out.size() - space.size());
      }
    }
    if (whitespace_as_suffix_ && spec_.add_dummy_prefix) out.append(space);
    return out;
  }

 private:
  // The normalized form of the start of `input` and the input bytes it replaces: a user-defined
  // symbol verbatim, else the longest charsmap rule, else one UTF-8 character (a malformed byte
  // becomes U+FFFD).
  std::pair<std::string_view, size_t> NormalizePrefix(std::string_view input) const {
    if (user_defined_ != nullptr) {
      const size_t length = user_defined_->LongestPrefix(input);
      if (length > 0) return {input.substr(0, length), length};
    }
    std::string_view replacement;
    const size_t length = charsmap_.LongestMatch(input, &replacement);
    if (length > 0) return {replacement, length};
    size_t char_length = 0;
    if (!ValidUtf8Prefix(input, &char_length)) return {kReplacementChar, 1};
    return {input.substr(0, char_length), char_length};
  }

  SentencePieceModel::NormalizerSpec spec_;
  PrecompiledCharsMap charsmap_;
  bool whitespace_as_suffix_;
  const ByteTrie* user_defined_;  // not owned; null for the denormalizer
};

// ---- Loading ------------------------------------------------------------------------------------

SentencePieceTokenizer::SentencePieceTokenizer(SentencePieceModel model)
    : model_(std::move(model)) {}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> SentencePieceTokenizer::Load(
    const std::string& model_path) {
  std::ifstream file(model_path, std::ios::binary);
  if (!file) {
    return absl::NotFoundError(absl::StrCat("cannot open SentencePiece model '", model_path, "'"));
  }
  const std::string bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (file.bad()) {
    return absl::DataLossError(absl::StrCat("cannot read SentencePiece model '", model_path, "'"));
  }
  return FromSerializedModel(bytes, model_path);
}

absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> SentencePieceTokenizer::FromSerializedModel(
    std::string_view serialized, std::string_view origin) {
  auto fail = [&](const absl::Status& status) {
    return absl::InvalidArgumentError(absl::StrCat("cannot load SentencePiece model '",
                                                   std::string(origin), "': ", status.message()));
  };
  auto model = ParseSentencePieceModel(serialized);
  if (!model.ok()) return fail(model.status());
  std::unique_ptr<SentencePieceTokenizer> tokenizer(new SentencePieceTokenizer(*std::move(model)));
  const absl::Status status = tokenizer->Init();
  if (!status.ok()) return fail(status);
  return tokenizer;
}

absl::Status SentencePieceTokenizer::Init() {
  using Type = PieceType;
  const auto& pieces = model_.pieces;
  const auto& trainer = model_.trainer_spec;
  if (pieces.empty()) return absl::InvalidArgumentError("the vocabulary (pieces) is empty");
  if (pieces.size() > static_cast<size_t>(INT32_MAX)) {
    return absl::InvalidArgumentError("the vocabulary has more than 2^31 pieces");
  }
  std::vector<std::pair<std::string_view, int32_t>> user_defined;
  std::array<bool, 256> byte_found{};
  for (size_t i = 0; i < pieces.size(); ++i) {
    const auto id = static_cast<int32_t>(i);
    const SentencePieceModel::Piece& piece = pieces[i];
    if (piece.text.empty())
      return absl::InvalidArgumentError(absl::StrCat("piece ", i, " is empty"));
    if (piece.text.find('\0') != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("piece ", i, " contains a NUL byte"));
    }
    const bool reserved =
        piece.type == Type::kControl || piece.type == Type::kUnknown || piece.type == Type::kByte;
    if (!(reserved ? reserved_ : pieces_).emplace(piece.text, id).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("piece '", piece.text, "' (id ", i, ") is defined twice"));
    }
    if (piece.type == Type::kUserDefined) user_defined.emplace_back(piece.text, id);
    if (piece.type == Type::kUnknown) {
      if (unk_id_ >= 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("two unknown pieces: ids ", unk_id_, " and ", i));
      }
      unk_id_ = id;
    }
    if (piece.type == Type::kByte) {
      if (!trainer.byte_fallback) {
        return absl::InvalidArgumentError(absl::StrCat("byte piece '", piece.text, "' (id ", i,
                                                       ") found although byte_fallback is off"));
      }
      const int byte = PieceToByte(piece.text);
      if (byte < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("byte piece '", piece.text, "' (id ", i, ") is not of the form <0xNN>"));
      }
      byte_found[byte] = true;
      byte_ids_[byte] = id;
    }
  }
  if (unk_id_ < 0) return absl::InvalidArgumentError("no piece has type UNKNOWN (<unk>)");
  if (trainer.byte_fallback &&
      std::find(byte_found.begin(), byte_found.end(), false) != byte_found.end()) {
    return absl::InvalidArgumentError("byte_fallback is on but not all 256 byte pieces exist");
  }
  if (!user_defined.empty()) user_defined_ = std::make_unique<ByteTrie>(std::move(user_defined));

  // Normalizers.
  PrecompiledCharsMap charsmap;
  if (!model_.normalizer_spec.precompiled_charsmap.empty()) {
    ASSIGN_OR_RETURN(charsmap,
                     PrecompiledCharsMap::Parse(model_.normalizer_spec.precompiled_charsmap));
  }
  normalizer_ =
      std::make_unique<Normalizer>(model_.normalizer_spec, std::move(charsmap),
                                   trainer.treat_whitespace_as_suffix, user_defined_.get());
  if (model_.has_denormalizer_spec && !model_.denormalizer_spec.precompiled_charsmap.empty()) {
    ASSIGN_OR_RETURN(PrecompiledCharsMap decharsmap,
                     PrecompiledCharsMap::Parse(model_.denormalizer_spec.precompiled_charsmap));
    denormalizer_ = std::make_unique<Normalizer>(model_.denormalizer_spec, std::move(decharsmap),
                                                 /*whitespace_as_suffix=*/false, nullptr);
  }

  // Model-specific structures.
  min_score_ = FLT_MAX;
  max_score_ = FLT_MIN;  // sic: the smallest positive float, as unigram_model.cc starts it
  for (const auto& piece : pieces) {
    if (piece.type != Type::kNormal) continue;
    min_score_ = std::min(min_score_, piece.score);
    max_score_ = std::max(max_score_, piece.score);
  }
  if (trainer.model_type == SentencePieceModel::ModelType::kUnigram) {
    if (pieces_.empty()) {
      return absl::InvalidArgumentError("a unigram model needs normal or user-defined pieces");
    }
    vocab_trie_ = std::make_unique<ByteTrie>(
        std::vector<std::pair<std::string_view, int32_t>>(pieces_.begin(), pieces_.end()));
  }

  // Special ids, as SentencePieceProcessor::bos_id() etc. find them: by piece, if of the
  // expected type.
  auto special = [&](const std::string& name, const char* fallback, Type expected) {
    const int32_t id = PieceToId(name.empty() ? std::string_view(fallback) : name);
    return type(id) == expected ? id : -1;
  };
  bos_id_ = special(trainer.bos_piece, "<s>", Type::kControl);
  eos_id_ = special(trainer.eos_piece, "</s>", Type::kControl);

  // Decoding tables.
  unk_surface_ = trainer.has_unk_surface ? trainer.unk_surface : " \xE2\x81\x87 ";
  decode_ids_.resize(pieces.size());
  token_bytes_.resize(pieces.size());
  for (size_t i = 0; i < pieces.size(); ++i) {
    // The library decodes ids through their piece strings, so a normal piece that spells a
    // reserved one (e.g. a NORMAL "<s>") decodes as the reserved one.
    const int32_t id = decode_ids_[i] = PieceToId(pieces[i].text);
    switch (type(id)) {
      case Type::kControl:
        break;
      case Type::kUnknown:
        token_bytes_[i] = unk_surface_;
        break;
      case Type::kByte:
        token_bytes_[i] = std::string(1, static_cast<char>(PieceToByte(pieces[id].text)));
        break;
      default:
        token_bytes_[i] = ReplaceSpaceMarkers(pieces[id].text);
        break;
    }
  }
  return absl::OkStatus();
}

int32_t SentencePieceTokenizer::PieceToId(std::string_view piece) const {
  if (auto it = reserved_.find(piece); it != reserved_.end()) return it->second;
  if (auto it = pieces_.find(piece); it != pieces_.end()) return it->second;
  return unk_id_;
}

// ---- Encoding -----------------------------------------------------------------------------------

std::string SentencePieceTokenizer::Normalize(std::string_view text) const {
  return normalizer_->Normalize(text);
}

absl::StatusOr<std::vector<int32_t>> SentencePieceTokenizer::Encode(std::string_view text) const {
  const std::string normalized = normalizer_->Normalize(text);
  std::vector<int32_t> ids;
  if (normalized.empty()) return ids;
  Segmentation segmentation;
  switch (model_.trainer_spec.model_type) {
    case SentencePieceModel::ModelType::kUnigram:
      segmentation = EncodeUnigram(normalized);
      break;
    case SentencePieceModel::ModelType::kBpe:
      segmentation = EncodeBpe(normalized);
      break;
    case SentencePieceModel::ModelType::kWord:
      segmentation = EncodeWord(normalized);
      break;
    case SentencePieceModel::ModelType::kChar:
      segmentation = EncodeChar(normalized);
      break;
  }
  // Unknown pieces become their UTF-8 bytes with byte fallback; otherwise a run of unknown
  // pieces becomes one unknown id (sentencepiece_processor.cc, PopulateSentencePieceText).
  ids.reserve(segmentation.size());
  bool prev_unknown = false;
  for (const auto& [piece, id] : segmentation) {
    const bool unknown = type(id) == PieceType::kUnknown;
    if (unknown && model_.trainer_spec.byte_fallback) {
      for (char byte : piece) ids.push_back(byte_ids_[static_cast<uint8_t>(byte)]);
    } else if (!(unknown && prev_unknown)) {
      ids.push_back(id);
    }
    prev_unknown = unknown;
  }
  return ids;
}

// bpe_model.cc: start from characters (user-defined symbols whole and frozen) and repeatedly
// merge the adjacent pair whose concatenation is the best-scoring piece, leftmost on ties.
SentencePieceTokenizer::Segmentation SentencePieceTokenizer::EncodeBpe(
    std::string_view normalized) const {
  struct Symbol {
    int prev;                // -1 at the start
    int next;                // -1 at the end
    bool freeze;             // a user-defined symbol, never merged
    std::string_view piece;  // empty once merged into its left neighbour
  };
  struct Candidate {
    int left, right;
    float score;
    size_t size;  // bytes of the merged piece; a mismatch means the candidate is stale
  };
  auto worse = [](const Candidate& a, const Candidate& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(worse)> agenda(worse);
  // Merged UNUSED pieces are split back into their parts at the end; keyed by piece text, the
  // last pair seen wins, as in the library.
  absl::flat_hash_map<std::string_view, std::pair<std::string_view, std::string_view>> rev_merge;

  std::vector<Symbol> symbols;
  symbols.reserve(normalized.size());
  for (std::string_view rest = normalized; !rest.empty();) {
    const size_t user = user_defined_ ? user_defined_->LongestPrefix(rest) : 0;
    const size_t length = user > 0 ? user : OneCharLen(rest);
    const int index = static_cast<int>(symbols.size());
    symbols.push_back(
        {index - 1, length == rest.size() ? -1 : index + 1, user > 0, rest.substr(0, length)});
    rest.remove_prefix(length);
  }

  auto add_candidate = [&](int left, int right) {
    if (left == -1 || right == -1 || symbols[left].freeze || symbols[right].freeze) return;
    const std::string_view merged(symbols[left].piece.data(),
                                  symbols[left].piece.size() + symbols[right].piece.size());
    const auto it = pieces_.find(merged);
    if (it == pieces_.end()) return;
    agenda.push({left, right, model_.pieces[it->second].score, merged.size()});
    if (type(it->second) == PieceType::kUnused) {
      rev_merge[merged] = {symbols[left].piece, symbols[right].piece};
    }
  };
  for (int i = 1; i < static_cast<int>(symbols.size()); ++i) add_candidate(i - 1, i);

  while (!agenda.empty()) {
    const Candidate top = agenda.top();
    agenda.pop();
    Symbol& left = symbols[top.left];
    Symbol& right = symbols[top.right];
    if (left.piece.empty() || right.piece.empty() ||
        left.piece.size() + right.piece.size() != top.size) {
      continue;
    }
    left.piece = std::string_view(left.piece.data(), top.size);
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.left;
    right.piece = {};
    add_candidate(left.prev, top.left);
    add_candidate(top.left, left.next);
  }

  Segmentation out;
  std::vector<std::string_view> stack;
  for (int index = 0; index != -1; index = symbols[index].next) {
    stack.push_back(symbols[index].piece);
    while (!stack.empty()) {
      const std::string_view piece = stack.back();
      stack.pop_back();
      const int32_t id = PieceToId(piece);
      const auto split = type(id) == PieceType::kUnused ? rev_merge.find(piece) : rev_merge.end();
      if (split == rev_merge.end()) {
        out.emplace_back(piece, id);
      } else {
        stack.push_back(split->second.second);
        stack.push_back(split->second.first);
      }
    }
  }
  return out;
}

// unigram_model.cc, Model::EncodeOptimized: Viterbi over byte positions, keeping only the best
// path that ends at each position. Scores are summed and compared with the library's exact mix
// of float and double so that ties break identically.
SentencePieceTokenizer::Segmentation SentencePieceTokenizer::EncodeUnigram(
    std::string_view normalized) const {
  struct BestPath {
    int32_t id = -1;
    float score = 0.0f;  // total score of the best path ending here
    int starts_at = -1;  // byte where its last piece starts; -1 = not reached yet
  };
  const int size = static_cast<int>(normalized.size());
  const float unk_score = min_score_ - kUnkPenalty;
  std::vector<BestPath> best(normalized.size() + 1);
  auto relax = [&](int end, int32_t id, double candidate, int starts_at) {
    BestPath& target = best[end];
    if (target.starts_at == -1 || candidate > target.score) {
      target.score = static_cast<float>(candidate);
      target.starts_at = starts_at;
      target.id = id;
    }
  };
  for (int starts_at = 0; starts_at < size;) {
    const float score_till_here = best[starts_at].score;
    const std::string_view rest = normalized.substr(starts_at);
    const size_t char_length = OneCharLen(rest);
    bool has_single_char_piece = false;
    vocab_trie_->ForEachPrefix(rest, [&](size_t length, int32_t id) {
      const PieceType piece_type = type(id);
      if (piece_type == PieceType::kUnused) return;
      // User-defined symbols get a bonus so they are always chosen.
      const double score = piece_type == PieceType::kUserDefined
                               ? static_cast<float>(length) * max_score_ - 0.1
                               : static_cast<double>(model_.pieces[id].score);
      relax(starts_at + static_cast<int>(length), id, score + score_till_here, starts_at);
      if (length == char_length) has_single_char_piece = true;
    });
    if (!has_single_char_piece) {
      relax(starts_at + static_cast<int>(char_length), unk_id_,
            static_cast<double>(unk_score + score_till_here), starts_at);
    }
    starts_at += static_cast<int>(char_length);
  }
  Segmentation out;
  for (int end = size; end > 0;) {
    const BestPath& node = best[end];
    if (node.starts_at < 0) return {};  // unreachable: every character has a node
    out.emplace_back(normalized.substr(node.starts_at, end - node.starts_at), node.id);
    end = node.starts_at;
  }
  std::reverse(out.begin(), out.end());
  return out;
}

// char_model.cc: one piece per character (user-defined symbols whole).
SentencePieceTokenizer::Segmentation SentencePieceTokenizer::EncodeChar(
    std::string_view normalized) const {
  Segmentation out;
  while (!normalized.empty()) {
    const size_t user = user_defined_ ? user_defined_->LongestPrefix(normalized) : 0;
    const std::string_view piece = normalized.substr(0, user > 0 ? user : OneCharLen(normalized));
    out.emplace_back(piece, PieceToId(piece));
    normalized.remove_prefix(piece.size());
  }
  return out;
}

// word_model.cc: one piece per whitespace-delimited word (model_interface.cc, SplitIntoWords).
SentencePieceTokenizer::Segmentation SentencePieceTokenizer::EncodeWord(
    std::string_view normalized) const {
  const bool suffix = model_.trainer_spec.treat_whitespace_as_suffix;
  const bool ws_only = model_.trainer_spec.allow_whitespace_only_pieces;
  std::vector<std::string_view> words;
  auto extend_last = [&](size_t length) {
    words.back() = std::string_view(words.back().data(), words.back().size() + length);
  };
  bool in_ws_sequence = false;
  for (std::string_view rest = normalized; !rest.empty();) {
    const size_t length = OneCharLen(rest);
    const bool is_ws = rest.substr(0, length) == kSpaceSymbol;
    if (suffix) {
      if (words.empty()) words.emplace_back(rest.data(), 0);
      if (is_ws) {
        in_ws_sequence = true;
      } else if (in_ws_sequence) {
        if (ws_only) words.emplace_back(rest.data(), 0);
        in_ws_sequence = false;
      }
      extend_last(length);
      rest.remove_prefix(length);
      if (!rest.empty() && is_ws && !ws_only) words.emplace_back(rest.data(), 0);
    } else {
      if (words.empty() || (is_ws && (!in_ws_sequence || !ws_only))) {
        words.emplace_back(rest.data(), 0);
        in_ws_sequence = true;
      }
      if (in_ws_sequence && !is_ws) in_ws_sequence = false;
      extend_last(length);
      rest.remove_prefix(length);
    }
  }
  Segmentation out;
  out.reserve(words.size());
  for (std::string_view word : words) out.emplace_back(word, PieceToId(word));
  return out;
}

// ---- Decoding -----------------------------------------------------------------------------------

int SentencePieceTokenizer::vocab_size() const { return static_cast<int>(token_bytes_.size()); }

absl::StatusOr<std::string> SentencePieceTokenizer::Decode(const std::vector<int32_t>& ids) const {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab_size()) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", ids[i], " at position ", i,
                                                     " is outside the vocabulary [0, ",
                                                     vocab_size(), ")"));
    }
  }
  // sentencepiece_processor.cc, Decode: while the text is still empty, the first '▁' of a piece
  // is dropped (the dummy prefix); with remove_extra_whitespaces every leading '▁' piece is.
  const auto& spec = model_.normalizer_spec;
  const bool strip_leading = spec.add_dummy_prefix || spec.remove_extra_whitespaces;
  std::string text;
  std::string bytes;  // a run of byte pieces, decoded together
  bool at_start = true;
  bool stripped_prev = false;
  for (int32_t raw_id : ids) {
    const int32_t id = decode_ids_[raw_id];
    const PieceType piece_type = type(id);
    if (piece_type == PieceType::kByte) {
      bytes.push_back(token_bytes_[id][0]);
      continue;
    }
    AppendBytesAsUtf8(bytes, &text);
    bytes.clear();
    if (stripped_prev || !text.empty()) at_start = false;
    stripped_prev = false;
    if (piece_type == PieceType::kControl) continue;
    if (piece_type == PieceType::kUnknown) {
      text += unk_surface_;
      continue;
    }
    std::string_view piece = model_.pieces[id].text;
    if (at_start && strip_leading && piece.substr(0, kSpaceSymbol.size()) == kSpaceSymbol) {
      piece.remove_prefix(kSpaceSymbol.size());
      stripped_prev = !spec.remove_extra_whitespaces;
    }
    text += ReplaceSpaceMarkers(piece);
  }
  AppendBytesAsUtf8(bytes, &text);
  if (denormalizer_ != nullptr) text = denormalizer_->Normalize(text);
  return text;
}

std::string SentencePieceTokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return "";
  return token_bytes_[id];
}

std::vector<std::pair<std::string, int32_t>> SentencePieceTokenizer::SpecialTokens() const {
  std::vector<std::pair<std::string, int32_t>> out;
  for (size_t id = 0; id < model_.pieces.size(); ++id) {
    const PieceType t = model_.pieces[id].type;
    if (t == PieceType::kControl || t == PieceType::kUnknown) {
      out.emplace_back(model_.pieces[id].text, static_cast<int32_t>(id));
    }
  }
  return out;
}

}  // namespace squeeze
