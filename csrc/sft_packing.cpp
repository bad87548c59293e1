// Best-fit-decreasing bin packing of SFT conversations into fixed-length sequences (see kernels.h).
#include <algorithm>
#include <limits>
#include <numeric>
#include <set>
#include <utility>
#include <vector>

#include "kernels.h"

namespace mth {

std::string check_bin_packing(const int64_t* lengths, int64_t n, int64_t capacity) {
  if (capacity <= 0) return "capacity must be positive, got " + std::to_string(capacity);
  if (n < 0) return "negative array length";
  int64_t over = 0, longest = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (lengths[i] < 1) {
      return "lengths[" + std::to_string(i) + "] = " + std::to_string(lengths[i]) +
             " is not positive (every item needs at least one token)";
    }
    if (lengths[i] > capacity) {
      ++over;
      longest = std::max(longest, lengths[i]);
    }
  }
  if (over) {
    return std::to_string(over) + " of the " + std::to_string(n) + " lengths exceed the capacity " +
           std::to_string(capacity) + " (longest: " + std::to_string(longest) + ")";
  }
  return "";
}

int64_t best_fit_decreasing(const int64_t* lengths, int64_t n, int64_t capacity, int64_t* bin_offsets,
                            int64_t* bin_items) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return lengths[a] > lengths[b]; });

  // open bins keyed by (remaining space, bin id): lower_bound({l, min}) is the fullest bin that still
  // fits l, the lowest id among equally full ones. A full bin leaves the set (every item is >= 1).
  std::set<std::pair<int64_t, int64_t>> open;
  std::vector<int64_t> remaining;
  std::vector<int64_t> bin_of(static_cast<size_t>(n));  // bin of the k-th placed item
  for (int64_t k = 0; k < n; ++k) {
    const int64_t l = lengths[order[k]];
    int64_t b;
    auto it = open.lower_bound({l, std::numeric_limits<int64_t>::min()});
    if (it == open.end()) {
      b = static_cast<int64_t>(remaining.size());
      remaining.push_back(capacity - l);
    } else {
      b = it->second;
      open.erase(it);
      remaining[b] -= l;
    }
    if (remaining[b] > 0) open.insert({remaining[b], b});
    bin_of[k] = b;
  }

  // CSR by bin, items in placement order (a counting sort, stable in k)
  const int64_t nbins = static_cast<int64_t>(remaining.size());
  std::fill(bin_offsets, bin_offsets + nbins + 1, int64_t{0});
  for (int64_t k = 0; k < n; ++k) ++bin_offsets[bin_of[k] + 1];
  for (int64_t b = 0; b < nbins; ++b) bin_offsets[b + 1] += bin_offsets[b];
  std::vector<int64_t> fill(bin_offsets, bin_offsets + nbins);
  for (int64_t k = 0; k < n; ++k) bin_items[fill[bin_of[k]]++] = order[k];
  return nbins;
}

}  // namespace mth
