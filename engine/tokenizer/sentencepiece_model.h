// The contents of a SentencePiece `tokenizer.model` (a serialized sentencepiece.ModelProto), read
// straight from the protobuf wire format.
//
// The engine cannot use libsentencepiece: Debian's build bundles protobuf-lite 3.14 and exports
// its symbols, which clash with the libprotobuf that the gRPC server loads. Only the fields that
// change encoding or decoding are kept; everything else (and every unknown field, of any wire
// type) is skipped. Absent fields take their proto2 defaults from sentencepiece_model.proto.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace squeeze {

struct SentencePieceModel {
  // ModelProto.SentencePiece.Type.
  enum class PieceType : uint8_t {
    kNormal = 1,
    kUnknown = 2,
    kControl = 3,      // <s>, </s>: never produced by encoding, rendered as ""
    kUserDefined = 4,  // always matched as a whole symbol
    kUnused = 5,
    kByte = 6,  // <0xNN>, for byte fallback
  };
  // TrainerSpec.ModelType.
  enum class ModelType : uint8_t { kUnigram = 1, kBpe = 2, kWord = 3, kChar = 4 };

  struct Piece {
    std::string text;  // UTF-8; U+2581 '▁' stands for a space
    float score = 0.0f;
    PieceType type = PieceType::kNormal;
  };

  // TrainerSpec (ModelProto field 2); proto field numbers in comments.
  struct TrainerSpec {
    ModelType model_type = ModelType::kUnigram;  // 3
    bool treat_whitespace_as_suffix = false;     // 24
    bool split_digits = false;                   // 25 (shapes training only)
    bool allow_whitespace_only_pieces = false;   // 26
    bool byte_fallback = false;                  // 35
    int32_t unk_id = 0;                          // 40
    int32_t bos_id = 1;                          // 41
    int32_t eos_id = 2;                          // 42
    int32_t pad_id = -1;                         // 43
    std::string unk_surface = " \xE2\x81\x87 ";  // 44, " ⁇ "
    bool has_unk_surface = false;                // Decode uses unk_surface only when present
    std::string unk_piece = "<unk>";             // 45
    std::string bos_piece = "<s>";               // 46
    std::string eos_piece = "</s>";              // 47
    std::string pad_piece = "<pad>";             // 48
  };

  // NormalizerSpec (ModelProto fields 3 and 5).
  struct NormalizerSpec {
    std::string name;                      // 1, e.g. "nmt_nfkc" or "identity"
    std::string precompiled_charsmap;      // 2, see PrecompiledCharsMap; empty = identity
    bool add_dummy_prefix = true;          // 3
    bool remove_extra_whitespaces = true;  // 4
    bool escape_whitespaces = true;        // 5, ' ' -> U+2581
  };

  std::vector<Piece> pieces;  // field 1; the index is the token id
  TrainerSpec trainer_spec;
  NormalizerSpec normalizer_spec;
  bool has_denormalizer_spec = false;
  NormalizerSpec denormalizer_spec;  // field 5, applied to decoded text when it has a charsmap
};

// Parses a serialized ModelProto. Fails (never crashes) on malformed wire data: truncated
// varints or lengths, lengths past the end, bad wire types, unbalanced groups, field number 0.
// Does not check the vocabulary's consistency; the tokenizer does that.
absl::StatusOr<SentencePieceModel> ParseSentencePieceModel(std::string_view serialized);

// A compiled normalization rule set (NormalizerSpec.precompiled_charsmap):
//   [uint32 little-endian trie size in bytes][Darts-clone double-array units, uint32 each]
//   [NUL-separated replacement strings].
// Each trie key is a source string; its value is the offset of the replacement string.
class PrecompiledCharsMap {
 public:
  PrecompiledCharsMap() = default;  // no rules
  static absl::StatusOr<PrecompiledCharsMap> Parse(std::string_view blob);

  bool empty() const { return units_.empty(); }
  // Longest rule whose source is a prefix of `text`. Returns the source length in bytes and sets
  // `*replacement`, or returns 0 when no rule matches. Corrupt units end the search early.
  size_t LongestMatch(std::string_view text, std::string_view* replacement) const;

 private:
  std::vector<uint32_t> units_;  // double-array units
  std::string replacements_;     // NUL-separated replacement strings
};

}  // namespace squeeze
