// Greedy, deterministic weighted blending of datasets.
#include <vector>

#include "kernels.h"

namespace mth {

void build_blending_indices(const double* weights, int64_t n, int64_t size, int16_t* dataset_index,
                            int64_t* dataset_sample_index) {
  std::vector<int64_t> taken(n, 0);
  for (int64_t i = 0; i < size; ++i) {
    const double step = static_cast<double>(i > 1 ? i : 1);
    int64_t best = 0;
    double best_err = weights[0] * step - static_cast<double>(taken[0]);
    for (int64_t d = 1; d < n; ++d) {
      const double err = weights[d] * step - static_cast<double>(taken[d]);
      if (err > best_err) {
        best_err = err;
        best = d;
      }
    }
    dataset_index[i] = static_cast<int16_t>(best);
    dataset_sample_index[i] = taken[best]++;
  }
}

}  // namespace mth
