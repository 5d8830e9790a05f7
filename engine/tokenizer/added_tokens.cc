#include "engine/tokenizer/added_tokens.h"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "engine/tokenizer/unicode.h"
#include "nlohmann/json.hpp"

namespace squeeze {
namespace {

using nlohmann::json;

absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Length of the whitespace run ending at `end` / starting at `begin`.
size_t WhitespaceBefore(std::string_view s, size_t end) {
  size_t i = end;
  while (i > 0) {
    size_t b = i - 1;  // step back to the start of a UTF-8 character
    while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
    size_t len;
    if (!unicode::IsWhiteSpace(unicode::DecodeUtf8(s, b, &len))) break;
    i = b;
  }
  return end - i;
}

size_t WhitespaceAfter(std::string_view s, size_t begin) {
  size_t i = begin, len;
  while (i < s.size() && unicode::IsWhiteSpace(unicode::DecodeUtf8(s, i, &len))) i += len;
  return i - begin;
}

}  // namespace

absl::StatusOr<std::vector<int32_t>> EncodeAroundSpecialTokens(
    std::string_view text, std::span<const SpecialToken> tokens,
    const std::function<absl::StatusOr<std::vector<int32_t>>(std::string_view)>& encode) {
  // Candidates by first byte, longest first.
  std::array<std::vector<const SpecialToken*>, 256> by_first{};
  for (const SpecialToken& t : tokens) {
    if (!t.content.empty()) by_first[static_cast<unsigned char>(t.content[0])].push_back(&t);
  }
  for (auto& list : by_first) {
    std::stable_sort(list.begin(), list.end(), [](const SpecialToken* a, const SpecialToken* b) {
      return a->content.size() > b->content.size();
    });
  }
  std::vector<int32_t> ids;
  size_t segment = 0;  // start of the text not yet encoded
  for (size_t pos = 0; pos < text.size();) {
    const SpecialToken* match = nullptr;
    for (const SpecialToken* t : by_first[static_cast<unsigned char>(text[pos])]) {
      if (text.compare(pos, t->content.size(), t->content) == 0) {
        match = t;
        break;
      }
    }
    if (match == nullptr) {
      ++pos;
      continue;
    }
    size_t seg_end = pos;
    if (match->lstrip) seg_end -= std::min(pos - segment, WhitespaceBefore(text, pos));
    if (seg_end > segment) {
      ASSIGN_OR_RETURN(std::vector<int32_t> part, encode(text.substr(segment, seg_end - segment)));
      ids.insert(ids.end(), part.begin(), part.end());
    }
    ids.push_back(match->id);
    pos += match->content.size();
    if (match->rstrip) pos += WhitespaceAfter(text, pos);
    segment = pos;
  }
  if (segment < text.size()) {
    ASSIGN_OR_RETURN(std::vector<int32_t> part, encode(text.substr(segment)));
    ids.insert(ids.end(), part.begin(), part.end());
  }
  return ids;
}

AddedTokensTokenizer::AddedTokensTokenizer(std::unique_ptr<Tokenizer> base,
                                           std::vector<SpecialToken> tokens)
    : base_(std::move(base)), tokens_(std::move(tokens)) {
  vocab_size_ = base_->vocab_size();
  for (const SpecialToken& t : tokens_) vocab_size_ = std::max(vocab_size_, t.id + 1);
  bos_id_ = base_->bos_id();
  eos_id_ = base_->eos_id();
}

absl::StatusOr<std::unique_ptr<Tokenizer>> AddedTokensTokenizer::Wrap(
    std::unique_ptr<Tokenizer> base, std::string_view tokenizer_config_json,
    std::string_view origin) {
  const json config = json::parse(tokenizer_config_json, nullptr, /*allow_exceptions=*/false);
  if (!config.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(Sv(origin), " is not a JSON object"));
  }
  auto decoder = config.find("added_tokens_decoder");
  if (decoder == config.end() || decoder->is_null()) return base;
  if (!decoder->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(Sv(origin), ": added_tokens_decoder must be an object"));
  }
  std::vector<SpecialToken> tokens;
  absl::flat_hash_set<std::string> contents;
  for (const auto& [key, entry] : decoder->items()) {
    char* end = nullptr;
    const long id = std::strtol(key.c_str(), &end, 10);
    const std::string where = absl::StrCat(Sv(origin), ": added_tokens_decoder[\"", key, "\"]");
    if (end == key.c_str() || *end != '\0' || id < 0 || id > (1 << 30)) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": the key must be a token id"));
    }
    if (!entry.is_object() || !entry.contains("content") || !entry["content"].is_string() ||
        entry["content"].get<std::string>().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(where, " needs a non-empty \"content\""));
    }
    SpecialToken t{entry["content"].get<std::string>(), static_cast<int32_t>(id)};
    auto flag = [&entry = entry](const char* name, bool dflt) {  // clang 14: no binding capture
      auto it = entry.find(name);
      return it != entry.end() && it->is_boolean() ? it->get<bool>() : dflt;
    };
    t.special = flag("special", false);
    t.lstrip = flag("lstrip", false);
    t.rstrip = flag("rstrip", false);
    contents.insert(t.content);
    tokens.push_back(std::move(t));
  }
  if (tokens.empty()) return base;
  // The base tokenizer's own specials (SentencePiece control pieces) stay matchable.
  for (auto& [content, id] : base->SpecialTokens()) {
    if (contents.insert(content).second) tokens.push_back({content, id});
  }
  std::unique_ptr<AddedTokensTokenizer> out(
      new AddedTokensTokenizer(std::move(base), std::move(tokens)));
  auto token_id = [&](const char* key) -> int {
    auto it = config.find(key);
    if (it == config.end()) return -2;
    std::string name;
    if (it->is_string()) name = it->get<std::string>();
    if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
      name = (*it)["content"].get<std::string>();
    }
    for (const SpecialToken& t : out->tokens_) {
      if (!name.empty() && t.content == name) return t.id;
    }
    return -2;
  };
  if (const int bos = token_id("bos_token"); bos != -2) out->bos_id_ = bos;
  if (const int eos = token_id("eos_token"); eos != -2) out->eos_id_ = eos;
  return std::unique_ptr<Tokenizer>(std::move(out));
}

const SpecialToken* AddedTokensTokenizer::Find(int32_t id) const {
  for (const SpecialToken& t : tokens_) {
    if (t.id == id) return &t;
  }
  return nullptr;
}

absl::StatusOr<std::vector<int32_t>> AddedTokensTokenizer::Encode(std::string_view text) const {
  return EncodeAroundSpecialTokens(text, tokens_,
                                   [this](std::string_view part) { return base_->Encode(part); });
}

absl::StatusOr<std::string> AddedTokensTokenizer::Decode(const std::vector<int32_t>& ids) const {
  std::string out;
  std::vector<int32_t> run;  // base ids since the last added token
  auto flush = [&]() -> absl::Status {
    if (run.empty()) return absl::OkStatus();
    ASSIGN_OR_RETURN(std::string text, base_->Decode(run));
    out += text;
    run.clear();
    return absl::OkStatus();
  };
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab_size_) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", ids[i], " at position ", i,
                                                     " is outside the vocabulary [0, ", vocab_size_,
                                                     ")"));
    }
    const SpecialToken* t = Find(ids[i]);
    if (t == nullptr || (ids[i] < base_->vocab_size() && t->special)) {
      run.push_back(ids[i]);  // base ids, including its own specials (rendered as "")
      continue;
    }
    RETURN_IF_ERROR(flush());
    if (!t->special) out += t->content;
  }
  RETURN_IF_ERROR(flush());
  return out;
}

std::string AddedTokensTokenizer::TokenBytes(int32_t id) const {
  if (const SpecialToken* t = Find(id);
      t != nullptr && (id >= base_->vocab_size() || !t->special)) {
    return t->special ? "" : t->content;
  }
  return base_->TokenBytes(id);
}

std::vector<std::pair<std::string, int32_t>> AddedTokensTokenizer::SpecialTokens() const {
  std::vector<std::pair<std::string, int32_t>> out;
  for (const SpecialToken& t : tokens_) out.emplace_back(t.content, t.id);
  return out;
}

}  // namespace squeeze
