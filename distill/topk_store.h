// Offline teacher distributions: the top-k tempered logits of every token of every training sample,
// plus the log-partition, in one HDF5 file written by `bonsai distill precompute` and read by the
// distillation recipe instead of running the teacher.
//
// Format "topk-v1" (topk.h5):
//   attributes  bonsai_format "topk-v1", teacher, tokenizer_identity, data (JSON: shard paths and
//               token count of the data it was computed on), temperature (f64), k, seq_len,
//               n_samples (int64)
//   values      float16 [n_samples, T, k]   top-k logits / temperature, descending
//   indices     uint32  [n_samples, T, k]   their token ids
//   lse         float32 [n_samples, T]      logsumexp of all logits / temperature
//   written     uint8   [n_samples]         1 once the sample is stored (a reader refuses holes)
// Sample s is the loader's sample s (data/loader.h: with the same data and seq_len, the pretraining
// stream cut into T+1-token rows), so any shuffle, rank split or resume finds its teacher rows by id.
// Storage per token: 6k + 4 bytes (k=64: 388 bytes). Chunked one sample per chunk, uncompressed
// (fp16 logits do not compress); written to "<path>.tmp.<pid>" and renamed when complete.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace bonsai {

struct TopKMeta {
  std::string teacher, tokenizer_identity, data_json;
  double temperature = 1.0;
  int64_t k = 0, seq_len = 0, n_samples = 0;
};

class TopKWriter {
 public:
  TopKWriter(const std::string& path, const TopKMeta& meta);
  ~TopKWriter();  // without commit(): the temp file is removed
  // values/indices are (T,k) row-major, lse (T,).
  void write(uint64_t sample, const uint16_t* values_f16, const uint32_t* indices, const float* lse);
  void commit();
  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

class TopKReader {
 public:
  explicit TopKReader(const std::string& path);
  ~TopKReader();
  const TopKMeta& meta() const;
  // Reads sample `s` into (T,k) / (T,) buffers. Throws naming the file if it was never written.
  void read(uint64_t sample, uint16_t* values_f16, uint32_t* indices, float* lse) const;
  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace bonsai
