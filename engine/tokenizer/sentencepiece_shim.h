// Includes the SentencePiece C++ headers next to Abseil.
//
// sentencepiece_processor.h (0.1.97) declares `namespace absl { using std::string_view; }`.
// Debian's Abseil is built with ABSL_OPTION_USE_STD_STRING_VIEW=0, so absl::string_view is its own
// class and the two declarations collide in any file that also includes Abseil. While the
// SentencePiece headers are read, `absl` is renamed to a private namespace; their API then takes
// std::string_view, which is the type the library was compiled with (same mangled names).
// Include this file instead of the SentencePiece headers, in .cc files only.
#pragma once

#pragma push_macro("absl")
#undef absl
#define absl squeeze_sentencepiece_absl
#include <sentencepiece_processor.h>  // NOLINT(build/include_order)
#include <sentencepiece_trainer.h>    // NOLINT(build/include_order)
#pragma pop_macro("absl")
