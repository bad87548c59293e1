// Greedy, deterministic weighted blending of datasets (see kernels.h).
//
// The rule is Megatron's (megatron/core/datasets/helpers.cpp build_blending_indices): output i
// comes from the dataset d maximising weights[d] * max(i, 1) - taken[d], the lowest d on ties,
// with the same double arithmetic (one multiply, one subtract, no FMA), so every decision is the
// same bit for bit. Two things make it faster than that loop:
//  - up to 8 datasets, the counters live in registers as doubles (exact below 2^53) and the
//    argmax is branch-free, so an irregular choice pattern costs no mispredicted branches;
//  - the output is cut into chunks built by threads at once. Chunk k > 0 starts from a guessed
//    state (the largest-remainder rounding of weights * i, `warmup` steps before the chunk, then
//    run up to it); the greedy forgets where it started, so the guess is almost always the true
//    state by the chunk's start. Every guess is checked afterwards against the true state (the end
//    of the previous chunk) and a chunk whose guess was wrong is rebuilt from the true state, so
//    the result never depends on the guess or on the number of threads.
#include <algorithm>
#include <cmath>
#include <thread>
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

namespace {

constexpr int64_t kExactDouble = int64_t(1) << 53;  // double counters are exact below this

// Outputs [begin, end) from the state `taken` (updated in place). Writes nothing when idx is null.
// Any number of datasets; int64 counters, as Megatron.
void run_any(const double* w, int64_t n, int64_t begin, int64_t end, int64_t* taken, int16_t* idx,
             int64_t* smp) {
  for (int64_t i = begin; i < end; ++i) {
    const double step = static_cast<double>(i > 1 ? i : 1);
    int64_t best = 0;
    double best_err = w[0] * step - static_cast<double>(taken[0]);
    for (int64_t d = 1; d < n; ++d) {
      const double err = w[d] * step - static_cast<double>(taken[d]);
      if (err > best_err) {  // strict: ties keep the lowest d
        best_err = err;
        best = d;
      }
    }
    if (idx) {
      idx[i] = static_cast<int16_t>(best);
      smp[i] = taken[best];
    }
    ++taken[best];
  }
}

// The same for exactly N datasets (N <= 8), counters as doubles in registers, branch-free argmax.
// Requires end < 2^53. The double counter converts to the int64 Megatron holds exactly.
template <int N, bool Write>
void run_fixed(const double* w_in, int64_t begin, int64_t end, int64_t* taken, int16_t* idx, int64_t* smp) {
  double w[N], t[N];
  for (int d = 0; d < N; ++d) {
    w[d] = w_in[d];
    t[d] = static_cast<double>(taken[d]);
  }
  for (int64_t i = begin; i < end; ++i) {
    const double step = static_cast<double>(i > 1 ? i : 1);
    double best_err = w[0] * step - t[0];
    double best_t = t[0];
    int best = 0;
    for (int d = 1; d < N; ++d) {
      const double err = w[d] * step - t[d];
      const bool gt = err > best_err;  // strict: ties keep the lowest d
      best_err = gt ? err : best_err;
      best_t = gt ? t[d] : best_t;
      best = gt ? d : best;
    }
    if (Write) {
      idx[i] = static_cast<int16_t>(best);
      smp[i] = static_cast<int64_t>(best_t);
    }
    for (int d = 0; d < N; ++d) t[d] += (d == best) ? 1.0 : 0.0;
  }
  for (int d = 0; d < N; ++d) taken[d] = static_cast<int64_t>(t[d]);
}

template <int N>
void run_n(const double* w, int64_t begin, int64_t end, int64_t* taken, int16_t* idx, int64_t* smp) {
  if (idx) {
    run_fixed<N, true>(w, begin, end, taken, idx, smp);
  } else {
    run_fixed<N, false>(w, begin, end, taken, idx, smp);
  }
}

void run(const double* w, int64_t n, int64_t begin, int64_t end, int64_t* taken, int16_t* idx, int64_t* smp) {
  if (end >= kExactDouble) return run_any(w, n, begin, end, taken, idx, smp);
  switch (n) {
    case 1: return run_n<1>(w, begin, end, taken, idx, smp);
    case 2: return run_n<2>(w, begin, end, taken, idx, smp);
    case 3: return run_n<3>(w, begin, end, taken, idx, smp);
    case 4: return run_n<4>(w, begin, end, taken, idx, smp);
    case 5: return run_n<5>(w, begin, end, taken, idx, smp);
    case 6: return run_n<6>(w, begin, end, taken, idx, smp);
    case 7: return run_n<7>(w, begin, end, taken, idx, smp);
    case 8: return run_n<8>(w, begin, end, taken, idx, smp);
    default: return run_any(w, n, begin, end, taken, idx, smp);
  }
}

// A state with sum(taken) == i close to the true one: floor(w[d] * i), the missing units given
// to the largest fractional parts (ties: lowest d). Only a starting guess; it is always checked.
void guess_state(const double* w, int64_t n, int64_t i, int64_t* taken) {
  std::vector<double> frac(static_cast<size_t>(n));
  int64_t sum = 0;
  for (int64_t d = 0; d < n; ++d) {
    const double q = w[d] * static_cast<double>(i);
    taken[d] = static_cast<int64_t>(std::floor(q));
    frac[d] = q - std::floor(q);
    sum += taken[d];
  }
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t d = 0; d < n; ++d) order[d] = d;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return frac[a] > frac[b]; });
  for (int64_t k = 0; sum < i; k = (k + 1) % n, ++sum) ++taken[order[k]];
  for (int64_t d = 0; sum > i; d = (d + 1) % n) {
    if (taken[d] > 0) {
      --taken[d];
      --sum;
    }
  }
}

}  // namespace

int64_t build_blending_indices(const double* weights, int64_t n, int64_t size, int16_t* dataset_index,
                               int64_t* dataset_sample_index, int num_threads, int64_t warmup) {
  constexpr int64_t kMinChunk = int64_t(1) << 20;  // below this a thread costs more than it saves
  int64_t threads = num_threads > 0 ? num_threads : std::max(1u, std::thread::hardware_concurrency());
  if (num_threads <= 0) threads = std::min<int64_t>(threads, std::max<int64_t>(1, size / kMinChunk));
  threads = std::max<int64_t>(1, std::min<int64_t>(threads, size));
  const size_t un = static_cast<size_t>(n);
  if (threads == 1) {
    std::vector<int64_t> taken(un, 0);
    run(weights, n, 0, size, taken.data(), dataset_index, dataset_sample_index);
    return 0;
  }
  // chunk k = [bounds[k], bounds[k+1]); start[k]: its (guessed) state at bounds[k]; end[k]: after it
  std::vector<int64_t> bounds(static_cast<size_t>(threads) + 1);
  for (int64_t k = 0; k <= threads; ++k) bounds[k] = size / threads * k + std::min(k, size % threads);
  std::vector<std::vector<int64_t>> start(static_cast<size_t>(threads), std::vector<int64_t>(un, 0));
  std::vector<std::vector<int64_t>> end(start);
  auto build = [&](int64_t k) {
    const int64_t b = bounds[k], from = std::max<int64_t>(0, b - std::max<int64_t>(0, warmup));
    std::vector<int64_t> taken(un, 0);
    if (from > 0) guess_state(weights, n, from, taken.data());
    run(weights, n, from, b, taken.data(), nullptr, nullptr);  // warm up to the chunk, writing nothing
    start[k] = taken;
    run(weights, n, b, bounds[k + 1], taken.data(), dataset_index, dataset_sample_index);
    end[k] = taken;
  };
  std::vector<std::thread> pool;
  for (int64_t k = 1; k < threads; ++k) pool.emplace_back(build, k);
  build(0);
  for (auto& t : pool) t.join();
  int64_t rebuilt = 0;
  for (int64_t k = 1; k < threads; ++k) {  // the true state at bounds[k] is end[k-1] (already checked)
    if (start[k] != end[k - 1]) {
      std::vector<int64_t> taken(end[k - 1]);
      run(weights, n, bounds[k], bounds[k + 1], taken.data(), dataset_index, dataset_sample_index);
      end[k] = taken;
      ++rebuilt;
    }
  }
  return rebuilt;
}

}  // namespace mth
