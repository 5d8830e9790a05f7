#include "engine/backend/fixed_context.h"

#include "absl/strings/str_cat.h"

namespace squeeze {

absl::Status CheckHostSelection(const LayerSelection& selection, int layer, int num_kv_heads,
                                int num_rows, int32_t* kept_rows, int32_t* candidates) {
  if (selection.ranges.size() != static_cast<size_t>(num_kv_heads)) {
    return absl::InternalError(absl::StrCat("fixed-context selection for layer ", layer,
                                            " returned ", selection.ranges.size(),
                                            " KV heads, expected ", num_kv_heads));
  }
  for (int h = 0; h < num_kv_heads; ++h) {
    int32_t kept = 0;
    for (const KeyRange& r : selection.ranges[h]) {
      if (r.begin < 0 || r.begin > r.end || r.end > num_rows) {
        return absl::InternalError(absl::StrCat(
            "fixed-context selection for layer ", layer, ", KV head ", h, " returned rows [",
            r.begin, ", ", r.end, ") outside the context's [0, ", num_rows, ")"));
      }
      kept += r.size();
    }
    if (kept_rows != nullptr) kept_rows[h] = kept;
  }
  if (candidates != nullptr && selection.candidates.size() == static_cast<size_t>(num_kv_heads)) {
    for (int h = 0; h < num_kv_heads; ++h) candidates[h] = selection.candidates[h];
  }
  return absl::OkStatus();
}

}  // namespace squeeze
