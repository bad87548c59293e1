// Sample index over shuffled documents: each sample is seq_length + 1 tokens read across
// document boundaries; consecutive samples share one token (see kernels.h).
#include <limits>

#include "kernels.h"

namespace mth {

std::string check_sample_idx(const int32_t* sizes, int64_t n_sizes, const int64_t* doc_idx, int64_t n_docs,
                             int64_t seq_length, int64_t num_samples, int64_t* total_tokens) {
  if (seq_length <= 0) return "seq_length must be positive, got " + std::to_string(seq_length);
  if (num_samples < 0) return "num_samples must be >= 0, got " + std::to_string(num_samples);
  if (n_sizes < 0 || n_docs < 0) return "negative array length";
  for (int64_t d = 0; d < n_sizes; ++d) {
    if (sizes[d] < 0) return "sizes[" + std::to_string(d) + "] is negative (" + std::to_string(sizes[d]) + ")";
  }
  int64_t total = 0;
  for (int64_t p = 0; p < n_docs; ++p) {
    const int64_t d = doc_idx[p];
    if (d < 0 || d >= n_sizes) {
      return "doc_idx[" + std::to_string(p) + "] = " + std::to_string(d) + " is outside sizes (" +
             std::to_string(n_sizes) + " documents)";
    }
    total += sizes[d];
  }
  if (total_tokens) *total_tokens = total;
  const int64_t max = std::numeric_limits<int64_t>::max();
  if (num_samples > (max - 1) / seq_length) {
    return "num_samples * seq_length overflows int64 (" + std::to_string(num_samples) + " * " +
           std::to_string(seq_length) + ")";
  }
  const int64_t need = num_samples * seq_length + 1;
  if (total < need) {
    return "not enough tokens: " + std::to_string(num_samples) + " samples of seq_length " +
           std::to_string(seq_length) + " need " + std::to_string(need) + " tokens, documents hold " +
           std::to_string(total);
  }
  return "";
}

void build_sample_idx(const int32_t* sizes, const int64_t* doc_idx, int64_t seq_length, int64_t num_samples,
                      int64_t* out) {
  int64_t p = 0;
  while (sizes[doc_idx[p]] == 0) ++p;  // stream token 0 is in the first non-empty document
  int64_t o = 0;
  out[0] = p;
  out[1] = 0;
  for (int64_t i = 1; i <= num_samples; ++i) {
    // Read the seq_length + 1 tokens of sample i-1 starting at (p, o); its last token is where
    // sample i starts. "remaining <= avail" keeps a sample that ends on a document's last token
    // at (p, size-1) instead of jumping to the next (possibly empty) document.
    int64_t remaining = seq_length + 1;
    while (true) {
      const int64_t avail = static_cast<int64_t>(sizes[doc_idx[p]]) - o;
      if (remaining <= avail) {
        o += remaining - 1;
        break;
      }
      remaining -= avail;
      ++p;
      o = 0;
    }
    out[2 * i] = p;
    out[2 * i + 1] = o;
  }
}

}  // namespace mth
