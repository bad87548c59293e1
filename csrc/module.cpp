// pybind11 bindings of the data kernels (megatron_th._C): numpy in, numpy out. Inputs are cast
// to the kernel dtype and made C-contiguous; the GIL is released around every loop; bad input
// raises ValueError with the reason.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include "kernels.h"

namespace py = pybind11;
template <typename T>
using arr = py::array_t<T, py::array::c_style | py::array::forcecast>;

static void require_ndim(const py::array& a, py::ssize_t ndim, const char* name) {
  if (a.ndim() != ndim) {
    throw py::value_error(std::string(name) + " must be a " + std::to_string(ndim) + "-D array, got ndim=" +
                          std::to_string(a.ndim()));
  }
}

static void raise_if(const std::string& err) {
  if (!err.empty()) throw py::value_error(err);
}

static py::array_t<int64_t> sample_idx(arr<int32_t> sizes, arr<int64_t> doc_idx, int64_t seq_length,
                                       int64_t num_samples) {
  require_ndim(sizes, 1, "sizes");
  require_ndim(doc_idx, 1, "doc_idx");
  const int32_t* s = sizes.data();
  const int64_t* d = doc_idx.data();
  std::string err;
  {
    py::gil_scoped_release release;
    err = mth::check_sample_idx(s, sizes.shape(0), d, doc_idx.shape(0), seq_length, num_samples, nullptr);
  }
  raise_if(err);  // validated before allocating: a huge num_samples fails here, not in malloc
  py::array_t<int64_t> out({num_samples + 1, static_cast<int64_t>(2)});
  int64_t* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    mth::build_sample_idx(s, d, seq_length, num_samples, o);
  }
  return out;
}

static py::tuple blending(arr<double> weights, int64_t size, int num_threads, int64_t warmup) {
  require_ndim(weights, 1, "weights");
  if (size < 0) throw py::value_error("size must be >= 0, got " + std::to_string(size));
  const int64_t n = weights.shape(0);
  std::vector<double> w(static_cast<size_t>(std::max<int64_t>(n, 1)));
  raise_if(mth::normalize_blending_weights(weights.data(), n, w.data()));
  py::array_t<int16_t> index(size);
  py::array_t<int64_t> sample(size);
  int16_t* ip = index.mutable_data();
  int64_t* sp = sample.mutable_data();
  {
    py::gil_scoped_release release;
    mth::build_blending_indices(w.data(), n, size, ip, sp, num_threads, warmup);
  }
  return py::make_tuple(index, sample);
}

static py::tuple packing(arr<int64_t> tokens, int64_t eod, bool reset_position_ids, bool eod_mask_loss) {
  require_ndim(tokens, 2, "tokens");
  const int64_t b = tokens.shape(0), s = tokens.shape(1);
  if (s == 0) throw py::value_error("tokens must have non-empty rows (seq length 0)");
  if (b > std::numeric_limits<int32_t>::max() / s) {
    throw py::value_error("batch * seq = " + std::to_string(b) + " * " + std::to_string(s) +
                          " does not fit the int32 cu_seqlens");
  }
  py::array_t<int64_t> pos({b, s});
  py::array_t<float> mask({b, s});
  std::vector<int32_t> cu(static_cast<size_t>(b * s + 1));
  const int64_t* t = tokens.data();
  int64_t* pp = pos.mutable_data();
  float* mp = mask.mutable_data();
  int64_t n;
  {
    py::gil_scoped_release release;
    n = mth::packed_metadata(t, b, s, eod, reset_position_ids, eod_mask_loss, pp, mp, cu.data());
  }
  py::array_t<int32_t> cu_out(n);
  std::copy(cu.begin(), cu.begin() + n, cu_out.mutable_data());
  return py::make_tuple(pos, mask, cu_out);
}

static py::tuple bin_packing(arr<int64_t> lengths, int64_t capacity) {
  require_ndim(lengths, 1, "lengths");
  const int64_t n = lengths.shape(0);
  const int64_t* l = lengths.data();
  std::string err;
  {
    py::gil_scoped_release release;
    err = mth::check_bin_packing(l, n, capacity);
  }
  raise_if(err);
  std::vector<int64_t> offsets(static_cast<size_t>(n + 1));
  py::array_t<int64_t> items(n);
  int64_t* ip = items.mutable_data();
  int64_t nbins;
  {
    py::gil_scoped_release release;
    nbins = mth::best_fit_decreasing(l, n, capacity, offsets.data(), ip);
  }
  py::array_t<int64_t> offsets_out(nbins + 1);
  std::copy(offsets.begin(), offsets.begin() + nbins + 1, offsets_out.mutable_data());
  return py::make_tuple(offsets_out, items);
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "megatron_th C++ data kernels: sample index, dataset blending, packed-sequence metadata, "
          "SFT bin packing";
  m.def("build_sample_idx", &sample_idx, py::arg("sizes"), py::arg("doc_idx"), py::arg("seq_length"),
        py::arg("num_samples"),
        "int64 [num_samples+1, 2]: (position in doc_idx, token offset) where each sample starts; "
        "row num_samples is the last token of the last sample.");
  m.def("build_blending_indices", &blending, py::arg("weights"), py::arg("size"), py::arg("num_threads") = 0,
        py::arg("warmup") = 4096,
        "(dataset_index int16 [size], dataset_sample_index int64 [size]) by greedy weighted blending "
        "(Megatron's rule and arithmetic). num_threads <= 0: one per core, at most one per 2^20 samples; "
        "warmup: steps run before each later chunk from a guessed state (a testing knob: the result never "
        "depends on it or on num_threads).");
  m.def("packed_metadata", &packing, py::arg("tokens"), py::arg("eod"), py::arg("reset_position_ids"),
        py::arg("eod_mask_loss"),
        "(position_ids int64 [b,s], loss_mask float32 [b,s], cu_seqlens int32) of EOD-packed tokens.");
  m.def("best_fit_decreasing", &bin_packing, py::arg("lengths"), py::arg("capacity"),
        "(bin_offsets int64 [nbins+1], bin_items int64 [n]): best-fit-decreasing packing of items of the "
        "given lengths (each 1..capacity) into bins of size capacity; bin b holds "
        "bin_items[bin_offsets[b]:bin_offsets[b+1]] (indices into lengths, in placement order).");
}
