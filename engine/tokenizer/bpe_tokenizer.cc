#include "engine/tokenizer/bpe_tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <queue>
#include <sstream>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "engine/tokenizer/llama3_pretokenizer.h"
#include "engine/tokenizer/nfc.h"
#include "engine/tokenizer/tekken_pretokenizer.h"
#include "engine/tokenizer/unicode.h"
#include "nlohmann/json.hpp"

namespace squeeze {
namespace {

using nlohmann::json;

// This Abseil build has its own string_view class; std::string_view needs an explicit bridge.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Reverse of ByteToUnicode(): the mapped code points are all below 324.
constexpr int kMaxMapped = 324;
const std::array<int, kMaxMapped>& UnicodeToByte() {
  static const std::array<int, kMaxMapped> table = [] {
    std::array<int, kMaxMapped> t;
    t.fill(-1);
    for (int b = 0; b < 256; ++b) t[ByteToUnicode()[b]] = b;
    return t;
  }();
  return table;
}

// The bytes a byte-level token stands for. Like the `tokenizers` ByteLevel decoder, a token with
// a character outside the alphabet is taken as its own UTF-8 text.
std::string ByteLevelToBytes(std::string_view token) {
  std::string out;
  for (size_t pos = 0; pos < token.size();) {
    size_t len;
    const char32_t c = unicode::DecodeUtf8(token, pos, &len);
    const int b = c < kMaxMapped ? UnicodeToByte()[c] : -1;
    if (b < 0) return std::string(token);
    out.push_back(static_cast<char>(b));
    pos += len;
  }
  return out;
}

std::string BytesToByteLevel(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char ch : bytes) unicode::AppendUtf8(ByteToUnicode()[static_cast<unsigned char>(ch)], &out);
  return out;
}

// Errors name the file and the JSON path of the field.
struct Ctx {
  std::string origin;
  absl::Status Error(std::string_view field, std::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": field '", Sv(field), "' ", Sv(what)));
  }
  absl::Status Unsupported(std::string_view field, std::string_view what) const {
    return absl::UnimplementedError(
        absl::StrCat(origin, ": unsupported '", Sv(field), "': ", Sv(what)));
  }
};

// obj[key] when obj is an object holding a non-null key, else nullptr.
const json* Field(const json& obj, std::string_view key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

// A boolean field that must be false (or absent) for this implementation.
absl::Status RequireFalse(const Ctx& ctx, const json& obj, std::string_view key,
                          std::string_view path) {
  const json* v = Field(obj, key);
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_boolean()) return ctx.Error(absl::StrCat(Sv(path), ".", Sv(key)), "must be a boolean");
  if (v->get<bool>()) {
    return ctx.Unsupported(absl::StrCat(Sv(path), ".", Sv(key)), "only false is implemented");
  }
  return absl::OkStatus();
}

using SplitFunction = std::vector<std::string_view> (*)(std::string_view text);

// The Split regexes this implementation reproduces, each by a hand-written matcher.
struct SplitLayout {
  std::string_view name;
  std::string_view pattern;
  SplitFunction split;
};
const std::array<SplitLayout, 3>& SplitLayouts() {
  static const std::array<SplitLayout, 3> layouts = {{
      {"Llama-3", kLlama3SplitPattern, SplitLlama3},
      {"Qwen2", kQwen2SplitPattern, SplitQwen2},
      {"Tekken (Mistral-Nemo)", kTekkenSplitPattern, SplitTekken},
  }};
  return layouts;
}

// Checks the pre_tokenizer layout and returns the split function of its regex.
absl::StatusOr<SplitFunction> CheckPreTokenizer(const Ctx& ctx, const json* pre) {
  std::string names;
  for (const SplitLayout& layout : SplitLayouts()) {
    absl::StrAppend(&names, names.empty() ? "" : ", ", Sv(layout.name));
  }
  const std::string expected =
      absl::StrCat("expected Sequence[Split(<the ", names, " regex>, behavior=Isolated), ",
                   "ByteLevel(add_prefix_space=false, use_regex=false)]");
  if (pre == nullptr) return ctx.Unsupported("pre_tokenizer", absl::StrCat("null; ", expected));
  const json* type = Field(*pre, "type");
  const json* list = Field(*pre, "pretokenizers");
  if (type == nullptr || *type != "Sequence" || list == nullptr || !list->is_array() ||
      list->size() != 2) {
    return ctx.Unsupported("pre_tokenizer",
                           absl::StrCat(pre->dump().substr(0, 200), "; ", expected));
  }
  const json& split = (*list)[0];
  const json& byte_level = (*list)[1];
  if (Field(split, "type") == nullptr || split["type"] != "Split") {
    return ctx.Unsupported("pre_tokenizer.pretokenizers[0]", expected);
  }
  const json* pattern = Field(split, "pattern");
  const json* regex = pattern == nullptr ? nullptr : Field(*pattern, "Regex");
  const SplitLayout* layout = nullptr;
  if (regex != nullptr && regex->is_string()) {
    const std::string& text = regex->get_ref<const std::string&>();
    for (const SplitLayout& l : SplitLayouts()) {
      if (text == l.pattern) layout = &l;
    }
  }
  if (layout == nullptr) {
    return ctx.Unsupported(
        "pre_tokenizer.pretokenizers[0].pattern",
        absl::StrCat("only the ", names, " regexes are implemented, got ",
                     pattern == nullptr ? "null" : pattern->dump().substr(0, 300)));
  }
  const json* behavior = Field(split, "behavior");
  if (behavior == nullptr || *behavior != "Isolated") {
    return ctx.Unsupported("pre_tokenizer.pretokenizers[0].behavior", "only Isolated");
  }
  RETURN_IF_ERROR(RequireFalse(ctx, split, "invert", "pre_tokenizer.pretokenizers[0]"));
  if (Field(byte_level, "type") == nullptr || byte_level["type"] != "ByteLevel") {
    return ctx.Unsupported("pre_tokenizer.pretokenizers[1]", expected);
  }
  RETURN_IF_ERROR(
      RequireFalse(ctx, byte_level, "add_prefix_space", "pre_tokenizer.pretokenizers[1]"));
  const json* use_regex = Field(byte_level, "use_regex");
  if (use_regex == nullptr || !use_regex->is_boolean() || use_regex->get<bool>()) {
    // The default is true (the GPT-2 regex on top of the Split): not a supported layout.
    return ctx.Unsupported("pre_tokenizer.pretokenizers[1].use_regex", "only false");
  }
  return layout->split;
}

// "<s>" or {"content": "<s>", ...} (tokenizer_config.json writes both forms).
std::string TokenName(const json* v) {
  if (v == nullptr) return "";
  if (v->is_string()) return v->get<std::string>();
  const json* content = Field(*v, "content");
  if (content != nullptr && content->is_string()) return content->get<std::string>();
  return "";
}

}  // namespace

const std::array<char32_t, 256>& ByteToUnicode() {
  // GPT-2 bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the 68 others are
  // shifted to U+0100.. in byte order, so every byte is a visible, non-space character.
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      t[b] = printable ? static_cast<char32_t>(b) : next++;
    }
    return t;
  }();
  return table;
}

void BpeTokenizer::AddedTokenSet::Index() {
  // Longest first, so the first match found at a position is the longest one there.
  std::stable_sort(tokens.begin(), tokens.end(), [](const AddedToken& a, const AddedToken& b) {
    return a.match.size() > b.match.size();
  });
  for (auto& list : by_first_byte) list.clear();
  for (size_t i = 0; i < tokens.size(); ++i) {
    by_first_byte[static_cast<unsigned char>(tokens[i].match[0])].push_back(static_cast<int>(i));
  }
}

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::FromJson(
    std::string_view json_text, std::string_view origin, std::string_view tokenizer_config_json) {
  std::unique_ptr<BpeTokenizer> tokenizer(new BpeTokenizer());
  absl::Status status;
  try {
    status = tokenizer->Parse(json_text, origin, tokenizer_config_json);
  } catch (const json::exception& e) {
    // Every access is type-checked first; this is a last line of defence.
    status = absl::InvalidArgumentError(
        absl::StrCat(Sv(origin), ": malformed tokenizer.json: ", e.what()));
  }
  if (!status.ok()) return status;
  return tokenizer;
}

absl::Status BpeTokenizer::Parse(std::string_view json_text, std::string_view origin,
                                 std::string_view tokenizer_config_json) {
  const Ctx ctx{std::string(origin)};
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(Sv(origin), ": not valid JSON: ", e.what()));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(Sv(origin), ": must be a JSON object"));
  }

  // ---- pipeline stages this implementation reproduces ---------------------------------------
  if (const json* normalizer = Field(root, "normalizer"); normalizer != nullptr) {
    const json* type = Field(*normalizer, "type");
    if (type == nullptr || *type != "NFC") {
      return ctx.Unsupported("normalizer", absl::StrCat("only null and NFC are implemented, got ",
                                                        normalizer->dump().substr(0, 200)));
    }
    nfc_ = true;
  }
  ASSIGN_OR_RETURN(split_, CheckPreTokenizer(ctx, Field(root, "pre_tokenizer")));
  const json* decoder = Field(root, "decoder");
  if (decoder == nullptr || Field(*decoder, "type") == nullptr ||
      (*decoder)["type"] != "ByteLevel") {
    return ctx.Unsupported("decoder", absl::StrCat("only ByteLevel is implemented, got ",
                                                   decoder ? decoder->dump() : "null"));
  }

  // ---- model: vocab and merges --------------------------------------------------------------
  const json* model = Field(root, "model");
  if (model == nullptr || !model->is_object()) return ctx.Error("model", "must be an object");
  if (const json* type = Field(*model, "type"); type != nullptr && *type != "BPE") {
    return ctx.Unsupported("model.type",
                           absl::StrCat("only BPE is implemented, got ", type->dump()));
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const json* v = Field(*model, key);
    if (v != nullptr && !(v->is_string() && v->get<std::string>().empty())) {
      return ctx.Unsupported(absl::StrCat("model.", key), "only null is implemented");
    }
  }
  RETURN_IF_ERROR(RequireFalse(ctx, *model, "byte_fallback", "model"));
  if (const json* dropout = Field(*model, "dropout");
      dropout != nullptr && !(dropout->is_number() && dropout->get<double>() == 0.0)) {
    return ctx.Unsupported("model.dropout", "BPE dropout is random; only null is implemented");
  }
  if (const json* v = Field(*model, "ignore_merges"); v != nullptr) {
    if (!v->is_boolean()) return ctx.Error("model.ignore_merges", "must be a boolean");
    ignore_merges_ = v->get<bool>();
  }
  if (const json* v = Field(*model, "fuse_unk"); v != nullptr) {
    if (!v->is_boolean()) return ctx.Error("model.fuse_unk", "must be a boolean");
    fuse_unk_ = v->get<bool>();
  }

  const json* vocab = Field(*model, "vocab");
  if (vocab == nullptr || !vocab->is_object() || vocab->empty()) {
    return ctx.Error("model.vocab", "must be a non-empty object of token -> id");
  }
  int64_t max_id = -1;
  vocab_.reserve(vocab->size());
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
        it.value().get<int64_t>() > (1 << 30)) {
      return ctx.Error(absl::StrCat("model.vocab[\"", it.key(), "\"]"),
                       absl::StrCat("must be a non-negative integer id, got ", it.value().dump()));
    }
    const int32_t id = it.value().get<int32_t>();
    vocab_[it.key()] = id;
    max_id = std::max<int64_t>(max_id, id);
  }

  // ---- added tokens -------------------------------------------------------------------------
  struct Added {
    std::string content;
    int32_t id;
    bool special;
    bool normalized;
  };
  std::vector<Added> added;
  if (const json* list = Field(root, "added_tokens"); list != nullptr) {
    if (!list->is_array()) return ctx.Error("added_tokens", "must be a list");
    for (size_t i = 0; i < list->size(); ++i) {
      const json& t = (*list)[i];
      const std::string path = absl::StrCat("added_tokens[", i, "]");
      const json* id = Field(t, "id");
      const json* content = Field(t, "content");
      if (id == nullptr || !id->is_number_integer() || id->get<int64_t>() < 0 ||
          id->get<int64_t>() > (1 << 30)) {
        return ctx.Error(path + ".id", "must be a non-negative integer");
      }
      if (content == nullptr || !content->is_string() || content->get<std::string>().empty()) {
        return ctx.Error(path + ".content", "must be a non-empty string");
      }
      for (const char* key : {"single_word", "lstrip", "rstrip"}) {
        RETURN_IF_ERROR(RequireFalse(ctx, t, key, path));
      }
      Added a{content->get<std::string>(), id->get<int32_t>(), false, false};
      if (const json* v = Field(t, "special"); v != nullptr) {
        if (!v->is_boolean()) return ctx.Error(path + ".special", "must be a boolean");
        a.special = v->get<bool>();
      }
      a.normalized = !a.special;  // the `tokenizers` default
      if (const json* v = Field(t, "normalized"); v != nullptr) {
        if (!v->is_boolean()) return ctx.Error(path + ".normalized", "must be a boolean");
        a.normalized = v->get<bool>();
      }
      max_id = std::max<int64_t>(max_id, a.id);
      added.push_back(std::move(a));
    }
  }

  // The token table is indexed by id: ids far beyond the number of tokens given (a few reserved
  // gaps are fine) would make a file of a few bytes cost gigabytes.
  const int64_t given = static_cast<int64_t>(vocab_.size() + added.size());
  if (max_id >= 2 * given + 1024) {
    return ctx.Error("model.vocab", absl::StrCat("ids must be nearly dense: largest id ", max_id,
                                                 " for ", given, " tokens"));
  }
  tokens_.assign(static_cast<size_t>(max_id) + 1, TokenInfo{});
  for (const auto& [token, id] : vocab_) {
    tokens_[id].bytes = ByteLevelToBytes(token);
    tokens_[id].kind = TokenInfo::kModel;
  }
  for (const Added& a : added) {
    // Like `tokenizers`, normalized tokens are looked for, and decode, in their normalized form
    // (an NFD "cafe\u0301" token decodes as NFC "caf\u00e9").
    std::string match = a.normalized && nfc_ ? ToNfc(a.content) : a.content;
    tokens_[a.id].bytes = a.special ? "" : match;
    tokens_[a.id].kind = a.special ? TokenInfo::kSpecial : TokenInfo::kAdded;
    (a.normalized ? normalized_added_ : raw_added_).tokens.push_back({a.content, match, a.id});
    added_by_content_[a.content] = a.id;
  }
  raw_added_.Index();
  normalized_added_.Index();

  const json* merges = Field(*model, "merges");
  if (merges == nullptr || !merges->is_array()) {
    return ctx.Error("model.merges", "must be a list of \"a b\" strings or [a, b] pairs");
  }
  merges_.reserve(merges->size());
  for (size_t i = 0; i < merges->size(); ++i) {
    const json& m = (*merges)[i];
    const std::string path = absl::StrCat("model.merges[", i, "]");
    std::string left, right;
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        return ctx.Error(
            path, absl::StrCat("must be two tokens separated by one space, got \"", s, "\""));
      }
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      return ctx.Error(path, absl::StrCat("must be \"a b\" or [\"a\", \"b\"], got ", m.dump()));
    }
    const auto l = vocab_.find(left), r = vocab_.find(right), merged = vocab_.find(left + right);
    if (l == vocab_.end() || r == vocab_.end() || merged == vocab_.end()) {
      const std::string& missing =
          l == vocab_.end() ? left : (r == vocab_.end() ? right : left + right);
      return ctx.Error(path,
                       absl::StrCat("uses token \"", missing, "\" which is not in model.vocab"));
    }
    // Like `tokenizers` (a map built in file order), a repeated pair keeps its last rank.
    merges_[PairKey(l->second, r->second)] = {static_cast<int32_t>(i), merged->second};
  }

  for (int b = 0; b < 256; ++b) {
    std::string symbol;
    unicode::AppendUtf8(ByteToUnicode()[b], &symbol);
    const auto it = vocab_.find(symbol);
    byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
  }
  if (const json* unk = Field(*model, "unk_token"); unk != nullptr) {
    if (!unk->is_string()) return ctx.Error("model.unk_token", "must be a string or null");
    const auto it = vocab_.find(unk->get<std::string>());
    if (it == vocab_.end()) {
      return ctx.Error("model.unk_token", absl::StrCat("names \"", unk->get<std::string>(),
                                                       "\" which is not in model.vocab"));
    }
    unk_id_ = it->second;
  }

  // ---- BOS / EOS ----------------------------------------------------------------------------
  std::string bos, eos;
  if (!tokenizer_config_json.empty()) {
    json config = json::parse(tokenizer_config_json, nullptr, /*allow_exceptions=*/false);
    if (config.is_object()) {
      bos = TokenName(Field(config, "bos_token"));
      eos = TokenName(Field(config, "eos_token"));
    }
  }
  if (bos.empty()) {
    // TemplateProcessing {"single": [{"SpecialToken": {"id": "<|begin_of_text|>"}}, ...]}.
    const json* post = Field(root, "post_processor");
    const json* single = post == nullptr ? nullptr : Field(*post, "single");
    if (single != nullptr && single->is_array() && !single->empty()) {
      const json* special = Field((*single)[0], "SpecialToken");
      if (special != nullptr) bos = TokenName(Field(*special, "id"));
    }
  }
  if (eos.empty()) {
    for (const char* name : {"<|end_of_text|>", "</s>", "<|endoftext|>"}) {
      if (TokenToId(name) >= 0) {
        eos = name;
        break;
      }
    }
  }
  bos_id_ = bos.empty() ? -1 : TokenToId(bos);
  eos_id_ = eos.empty() ? -1 : TokenToId(eos);
  return absl::OkStatus();
}

std::vector<std::pair<std::string, int32_t>> BpeTokenizer::SpecialTokens() const {
  std::vector<std::pair<std::string, int32_t>> out;
  for (const AddedTokenSet* set : {&raw_added_, &normalized_added_}) {
    for (const AddedToken& t : set->tokens) out.emplace_back(t.content, t.id);
  }
  return out;
}

int32_t BpeTokenizer::TokenToId(std::string_view token) const {
  if (auto it = added_by_content_.find(std::string(token)); it != added_by_content_.end()) {
    return it->second;
  }
  if (auto it = vocab_.find(std::string(token)); it != vocab_.end()) return it->second;
  return -1;
}

void BpeTokenizer::SplitAddedTokens(const AddedTokenSet& set, std::vector<Segment>* segments) {
  if (set.tokens.empty()) return;
  std::vector<Segment> out;
  for (const Segment& seg : *segments) {
    if (seg.id >= 0) {
      out.push_back(seg);
      continue;
    }
    const std::string_view text = seg.text;
    size_t start = 0;  // beginning of the pending plain text
    for (size_t pos = 0; pos < text.size();) {
      const AddedToken* match = nullptr;
      for (int i : set.by_first_byte[static_cast<unsigned char>(text[pos])]) {
        const AddedToken& t = set.tokens[i];
        if (text.compare(pos, t.match.size(), t.match) == 0) {
          match = &t;
          break;
        }
      }
      if (match == nullptr) {
        ++pos;
        continue;
      }
      if (pos > start) out.push_back({text.substr(start, pos - start), -1});
      out.push_back({text.substr(pos, match->match.size()), match->id});
      pos += match->match.size();
      start = pos;
    }
    if (start < text.size()) out.push_back({text.substr(start), -1});
  }
  *segments = std::move(out);
}

void BpeTokenizer::EncodePiece(std::string_view bytes, std::vector<int32_t>* ids) const {
  if (bytes.empty()) return;
  if (ignore_merges_) {
    if (auto it = vocab_.find(BytesToByteLevel(bytes)); it != vocab_.end()) {
      ids->push_back(it->second);
      return;
    }
  }

  // Symbols in a doubly linked list; merged-away symbols are marked dead.
  struct Symbol {
    int32_t id;
    int prev, next;
    bool alive;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(bytes.size());
  const auto add = [&](int32_t id) {
    const int index = static_cast<int>(symbols.size());
    symbols.push_back({id, index - 1, -1, true});
    if (index > 0) symbols[index - 1].next = index;
  };
  bool pending_unk = false;  // `tokenizers` fuses runs of unknown bytes when fuse_unk
  for (char ch : bytes) {
    const int32_t id = byte_ids_[static_cast<unsigned char>(ch)];
    if (id >= 0) {
      pending_unk = false;
      add(id);
    } else if (unk_id_ >= 0) {
      if (!(pending_unk && fuse_unk_)) add(unk_id_);
      pending_unk = true;
    }  // without an unk token an unknown byte is dropped, as `tokenizers` does
  }

  struct Candidate {
    int32_t rank;
    int pos;  // index of the left symbol
    int32_t new_id;
  };
  // Lowest rank first, then leftmost.
  const auto later = [](const Candidate& a, const Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(later)> queue(later);
  const auto push_pair = [&](int left) {
    const int right = symbols[left].next;
    if (right < 0) return;
    const auto it = merges_.find(PairKey(symbols[left].id, symbols[right].id));
    if (it != merges_.end()) queue.push({it->second.rank, left, it->second.new_id});
  };
  for (int i = 0; i + 1 < static_cast<int>(symbols.size()); ++i) push_pair(i);

  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    // Stale when either side changed since the candidate was queued.
    const auto it = merges_.find(PairKey(left.id, right.id));
    if (it == merges_.end() || it->second.new_id != top.new_id) continue;
    left.id = top.new_id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0) push_pair(left.prev);
    push_pair(top.pos);
  }
  for (const Symbol& s : symbols) {
    if (s.alive) ids->push_back(s.id);
  }
}

absl::StatusOr<std::vector<int32_t>> BpeTokenizer::Encode(std::string_view text) const {
  std::vector<Segment> segments = {{text, -1}};
  SplitAddedTokens(raw_added_, &segments);
  // The normalizer applies to each text segment between the special tokens, as in `tokenizers`.
  std::vector<std::string> normalized;  // owns the normalized segments' text
  if (nfc_) {
    normalized.reserve(segments.size());  // no reallocation: the views below stay valid
    for (Segment& seg : segments) {
      if (seg.id >= 0) continue;
      normalized.push_back(ToNfc(seg.text));
      seg.text = normalized.back();
    }
  }
  SplitAddedTokens(normalized_added_, &segments);
  std::vector<int32_t> ids;
  for (const Segment& seg : segments) {
    if (seg.id >= 0) {
      ids.push_back(seg.id);
      continue;
    }
    for (std::string_view piece : split_(seg.text)) EncodePiece(piece, &ids);
  }
  return ids;
}

absl::StatusOr<std::string> BpeTokenizer::Decode(const std::vector<int32_t>& ids) const {
  std::string text, pending;  // pending: bytes of model tokens since the last added token
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    if (id < 0 || id >= vocab_size()) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", id, " at position ", i,
                                                     " is outside the vocabulary [0, ",
                                                     vocab_size(), ")"));
    }
    const TokenInfo& t = tokens_[id];
    switch (t.kind) {
      case TokenInfo::kNone:
      case TokenInfo::kSpecial:
        break;
      case TokenInfo::kModel:
        pending += t.bytes;
        break;
      case TokenInfo::kAdded:
        // `tokenizers` decodes the model tokens before an added token as one chunk.
        unicode::AppendUtf8Lossy(pending, &text);
        pending.clear();
        text += t.bytes;
        break;
    }
  }
  unicode::AppendUtf8Lossy(pending, &text);
  return text;
}

std::string BpeTokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return "";
  return tokens_[id].bytes;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadBpeTokenizer(
    const std::string& tokenizer_json_path) {
  namespace fs = std::filesystem;
  const auto read = [](const fs::path& path, std::string* out) -> absl::Status {
    std::ifstream in(path, std::ios::binary);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot open '", path.string(), "'"));
    std::ostringstream text;
    text << in.rdbuf();
    if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read '", path.string(), "'"));
    *out = text.str();
    return absl::OkStatus();
  };
  std::string json_text, config_text;
  RETURN_IF_ERROR(read(tokenizer_json_path, &json_text));
  const fs::path config_path =
      fs::path(tokenizer_json_path).parent_path() / "tokenizer_config.json";
  std::error_code ec;
  if (fs::is_regular_file(config_path, ec)) RETURN_IF_ERROR(read(config_path, &config_text));
  ASSIGN_OR_RETURN(std::unique_ptr<BpeTokenizer> tokenizer,
                   BpeTokenizer::FromJson(json_text, tokenizer_json_path, config_text));
  return std::unique_ptr<Tokenizer>(std::move(tokenizer));
}

}  // namespace squeeze
