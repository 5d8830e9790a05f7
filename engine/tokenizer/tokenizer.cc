#include "engine/tokenizer/tokenizer.h"

#include <filesystem>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/tokenizer/bpe_tokenizer.h"
#include "engine/tokenizer/sentencepiece_tokenizer.h"

namespace squeeze {

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
    return std::unique_ptr<Tokenizer>(std::move(*tokenizer));
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
