// Data kernels of megatron_th: plain functions over raw arrays (no Python, no torch), so the
// pybind11 module (module.cpp) and any future CUDA/other wrapper share them. Functions that can
// fail return "" on success or a human-readable error message; the wrapper turns it into an
// exception. All arrays are C-contiguous; the caller owns every buffer.
#pragma once
#include <cstdint>
#include <string>

namespace mth {

// ---- sample index (sample_index.cpp) ----------------------------------------------------------
// The token stream is documents doc_idx[0], doc_idx[1], ... back to back (empty ones hold no
// token). Sample i is stream tokens [i*seq_length, i*seq_length + seq_length] (inclusive), so
// consecutive samples share one token.

// Validates the request: seq_length > 0, num_samples >= 0, every doc_idx entry in [0, n_sizes),
// no negative size, and at least num_samples*seq_length + 1 tokens in the stream. Writes the
// stream length to *total_tokens (if not null) when the ids and sizes are valid.
std::string check_sample_idx(const int32_t* sizes, int64_t n_sizes, const int64_t* doc_idx, int64_t n_docs,
                             int64_t seq_length, int64_t num_samples, int64_t* total_tokens);

// out[2*i], out[2*i+1] = (position p in doc_idx, offset o in document doc_idx[p]) of stream
// token i*seq_length, for i in [0, num_samples]; out holds 2*(num_samples+1) entries. Every row
// points at a real token (0 <= o < sizes[doc_idx[p]]). Requires check_sample_idx(...) == "".
void build_sample_idx(const int32_t* sizes, const int64_t* doc_idx, int64_t seq_length, int64_t num_samples,
                      int64_t* out);

// ---- blending (blending.cpp) ------------------------------------------------------------------
// Checks 1 <= n <= 32767 weights, all finite and >= 0 with a positive sum, and writes
// weights / sum (summed left to right) to normalized[0..n).
std::string normalize_blending_weights(const double* weights, int64_t n, double* normalized);

// Greedy blending: output i comes from d = argmax_d weights[d]*max(i,1) - taken[d] (lowest d on
// ties); dataset_index[i] = d, dataset_sample_index[i] = taken[d]++. weights: normalized. Built by
// num_threads threads (<= 0: one per core, at most one per 2^20 outputs), each chunk after the
// first from a guessed state `warmup` steps ahead, checked and rebuilt when wrong: the output never
// depends on either. Returns the number of chunks rebuilt.
int64_t build_blending_indices(const double* weights, int64_t n, int64_t size, int16_t* dataset_index,
                               int64_t* dataset_sample_index, int num_threads = 0, int64_t warmup = 4096);

// ---- packed sequences (packing.cpp) -----------------------------------------------------------
// Metadata of tokens [b, s] (s > 0) packed with EOD separators; an EOD closes its document.
// position_ids [b, s]: 0..s-1 per row, restarting at 0 after each EOD if reset_position_ids.
// loss_mask [b, s]: 1, or 0 where tokens == eod if eod_mask_loss. cu_seqlens: THD boundaries
// 0, (r*s + j + 1 for each EOD at j < s-1), r*s + s per row; needs room for b*s + 1 entries
// (b*s must fit int32). Returns the number of entries written.
int64_t packed_metadata(const int64_t* tokens, int64_t b, int64_t s, int64_t eod, bool reset_position_ids,
                        bool eod_mask_loss, int64_t* position_ids, float* loss_mask, int32_t* cu_seqlens);

// ---- SFT packing (sft_packing.cpp) -------------------------------------------------------------
// Checks capacity > 0 and 1 <= lengths[i] for every item; items longer than capacity are an error
// naming how many there are and the longest.
std::string check_bin_packing(const int64_t* lengths, int64_t n, int64_t capacity);

// Best-fit decreasing: items in order of decreasing length (stable: equal lengths keep their input
// order, so a caller that shuffles the input decides their order); each goes into the open bin
// with the least remaining space that still fits it (lowest bin id on ties), else a new bin.
// Output in CSR form: bin b holds items bin_items[bin_offsets[b] .. bin_offsets[b+1]) (indices
// into lengths, in placement order); bins numbered in opening order. bin_offsets needs room for
// n + 1 entries, bin_items for n. Returns the number of bins. Requires check_bin_packing(...) == "".
// O(n log n): open bins live in an ordered set keyed by (remaining, bin id).
int64_t best_fit_decreasing(const int64_t* lengths, int64_t n, int64_t capacity, int64_t* bin_offsets,
                            int64_t* bin_items);

}  // namespace mth
