// Data kernels of megatron_th: pure functions over raw arrays (no Python, no torch), so the
// pybind11 module (module.cpp) and any future CUDA wrapper share them.
#pragma once
#include <cstdint>
#include <string>

namespace mth {

// Sample index: out[2*i], out[2*i+1] = (position in doc_idx, token offset) of the document that
// holds stream token i*seq_length, for i in [0, num_samples]. Returns "" or an error message.
std::string build_sample_idx(const int32_t* sizes, int64_t n_sizes, const int64_t* doc_idx, int64_t n_docs,
                             int64_t seq_length, int64_t num_samples, int64_t* out);

// Greedy blending: sample i comes from argmax_d weights[d]*max(i,1) - taken[d] (lowest d on ties).
// weights must already be normalised.
void build_blending_indices(const double* weights, int64_t n, int64_t size, int16_t* dataset_index,
                            int64_t* dataset_sample_index);

// Packed-sequence metadata for tokens [b, s]: position ids (restarting after EOD if asked),
// loss mask (0 at EOD inputs if asked), document boundaries in THD layout. cu_seqlens must have
// room for b*s + 1 entries; returns how many were written.
int64_t packed_metadata(const int64_t* tokens, int64_t b, int64_t s, int64_t eod, bool reset_position_ids,
                        bool eod_mask_loss, int64_t* position_ids, float* loss_mask, int32_t* cu_seqlens);

}  // namespace mth
