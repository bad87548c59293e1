// Greedy, deterministic weighted blending of datasets (see kernels.h).
#include <cmath>
#include <vector>

#include "kernels.h"

namespace mth {

std::string normalize_blending_weights(const double* weights, int64_t n, double* normalized) {
  if (n < 1 || n > 32767) return "need 1..32767 blending weights, got " + std::to_string(n);
  double sum = 0.0;  // left to right, like the reference
  for (int64_t d = 0; d < n; ++d) {
    const double w = weights[d];
    if (!std::isfinite(w) || w < 0.0) {
      return "blending weights must be finite and non-negative, weights[" + std::to_string(d) +
             "] = " + std::to_string(w);
    }
    sum += w;
  }
  if (!(sum > 0.0) || !std::isfinite(sum)) return "blending weights must have a finite positive sum";
  for (int64_t d = 0; d < n; ++d) normalized[d] = weights[d] / sum;
  return "";
}

void build_blending_indices(const double* weights, int64_t n, int64_t size, int16_t* dataset_index,
                            int64_t* dataset_sample_index) {
  std::vector<int64_t> taken(static_cast<size_t>(n), 0);
  for (int64_t i = 0; i < size; ++i) {
    const double step = static_cast<double>(i > 1 ? i : 1);
    int64_t best = 0;
    double best_err = weights[0] * step - static_cast<double>(taken[0]);
    for (int64_t d = 1; d < n; ++d) {
      const double err = weights[d] * step - static_cast<double>(taken[d]);
      if (err > best_err) {  // strict: ties keep the lowest d
        best_err = err;
        best = d;
      }
    }
    dataset_index[i] = static_cast<int16_t>(best);
    dataset_sample_index[i] = taken[best]++;
  }
}

}  // namespace mth
