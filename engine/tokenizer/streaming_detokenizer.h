// Incremental detokenisation for streamed generation.
//
// Text deltas are produced from Tokenizer::TokenBytes as ids arrive, never splitting a UTF-8
// character: an incomplete multi-byte sequence (e.g. an emoji spread over four byte-fallback
// tokens) is held back until it completes. Bytes that can no longer form a valid character are
// emitted as U+FFFD, one per byte, exactly as SentencePiece's Decode does, either as soon as that
// is certain or at Flush().
//
// Invariant (tested): concat(Push(ids[i]) for all i) + Flush() == Decode(prefix + ids) minus
// Decode(prefix), where
//   strip_leading_space == true:  prefix is empty, i.e. the ids are the start of a text, so
//                                 the leading space of the first piece is dropped the way Decode
//                                 drops it (SentencePiece add_dummy_prefix);
//   strip_leading_space == false: prefix is a prompt that decodes to non-empty text and ends on a
//                                 character boundary; the continuation's first ' ' is real text
//                                 and is kept. This is the mode for generated tokens after a
//                                 prompt; use `true` only if the prompt decodes to "" (e.g. only
//                                 <s>).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/tokenizer/tokenizer.h"

namespace squeeze {

class StreamingDetokenizer {
 public:
  // `tokenizer` must outlive this object.
  StreamingDetokenizer(const Tokenizer& tokenizer, bool strip_leading_space);

  // Appends one token; returns the text that became final (possibly "").
  std::string Push(int32_t id);
  // Ends the stream: returns held-back bytes, invalid ones as U+FFFD.
  std::string Flush();

 private:
  // Moves every complete (or provably invalid) character of pending_ into the result; when
  // `final`, incomplete trailing bytes are invalid too.
  std::string Drain(bool final);

  const Tokenizer& tokenizer_;
  // True while stripping is on and nothing visible has been produced yet. In that phase a token
  // whose bytes start with ' ' is rendered through Decode(leading_ids_ + id), which applies the
  // tokenizer's own leading-space rule (it differs between SentencePiece normalizer settings and
  // between a '▁' piece and a <0x20> byte piece, which TokenBytes cannot tell apart).
  bool leading_ = false;
  std::vector<int32_t> leading_ids_;  // tokens consumed in the leading phase that Decode saw
  std::string pending_;               // bytes not yet emitted: an incomplete UTF-8 tail (< 4)
};

}  // namespace squeeze
