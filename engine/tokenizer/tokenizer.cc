#include "engine/tokenizer/tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "engine/tokenizer/added_tokens.h"
#include "engine/tokenizer/bpe_tokenizer.h"
#include "engine/tokenizer/sentencepiece_tokenizer.h"

namespace squeeze {

absl::StatusOr<std::vector<int32_t>> Tokenizer::EncodeWithSpecialTokens(
    std::string_view text) const {
  std::vector<SpecialToken> specials;
  for (auto& [content, id] : SpecialTokens()) specials.push_back({content, id});
  return EncodeAroundSpecialTokens(text, specials,
                                   [this](std::string_view part) { return Encode(part); });
}

absl::Status CheckTokenizerFitsModel(const Tokenizer& tokenizer, int model_vocab_size,
                                     const std::string& tokenizer_dir) {
  auto refuse = [&](const std::string& why) {
    return absl::InvalidArgumentError(
        absl::StrCat("the tokenizer in '", tokenizer_dir, "' does not fit the model: ", why,
                     "; pass --tokenizer=<the directory of this model's own tokenizer>"));
  };
  if (tokenizer.vocab_size() > model_vocab_size) {
    return refuse(absl::StrCat("it has ", tokenizer.vocab_size(),
                               " tokens, more than the model's vocab_size ", model_vocab_size));
  }
  for (const auto& [name, id] :
       {std::pair{"BOS", tokenizer.bos_id()}, {"EOS", tokenizer.eos_id()}}) {
    if (id >= model_vocab_size) {
      return refuse(absl::StrCat("its ", name, " token id ", id,
                                 " is outside the model's vocabulary [0, ", model_vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& model_dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(model_dir, ec)) {
    return absl::NotFoundError(
        absl::StrCat("model directory '", model_dir, "' does not exist or is not a directory"));
  }
  const fs::path dir(model_dir);
  if (fs::is_regular_file(dir / "tokenizer.model", ec)) {
    auto tokenizer = SentencePieceTokenizer::Load((dir / "tokenizer.model").string());
    if (!tokenizer.ok()) return tokenizer.status();
    std::unique_ptr<Tokenizer> sp = std::move(*tokenizer);
    const fs::path config = dir / "tokenizer_config.json";
    if (!fs::is_regular_file(config, ec)) return sp;
    std::ifstream in(config, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    if (!in) return absl::DataLossError(absl::StrCat("cannot read '", config.string(), "'"));
    return AddedTokensTokenizer::Wrap(std::move(sp), text.str(), config.string());
  }
  // tokenizer.model wins when both exist (Mistral repositories ship both).
  if (fs::is_regular_file(dir / "tokenizer.json", ec)) {
    return LoadBpeTokenizer((dir / "tokenizer.json").string());
  }
  return absl::NotFoundError(absl::StrCat(
      "no tokenizer in model directory '", model_dir,
      "': expected tokenizer.model (SentencePiece) or tokenizer.json (byte-level BPE)"));
}

}  // namespace squeeze
