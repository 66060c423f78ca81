#include "train/train_config.h"

#include "core/error.h"

namespace bonsai {

void TrainConfig::register_keys(ConfigSchema& s, const std::string& p) {
  s.add(p + "max_steps", &max_steps, "optimizer steps");
  s.add(p + "micro_batch", &micro_batch, "sequences per forward/backward, per rank");
  s.add(p + "grad_accum", &grad_accum, "micro-batches accumulated per optimizer step");
  s.add(p + "seq_len", &seq_len, "tokens per sequence");
  s.add(p + "lr", &lr, "peak learning rate");
  s.add(p + "min_lr_ratio", &min_lr_ratio, "final lr as a fraction of the peak");
  s.add_choice(p + "schedule", &schedule, {"cosine", "linear", "wsd", "constant"}, "lr schedule after warmup");
  s.add(p + "warmup_steps", &warmup_steps, "linear warmup steps");
  s.add(p + "decay_fraction", &decay_fraction, "wsd: fraction of steps in the final decay");
  s.add(p + "weight_decay", &weight_decay, "decoupled weight decay (never on norms)");
  s.add(p + "decay_embeddings", &decay_embeddings, "apply weight decay to embeddings/output too");
  s.add(p + "beta1", &beta1, "Adam beta1");
  s.add(p + "beta2", &beta2, "Adam beta2");
  s.add(p + "eps", &eps, "Adam epsilon");
  s.add(p + "grad_clip", &grad_clip, "global gradient-norm clip (0 = off)");
  s.add_choice(p + "compute_dtype", &compute_dtype, {"f32", "bf16"}, "forward/backward compute dtype");
  s.add_choice(p + "device", &device, {"auto", "cpu", "cuda"},
               "where to train: auto = the GPU LOCAL_RANK when CUDA is available, else the CPU");
  s.add(p + "activation_checkpointing", &activation_checkpointing, "recompute each layer in backward");
  s.add(p + "seed", &seed, "seed for initialization and data order");
  s.add(p + "log_every", &log_every, "log every N steps");
  s.add(p + "eval_every", &eval_every, "validate every N steps (0 = never)");
  s.add(p + "eval_batches", &eval_batches, "validation batches");
  s.add(p + "save_every", &save_every, "checkpoint every N steps (0 = only at the end)");
  s.add(p + "keep_last", &keep_last, "checkpoints kept");
  s.add(p + "stop_after", &stop_after, "save and exit after this step, resumable (0 = run to max_steps)");
  s.add_choice(p + "on_nan", &on_nan, {"stop", "skip"}, "a NaN/Inf loss stops the run, or skips the step");
}

void TrainConfig::validate() const {
  auto pos = [](const char* k, int64_t v) {
    if (v <= 0) throw Error("key 'train." + std::string(k) + "' must be positive, got " + std::to_string(v));
  };
  pos("max_steps", max_steps);
  pos("micro_batch", micro_batch);
  pos("grad_accum", grad_accum);
  pos("seq_len", seq_len);
  pos("log_every", log_every);
  pos("keep_last", keep_last);
  if (lr <= 0) throw Error("key 'train.lr' must be positive");
  if (min_lr_ratio < 0 || min_lr_ratio > 1) throw Error("key 'train.min_lr_ratio' must be in [0, 1]");
  if (warmup_steps < 0 || warmup_steps > max_steps)
    throw Error("key 'train.warmup_steps' (" + std::to_string(warmup_steps) + ") must be in [0, max_steps]");
  if (decay_fraction <= 0 || decay_fraction > 1) throw Error("key 'train.decay_fraction' must be in (0, 1]");
  if (grad_clip < 0) throw Error("key 'train.grad_clip' must be >= 0");
}

}  // namespace bonsai
