// pybind11 bindings of the data kernels: numpy in, numpy out, GIL released around the loops.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <stdexcept>
#include <vector>

#include "kernels.h"

namespace py = pybind11;
template <typename T>
using arr = py::array_t<T, py::array::c_style | py::array::forcecast>;

static py::array_t<int64_t> sample_idx(arr<int32_t> sizes, arr<int64_t> doc_idx, int64_t seq_length,
                                       int64_t num_samples) {
  if (sizes.ndim() != 1 || doc_idx.ndim() != 1) throw py::value_error("sizes and doc_idx must be 1-D");
  if (num_samples < 0) throw py::value_error("num_samples must be >= 0");
  py::array_t<int64_t> out({num_samples + 1, static_cast<int64_t>(2)});
  std::string err;
  {
    py::gil_scoped_release release;
    err = mth::build_sample_idx(sizes.data(), sizes.shape(0), doc_idx.data(), doc_idx.shape(0), seq_length,
                                num_samples, out.mutable_data());
  }
  if (!err.empty()) throw py::value_error(err);
  return out;
}

static py::tuple blending(arr<double> weights, int64_t size) {
  if (weights.ndim() != 1 || weights.shape(0) == 0 || weights.shape(0) > 32767)
    throw py::value_error("blending weights must be a 1-D array of 1..32767 entries");
  if (size < 0) throw py::value_error("size must be >= 0");
  std::vector<double> w(weights.data(), weights.data() + weights.shape(0));
  double sum = 0;
  for (double x : w) {
    if (!std::isfinite(x) || x < 0) throw py::value_error("blending weights must be finite and non-negative");
    sum += x;
  }
  if (sum <= 0) throw py::value_error("blending weights must have a positive sum");
  for (double& x : w) x /= sum;
  py::array_t<int16_t> index(size);
  py::array_t<int64_t> sample(size);
  {
    py::gil_scoped_release release;
    mth::build_blending_indices(w.data(), static_cast<int64_t>(w.size()), size, index.mutable_data(),
                                sample.mutable_data());
  }
  return py::make_tuple(index, sample);
}

static py::tuple packing(arr<int64_t> tokens, int64_t eod, bool reset_position_ids, bool eod_mask_loss) {
  if (tokens.ndim() != 2 || tokens.shape(1) == 0)
    throw py::value_error("tokens must be a non-empty [batch, seq] array");
  const int64_t b = tokens.shape(0), s = tokens.shape(1);
  py::array_t<int64_t> pos({b, s});
  py::array_t<float> mask({b, s});
  std::vector<int32_t> cu(static_cast<size_t>(b * s + 1));
  int64_t n;
  {
    py::gil_scoped_release release;
    n = mth::packed_metadata(tokens.data(), b, s, eod, reset_position_ids, eod_mask_loss, pos.mutable_data(),
                             mask.mutable_data(), cu.data());
  }
  py::array_t<int32_t> cu_out(n);
  std::copy(cu.begin(), cu.begin() + n, cu_out.mutable_data());
  return py::make_tuple(pos, mask, cu_out);
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "megatron_th C++ data kernels (sample index, blending, packed-sequence metadata)";
  m.def("build_sample_idx", &sample_idx, py::arg("sizes"), py::arg("doc_idx"), py::arg("seq_length"),
        py::arg("num_samples"));
  m.def("build_blending_indices", &blending, py::arg("weights"), py::arg("size"));
  m.def("packed_metadata", &packing, py::arg("tokens"), py::arg("eod"), py::arg("reset_position_ids"),
        py::arg("eod_mask_loss"));
}
