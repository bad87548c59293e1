// Metadata of packed sequences delimited by EOD: the EOD closes its document (see kernels.h).
#include "kernels.h"

namespace mth {

int64_t packed_metadata(const int64_t* tokens, int64_t b, int64_t s, int64_t eod, bool reset_position_ids,
                        bool eod_mask_loss, int64_t* position_ids, float* loss_mask, int32_t* cu_seqlens) {
  int64_t n = 0;
  cu_seqlens[n++] = 0;
  for (int64_t r = 0; r < b; ++r) {
    const int64_t base = r * s;
    int64_t pos = 0;
    for (int64_t j = 0; j < s; ++j) {
      const bool is_eod = tokens[base + j] == eod;
      position_ids[base + j] = pos++;
      loss_mask[base + j] = (eod_mask_loss && is_eod) ? 0.0f : 1.0f;
      if (is_eod && j + 1 < s) {  // the next token starts a new document
        cu_seqlens[n++] = static_cast<int32_t>(base + j + 1);
        if (reset_position_ids) pos = 0;
      }
    }
    cu_seqlens[n++] = static_cast<int32_t>(base + s);
  }
  return n;
}

}  // namespace mth
