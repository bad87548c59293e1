// Sample index over shuffled documents: each sample is seq_length + 1 tokens read across
// document boundaries; consecutive samples share one token.
#include "kernels.h"

namespace mth {

std::string build_sample_idx(const int32_t* sizes, int64_t n_sizes, const int64_t* doc_idx, int64_t n_docs,
                             int64_t seq_length, int64_t num_samples, int64_t* out) {
  if (seq_length <= 0 || num_samples < 0) return "seq_length must be positive and num_samples >= 0";
  int64_t total = 0;
  for (int64_t p = 0; p < n_docs; ++p) {
    const int64_t d = doc_idx[p];
    if (d < 0 || d >= n_sizes) return "doc_idx holds a document id outside sizes";
    if (sizes[d] < 0) return "negative document size";
    total += sizes[d];
  }
  const int64_t need = num_samples * seq_length + 1;
  if (total < need) {
    return "not enough tokens: " + std::to_string(num_samples) + " samples of " + std::to_string(seq_length) +
           " need " + std::to_string(need) + ", documents hold " + std::to_string(total);
  }
  int64_t p = 0, o = 0;
  while (sizes[doc_idx[p]] == 0) ++p;  // row 0 points at the first real token
  out[0] = p;
  out[1] = 0;
  for (int64_t i = 1; i <= num_samples; ++i) {
    int64_t remaining = seq_length + 1;  // tokens of sample i-1, starting at (p, o)
    while (true) {
      const int64_t avail = sizes[doc_idx[p]] - o;
      if (remaining <= avail) {
        o += remaining - 1;  // its last token starts the next sample
        break;
      }
      remaining -= avail;
      ++p;
      o = 0;
    }
    out[2 * i] = p;
    out[2 * i + 1] = o;
  }
  return "";
}

}  // namespace mth
