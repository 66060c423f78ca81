// The `train:` section shared by every training stage (distill, train, sft, dpo): optimizer,
// schedule, batch geometry, precision, logging and checkpoint cadence. Declared once, registered in
// each stage's ConfigSchema under "train.".
#pragma once

#include <cstdint>
#include <string>

#include "core/config.h"

namespace bonsai {

struct TrainConfig {
  int64_t max_steps = 100;        // optimizer steps
  int64_t micro_batch = 4;        // sequences per forward/backward (per rank)
  int64_t grad_accum = 1;         // micro-batches per optimizer step
  int64_t seq_len = 512;          // tokens per sequence
  double lr = 3e-4;
  double min_lr_ratio = 0.1;      // final lr = lr * min_lr_ratio (cosine, linear, wsd)
  std::string schedule = "cosine";  // cosine | linear | wsd | constant (all after linear warmup)
  int64_t warmup_steps = 10;
  double decay_fraction = 0.2;    // wsd: the last fraction of steps decays linearly
  double weight_decay = 0.1;      // decoupled (AdamW); never on norms; on embeddings only if asked
  bool decay_embeddings = false;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double grad_clip = 1.0;         // global L2 norm; 0 = off
  std::string compute_dtype = "f32";  // f32 | bf16 (autocast; master weights and Adam state stay fp32)
  std::string device = "auto";  // auto (cuda:LOCAL_RANK when a GPU is visible, else cpu) | cpu | cuda
  bool activation_checkpointing = false;  // recompute each layer in backward
  int64_t seed = 0;
  int64_t log_every = 1;
  int64_t eval_every = 0;         // 0 = never; else validation every N steps (and at the end)
  int64_t eval_batches = 8;
  int64_t save_every = 0;         // 0 = only at the end
  int64_t keep_last = 2;
  int64_t stop_after = 0;         // 0 = off; else save and exit after this step (job time slices)
  std::string on_nan = "stop";    // stop | skip

  void register_keys(ConfigSchema& s, const std::string& prefix = "train.");
  void validate() const;  // throws bonsai::Error naming the key
};

}  // namespace bonsai
