// Tokenizer over a SentencePiece model (`tokenizer.model` of Llama-family checkpoints), implemented
// natively: the model file is parsed by sentencepiece_model.h and encoding / decoding reproduce
// libsentencepiece 0.1.97 exactly (normalizer, BPE and unigram encoders, byte fallback, decoder),
// without linking it (see sentencepiece_model.h for why). tests/cpu/sentencepiece_conformance_test
// checks id-for-id and byte-for-byte agreement with the library.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "engine/tokenizer/sentencepiece_model.h"
#include "engine/tokenizer/tokenizer.h"

namespace squeeze {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  // Loads a serialized SentencePiece ModelProto from `model_path`.
  static absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> Load(
      const std::string& model_path);
  // Same, from the bytes of a model file; `origin` names it in error messages.
  static absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> FromSerializedModel(
      std::string_view serialized, std::string_view origin);

  ~SentencePieceTokenizer() override;

  int vocab_size() const override;
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const override;
  // Plain SentencePiece decoding: the leading space of the first piece is dropped
  // (add_dummy_prefix), byte pieces are merged into UTF-8 (invalid bytes become U+FFFD), control
  // pieces render as "" and unknown pieces as the model's unk surface (" ⁇ " by default).
  absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids) const override;
  // '▁' -> ' ', <0xNN> -> byte NN, control pieces (<s>, </s>, ...) -> "", the unknown piece ->
  // its surface form (" ⁇ " by default), exactly as Decode renders it in the middle of a text.
  // Out-of-range ids -> "".
  std::string TokenBytes(int32_t id) const override;
  int bos_id() const override { return bos_id_; }
  int eos_id() const override { return eos_id_; }
  // Control pieces (<s>, </s>, Mistral's [INST], ...) and the unknown piece: the strings
  // transformers' tokenizers recognise in text.
  std::vector<std::pair<std::string, int32_t>> SpecialTokens() const override;

  // The model file's normalized form of `text` (what the encoders segment), for tests and tools.
  std::string Normalize(std::string_view text) const;

 private:
  class ByteTrie;    // prefix lookups over a fixed key set
  class Normalizer;  // NormalizerSpec applied to text
  // Pieces of the normalized text (views into it) with their ids, before byte fallback.
  using Segmentation = std::vector<std::pair<std::string_view, int32_t>>;

  explicit SentencePieceTokenizer(SentencePieceModel model);
  // Validates the vocabulary like libsentencepiece does and builds the lookup structures.
  absl::Status Init();

  using PieceType = SentencePieceModel::PieceType;
  PieceType type(int32_t id) const { return model_.pieces[id].type; }
  // Reserved pieces (control, unknown, byte) first, then the others; unk_id_ when absent.
  int32_t PieceToId(std::string_view piece) const;

  Segmentation EncodeBpe(std::string_view normalized) const;
  Segmentation EncodeUnigram(std::string_view normalized) const;
  Segmentation EncodeChar(std::string_view normalized) const;
  Segmentation EncodeWord(std::string_view normalized) const;

  SentencePieceModel model_;  // pieces_ / reserved_ / tries hold views into its piece strings
  // NORMAL, USER_DEFINED and UNUSED pieces; CONTROL, UNKNOWN and BYTE ones.
  absl::flat_hash_map<std::string_view, int32_t> pieces_;
  absl::flat_hash_map<std::string_view, int32_t> reserved_;
  std::unique_ptr<ByteTrie> user_defined_;  // user-defined symbols, matched whole
  std::unique_ptr<ByteTrie> vocab_trie_;    // unigram only: every key of pieces_
  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<Normalizer> denormalizer_;  // only when denormalizer_spec has rules
  std::array<int32_t, 256> byte_ids_{};       // id of <0xNN>, when byte_fallback
  std::vector<int32_t> decode_ids_;           // [vocab_size] PieceToId(piece(id)), see Decode
  std::vector<std::string> token_bytes_;      // [vocab_size] TokenBytes precomputed at load
  std::string unk_surface_;                   // what Decode renders for the unknown piece
  float min_score_ = 0.0f;  // over NORMAL pieces (unigram unknown-character penalty base)
  float max_score_ = 0.0f;  // over NORMAL pieces (unigram user-defined bonus)
  int32_t unk_id_ = -1;
  int bos_id_ = -1;
  int eos_id_ = -1;
};

}  // namespace squeeze
