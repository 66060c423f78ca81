// AdamW with parameter groups (decay on matrices; never on norms; embeddings/output only when
// asked), the learning-rate schedules, and global-norm gradient clipping.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "train/train_config.h"

namespace bonsai {

// A tensor the optimizer updates: a parameter, or (ZeRO) a 1-D view of part of one; `dim` is the
// parameter's own rank (norms, dim < 2, never decay).
struct OptTensor {
  std::string name;
  torch::Tensor value;
  int64_t dim;
};
std::unique_ptr<torch::optim::AdamW> make_adamw(const std::vector<OptTensor>& tensors, const TrainConfig& cfg);
std::unique_ptr<torch::optim::AdamW> make_adamw(torch::nn::Module& model, const TrainConfig& cfg);
// Bytes of optimizer state (Adam moments) currently held.
int64_t optimizer_state_bytes(torch::optim::Optimizer& opt);
// Learning rate at optimizer step `step` (0-based): linear warmup to cfg.lr, then the schedule down
// to cfg.lr * cfg.min_lr_ratio at step max_steps - 1.
double lr_at(int64_t step, const TrainConfig& cfg);
void set_lr(torch::optim::Optimizer& opt, double lr);
// Clips the global L2 norm of all gradients to `max_norm` (0 = only measure). Returns the norm
// before clipping (fp32 accumulation; NaN/Inf propagate so the caller can detect them).
double clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm);

}  // namespace bonsai
