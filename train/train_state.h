// Training checkpoints: everything a run needs to continue bit-identically.
//
//   OUT/checkpoints/step-00000100/
//     model.safetensors + config.json   the trainable model, fp32 master weights (a valid HF dir)
//     optimizer.pt                       AdamW state (torch serialization)
//     trainer_state.json                 step, tokens seen, loader state, RNG state, the resolved config
//   OUT/checkpoints/latest              name of the newest complete checkpoint
//
// Each checkpoint is written as step-N.partial and renamed when complete; `latest` is rewritten
// atomically after that, so a crash at any point leaves the previous checkpoint usable.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "model/llama.h"

namespace bonsai {

struct TrainState {
  int64_t step = 0;           // optimizer steps completed
  int64_t tokens_seen = 0;
  std::string loader_state;   // LoaderState::to_json()
  std::string rng_state;      // the CPU generator's state, hex
  nlohmann::json extra;       // stage-specific (e.g. the resolved config, best val loss)
};

// Writes a checkpoint under run_dir/checkpoints and prunes all but the newest `keep_last`.
std::string save_train_checkpoint(const std::string& run_dir, Llama& model, torch::optim::Optimizer& opt,
                                  const TrainState& st, int64_t keep_last);
// The newest complete checkpoint directory, if any.
std::optional<std::string> latest_checkpoint(const std::string& run_dir);
// Restores model weights (copied into the existing parameters), optimizer state and TrainState.
// With load_optimizer false the optimizer is left alone (ZeRO-1 ranks load their own shard).
TrainState load_train_checkpoint(const std::string& ckpt_dir, Llama& model, torch::optim::Optimizer& opt,
                                 bool load_optimizer = true);

std::string rng_state_hex();
void set_rng_state_hex(const std::string& hex, const std::string& where);

}  // namespace bonsai
