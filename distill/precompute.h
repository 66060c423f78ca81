// `bonsai distill precompute`: run a teacher once over the training data and store the top-k of its
// tempered logits for every token (distill/topk_store.h), so distillation can train from the file
// instead of running the teacher each step.
#pragma once

#include <string>
#include <vector>

#include "core/config.h"

namespace bonsai {

struct PrecomputeConfig {
  std::string teacher;
  std::string teacher_dtype = "bf16";
  std::vector<std::string> data;  // bonsai data pack outputs (the same the training run will read)
  std::string tokenizer;          // default: the teacher's
  int64_t seq_len = 512;          // must equal the training run's train.seq_len
  int64_t batch = 4;
  int64_t k = 64;
  double temperature = 1.0;       // must equal the training run's loss.temperature
  int64_t max_samples = 0;        // 0 = all samples of one epoch
  std::string output;             // directory; the file is output/topk.h5

  void register_keys(ConfigSchema& s);
};

int run_precompute(const PrecomputeConfig& cfg);
// What a top-k file records about its data, so training can check it reads the same samples.
std::string describe_data(uint64_t n_samples, uint64_t total_tokens, int64_t seq_len);

}  // namespace bonsai
