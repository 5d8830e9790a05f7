#include "engine/tokenizer/sentencepiece_model.h"

#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"

namespace squeeze {
namespace {

// Protobuf wire types.
enum WireType : uint32_t {
  kVarint = 0,
  kFixed64 = 1,
  kLengthDelimited = 2,
  kStartGroup = 3,
  kEndGroup = 4,
  kFixed32 = 5,
};

// libprotobuf's default recursion limit; only unknown groups can nest at all here.
constexpr int kMaxGroupDepth = 100;

// One decoded field. Which member is meaningful depends on wire_type.
struct Field {
  uint32_t number = 0;
  uint32_t wire_type = 0;
  uint64_t varint = 0;     // kVarint
  uint32_t fixed32 = 0;    // kFixed32
  std::string_view bytes;  // kLengthDelimited
};

// Sequential reader over one message's bytes. `base` is the message's offset in the whole file,
// so errors name absolute byte positions.
class WireReader {
 public:
  WireReader(std::string_view data, size_t base, std::string_view message)
      : data_(data), base_(base), message_(message) {}

  bool done() const { return pos_ >= data_.size(); }

  // Reads the next field. Groups are skipped whole and reported with wire_type kStartGroup and no
  // value, so callers treat them as unknown fields.
  absl::Status Next(Field* field) {
    uint64_t tag = 0;
    const size_t tag_pos = pos_;
    if (!ReadVarint(&tag)) return Error(tag_pos, "truncated field tag");
    if (tag > 0xFFFFFFFFu) return Error(tag_pos, "field tag does not fit in 32 bits");
    field->number = static_cast<uint32_t>(tag >> 3);
    field->wire_type = static_cast<uint32_t>(tag & 7);
    if (field->number == 0) return Error(tag_pos, "field number 0");
    return ReadValue(field, 0);
  }

 private:
  absl::Status ReadValue(Field* field, int depth) {
    const size_t value_pos = pos_;
    switch (field->wire_type) {
      case kVarint:
        if (!ReadVarint(&field->varint)) return Error(value_pos, "truncated varint");
        return absl::OkStatus();
      case kFixed64:
        if (data_.size() - pos_ < 8) return Error(value_pos, "truncated fixed64");
        pos_ += 8;
        return absl::OkStatus();
      case kFixed32:
        if (data_.size() - pos_ < 4) return Error(value_pos, "truncated fixed32");
        field->fixed32 = static_cast<uint32_t>(static_cast<uint8_t>(data_[pos_])) |
                         static_cast<uint32_t>(static_cast<uint8_t>(data_[pos_ + 1])) << 8 |
                         static_cast<uint32_t>(static_cast<uint8_t>(data_[pos_ + 2])) << 16 |
                         static_cast<uint32_t>(static_cast<uint8_t>(data_[pos_ + 3])) << 24;
        pos_ += 4;
        return absl::OkStatus();
      case kLengthDelimited: {
        uint64_t length = 0;
        if (!ReadVarint(&length)) return Error(value_pos, "truncated length");
        if (length > data_.size() - pos_) {
          return Error(value_pos, absl::StrCat("length ", length, " runs past the end (",
                                               data_.size() - pos_, " bytes left)"));
        }
        field->bytes = data_.substr(pos_, static_cast<size_t>(length));
        pos_ += static_cast<size_t>(length);
        return absl::OkStatus();
      }
      case kStartGroup:
        return SkipGroup(field->number, depth + 1);
      case kEndGroup:
        return Error(value_pos, "end-group tag without a matching start-group");
      default:
        return Error(value_pos, absl::StrCat("invalid wire type ", field->wire_type));
    }
  }

  // Skips fields up to the end-group tag of `number`.
  absl::Status SkipGroup(uint32_t number, int depth) {
    if (depth > kMaxGroupDepth) return Error(pos_, "groups nested too deeply");
    while (true) {
      if (done()) return Error(pos_, "unterminated group");
      uint64_t tag = 0;
      const size_t tag_pos = pos_;
      if (!ReadVarint(&tag)) return Error(tag_pos, "truncated field tag");
      if (tag > 0xFFFFFFFFu) return Error(tag_pos, "field tag does not fit in 32 bits");
      Field inner;
      inner.number = static_cast<uint32_t>(tag >> 3);
      inner.wire_type = static_cast<uint32_t>(tag & 7);
      if (inner.number == 0) return Error(tag_pos, "field number 0");
      if (inner.wire_type == kEndGroup) {
        if (inner.number == number) return absl::OkStatus();
        return Error(tag_pos, "end-group tag does not match its start-group");
      }
      RETURN_IF_ERROR(ReadValue(&inner, depth));
    }
  }

  // Base-128 varint of at most 10 bytes.
  bool ReadVarint(uint64_t* value) {
    uint64_t result = 0;
    for (int shift = 0; shift < 70; shift += 7) {
      if (pos_ >= data_.size()) return false;
      const auto byte = static_cast<uint8_t>(data_[pos_++]);
      if (shift < 64) result |= static_cast<uint64_t>(byte & 0x7F) << shift;
      if ((byte & 0x80) == 0) {
        *value = result;
        return true;
      }
    }
    return false;
  }

  absl::Status Error(size_t pos, const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrCat("malformed protobuf in ", std::string(message_),
                                                   " at byte ", base_ + pos, ": ", what));
  }

  std::string_view data_;
  size_t base_;
  std::string_view message_;
  size_t pos_ = 0;
};

// Calls handle(field) for every field of the message in `data` (groups excluded).
template <typename Handler>
absl::Status ForEachField(std::string_view data, size_t base, std::string_view message,
                          Handler&& handle) {
  WireReader reader(data, base, message);
  while (!reader.done()) {
    Field field;
    RETURN_IF_ERROR(reader.Next(&field));
    handle(field);
  }
  return absl::OkStatus();
}

// Offset of `inner` within `outer` (inner is a view into outer).
size_t OffsetIn(std::string_view outer, std::string_view inner) {
  return static_cast<size_t>(inner.data() - outer.data());
}

float FloatFromBits(uint32_t bits) {
  float value;
  static_assert(sizeof(value) == sizeof(bits));
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

// proto2 int32: the low 32 bits of the varint (negative values arrive sign-extended to 64).
int32_t Int32FromVarint(uint64_t v) {
  return static_cast<int32_t>(static_cast<uint32_t>(v & 0xFFFFFFFFu));
}

absl::Status ParsePiece(std::string_view data, size_t base, SentencePieceModel::Piece* piece) {
  return ForEachField(data, base, "ModelProto.pieces", [&](const Field& f) {
    if (f.number == 1 && f.wire_type == kLengthDelimited) {
      piece->text.assign(f.bytes);
    } else if (f.number == 2 && f.wire_type == kFixed32) {
      piece->score = FloatFromBits(f.fixed32);
    } else if (f.number == 3 && f.wire_type == kVarint) {
      // proto2 keeps an out-of-range enum value as an unknown field; the type stays as it was.
      const int32_t type = Int32FromVarint(f.varint);
      if (type >= 1 && type <= 6) piece->type = static_cast<SentencePieceModel::PieceType>(type);
    }
  });
}

absl::Status ParseTrainerSpec(std::string_view data, size_t base,
                              SentencePieceModel::TrainerSpec* spec) {
  return ForEachField(data, base, "ModelProto.trainer_spec", [&](const Field& f) {
    if (f.wire_type == kVarint) {
      const bool flag = f.varint != 0;
      switch (f.number) {
        case 3: {
          const int32_t type = Int32FromVarint(f.varint);
          if (type >= 1 && type <= 4) {
            spec->model_type = static_cast<SentencePieceModel::ModelType>(type);
          }
          break;
        }
        case 24:
          spec->treat_whitespace_as_suffix = flag;
          break;
        case 25:
          spec->split_digits = flag;
          break;
        case 26:
          spec->allow_whitespace_only_pieces = flag;
          break;
        case 35:
          spec->byte_fallback = flag;
          break;
        case 40:
          spec->unk_id = Int32FromVarint(f.varint);
          break;
        case 41:
          spec->bos_id = Int32FromVarint(f.varint);
          break;
        case 42:
          spec->eos_id = Int32FromVarint(f.varint);
          break;
        case 43:
          spec->pad_id = Int32FromVarint(f.varint);
          break;
        default:
          break;
      }
    } else if (f.wire_type == kLengthDelimited) {
      switch (f.number) {
        case 44:
          spec->unk_surface.assign(f.bytes);
          spec->has_unk_surface = true;
          break;
        case 45:
          spec->unk_piece.assign(f.bytes);
          break;
        case 46:
          spec->bos_piece.assign(f.bytes);
          break;
        case 47:
          spec->eos_piece.assign(f.bytes);
          break;
        case 48:
          spec->pad_piece.assign(f.bytes);
          break;
        default:
          break;
      }
    }
  });
}

absl::Status ParseNormalizerSpec(std::string_view data, size_t base, std::string_view message,
                                 SentencePieceModel::NormalizerSpec* spec) {
  return ForEachField(data, base, message, [&](const Field& f) {
    if (f.wire_type == kLengthDelimited) {
      if (f.number == 1) spec->name.assign(f.bytes);
      if (f.number == 2) spec->precompiled_charsmap.assign(f.bytes);
    } else if (f.wire_type == kVarint) {
      const bool flag = f.varint != 0;
      if (f.number == 3) spec->add_dummy_prefix = flag;
      if (f.number == 4) spec->remove_extra_whitespaces = flag;
      if (f.number == 5) spec->escape_whitespaces = flag;
    }
  });
}

// Darts-clone double-array unit accessors (darts.h, DoubleArrayUnit).
bool UnitHasLeaf(uint32_t unit) { return ((unit >> 8) & 1) == 1; }
uint32_t UnitValue(uint32_t unit) { return unit & ((1u << 31) - 1); }
// A leaf unit has the MSB set, so its label never equals a byte.
uint32_t UnitLabel(uint32_t unit) { return unit & ((1u << 31) | 0xFF); }
uint32_t UnitOffset(uint32_t unit) { return (unit >> 10) << ((unit & (1u << 9)) >> 6); }

}  // namespace

absl::StatusOr<SentencePieceModel> ParseSentencePieceModel(std::string_view serialized) {
  SentencePieceModel model;
  // Sub-messages are parsed after the scan so their errors can be returned; a singular message
  // field that occurs several times is merged, as protobuf does.
  absl::Status status;
  const absl::Status scan = ForEachField(serialized, 0, "ModelProto", [&](const Field& f) {
    if (!status.ok() || f.wire_type != kLengthDelimited) return;
    const size_t base = OffsetIn(serialized, f.bytes);
    switch (f.number) {
      case 1:
        model.pieces.emplace_back();
        status = ParsePiece(f.bytes, base, &model.pieces.back());
        break;
      case 2:
        status = ParseTrainerSpec(f.bytes, base, &model.trainer_spec);
        break;
      case 3:
        status = ParseNormalizerSpec(f.bytes, base, "ModelProto.normalizer_spec",
                                     &model.normalizer_spec);
        break;
      case 5:
        model.has_denormalizer_spec = true;
        status = ParseNormalizerSpec(f.bytes, base, "ModelProto.denormalizer_spec",
                                     &model.denormalizer_spec);
        break;
      default:
        break;  // 4: self_test_data, and unknown fields
    }
  });
  RETURN_IF_ERROR(scan);
  RETURN_IF_ERROR(status);
  return model;
}

absl::StatusOr<PrecompiledCharsMap> PrecompiledCharsMap::Parse(std::string_view blob) {
  if (blob.size() <= 4) {
    return absl::InvalidArgumentError(absl::StrCat("normalizer precompiled_charsmap is broken: ",
                                                   blob.size(), " bytes, expected more than 4"));
  }
  uint32_t trie_size = 0;
  for (int i = 3; i >= 0; --i) trie_size = trie_size << 8 | static_cast<uint8_t>(blob[i]);
  blob.remove_prefix(4);
  if (trie_size > blob.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("normalizer precompiled_charsmap is broken: its trie size ", trie_size,
                     " exceeds the ", blob.size(), " bytes that follow"));
  }
  PrecompiledCharsMap map;
  map.units_.resize(trie_size / 4);
  for (size_t u = 0; u < map.units_.size(); ++u) {
    uint32_t unit = 0;
    for (int i = 3; i >= 0; --i) unit = unit << 8 | static_cast<uint8_t>(blob[4 * u + i]);
    map.units_[u] = unit;
  }
  map.replacements_.assign(blob.substr(trie_size));
  return map;
}

size_t PrecompiledCharsMap::LongestMatch(std::string_view text,
                                         std::string_view* replacement) const {
  // Darts-clone commonPrefixSearch; every match is longer than the previous one, so the last one
  // wins. Unit indices are bounds-checked: a corrupt array just ends the search.
  if (units_.empty()) return 0;
  size_t best_length = 0;
  size_t node = UnitOffset(units_[0]);
  for (size_t i = 0; i < text.size(); ++i) {
    const auto byte = static_cast<uint8_t>(text[i]);
    node ^= byte;
    if (node >= units_.size()) break;
    const uint32_t unit = units_[node];
    if (UnitLabel(unit) != byte) break;
    node ^= UnitOffset(unit);
    if (UnitHasLeaf(unit)) {
      if (node >= units_.size()) break;
      const size_t offset = UnitValue(units_[node]);
      if (offset >= replacements_.size()) continue;  // a corrupt value: ignore this rule
      const size_t end = replacements_.find('\0', offset);
      *replacement =
          std::string_view(replacements_)
              .substr(offset, end == std::string::npos ? std::string::npos : end - offset);
      best_length = i + 1;
    }
  }
  return best_length;
}

}  // namespace squeeze
