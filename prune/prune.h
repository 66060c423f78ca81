// Structured pruning of a Llama: which units to keep (from importance scores) and slicing the
// teacher's weights into a student where every layer has the same shape (an HF checkpoint).
//
// Units and how they are chosen:
//   layers         by Block Importance, a contiguous block, the calibration-loss increase, or random
//   hidden         channels of the residual stream, ranked by the normed activations summed over the
//                  kept layers' attn/ffn norms and the final norm; sliced out of the embedding, every
//                  norm, every matrix's input or output, and lm_head
//   kv heads       whole GQA groups (the KV head with the query heads it serves), ranked by the sum of
//                  their query heads' scores
//   query heads    ranked *within* their group, so every kept group keeps the same number; scored
//                  by their contribution through o_proj (default) or their attn_out (Minitron), see
//                  importance.h
//   head_dim       q/k keep every s-th RoPE pair (s = D / D'): pair i of the HF rotate_half layout is
//                  dims (i, i + D/2) with inverse frequency theta^(-2i/D), and pairs i = s*j have
//                  theta^(-2sj/D) = theta^(-2j/D'), a standard RoPE of width D' with the same theta
//                  (llama3 scaling too: it maps each frequency on its own). v has no RoPE: its dims
//                  are chosen per KV head by the attn_out channel scores of the kept heads it serves
//                  (importance, not the q/k indices), and o_proj's columns follow them.
//   MLP neurons    ranked by their activation score
// Kept indices are sorted, so surviving units keep their order.
//
// Rescaling (so that removing units that carry nothing is exact, and removing others is a first-
// order correction rather than a change of scale):
//   RMSNorm        with C' of C channels, rms over the kept channels differs from rms over all. Each
//                  norm weight is multiplied by sqrt(C/C' * r), r = the fraction of that norm's input
//                  energy (calibration mean squares) in the kept channels, and rms_norm_eps by C/C'.
//   q (head_dim)   SDPA scales scores by 1/sqrt(D') instead of 1/sqrt(D): q rows are multiplied by
//                  sqrt(D'/D), which is exact when the removed dims carry nothing. On SmolLM2-135M
//                  (64 -> 32, no retraining, WikiText-2 perplexity over 24 windows, a transformers
//                  experiment) it was also the best factor tried: sqrt(1/2) 1808, 1 2076, sqrt(2)
//                  2916; a calibrated sqrt(D'/D) / (kept share of sum_pairs sqrt(E q^2 E k^2)) was
//                  worse still in bonsai (4395 against 1968 for 1, 32 windows).
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"
#include "prune/importance.h"

namespace bonsai {

struct PruneTarget {  // 0 = the teacher's
  int64_t hidden_size = 0, intermediate_size = 0, num_layers = 0;
  int64_t num_heads = 0, num_kv_heads = 0, head_dim = 0;
  std::string tie = "keep";  // keep | tied | untied: the student's tie_word_embeddings
};

// Checks that need no teacher: sizes not negative, heads a multiple of kv heads, head_dim even.
// Errors name the config key ("target.num_heads").
void check_target(const PruneTarget& t);
// The student's config: the teacher's with the target sizes. Throws, naming the key, when the
// target cannot be cut out of this teacher (larger than it, a group size larger than the teacher's,
// a head_dim that does not divide the teacher's into RoPE pairs, ...).
LlamaConfig student_config(const LlamaConfig& teacher, const PruneTarget& t);

// Scores every unit is ranked by (fp64, CPU); the same layout as CalibStats.
struct UnitScores {
  std::vector<torch::Tensor> head;          // [L] (H)
  std::vector<torch::Tensor> attn_channel;  // [L] (H*D): for the v dims kept when head_dim shrinks
  std::vector<torch::Tensor> neuron;        // [L] (I)
  std::vector<torch::Tensor> hidden_site;   // [2L+1] (C): attn/ffn norm sites, then the final norm
  torch::Tensor hidden(const std::vector<int64_t>& layers) const;  // summed over those layers + final
};
// heads: "contribution" (through o_proj) or "attn_out" (Minitron); see importance.h.
UnitScores activation_scores(const CalibStats& s, const std::string& heads = "contribution");
// Baseline: the L2 norm of every weight attached to the unit (norm weights folded into the matrices
// they feed; a KV head's k/v rows shared out among its query heads).
UnitScores magnitude_scores(const LlamaConfig& c, const std::map<std::string, torch::Tensor>& tensors);
// Baseline: uniform random scores from a seeded generator.
UnitScores random_scores(const LlamaConfig& c, uint64_t seed);

// The `keep` teacher layers to keep, ascending. method: block (drop the lowest Block Importance),
// contiguous (drop the block of L - keep layers whose output is most similar to its input; needs
// stats.span == L - keep), loss (drop the smallest loss increases; needs stats.drop_loss), random.
std::vector<int64_t> select_layers(const std::string& method, const CalibStats& stats, int64_t keep, uint64_t seed);

struct PrunePlan {
  LlamaConfig teacher, student;
  std::vector<int64_t> layers;   // student layer i is teacher layer layers[i]
  std::vector<int64_t> hidden;   // kept hidden channels
  std::vector<int64_t> qk_dims;  // kept dims within every q/k head (new dim j <- old qk_dims[j])
  // Per student layer:
  std::vector<std::vector<int64_t>> kv_heads;               // kept teacher KV heads
  std::vector<std::vector<int64_t>> heads;                  // kept teacher query heads, group by group
  std::vector<std::vector<std::vector<int64_t>>> v_dims;    // per kept KV head: kept v dims
  std::vector<std::vector<int64_t>> neurons;                // kept MLP neurons
  std::vector<double> norm_scale;                           // [2L'+1] norm-weight multipliers
  double q_scale = 1.0;                                     // q-row multiplier (head_dim pruning)
};

struct PlanOptions {
  bool norm_rescale = true;  // see the header comment; false: plain slicing
  bool q_rescale = true;     // q rows x sqrt(D'/D) when head_dim shrinks
};

// Selects every unit (see the header comment). `stats` supplies the mean squares for rescaling (a
// null pointer means no rescaling).
PrunePlan make_plan(const LlamaConfig& teacher, const LlamaConfig& student, const std::vector<int64_t>& layers,
                    const UnitScores& scores, const CalibStats* stats, const PlanOptions& opt = {});

// The student's tensors (HF names), new tensors in the teacher's dtype. tie_from says how a tied
// student's matrix is made from an untied teacher: embed | lm_head | mean.
std::map<std::string, torch::Tensor> apply_plan(const PrunePlan& plan, const std::map<std::string, torch::Tensor>& teacher,
                                                const std::string& tie_from = "embed");

// The embedding (and an untied student's lm_head) of apply_plan's output alone: for trying the
// tie_from options on one sliced body. apply_plan and this give a teacher read from an mmap'ed
// checkpoint its pages back as they go (model/checkpoint.h, release_file_pages), so that slicing
// keeps about one teacher layer resident.
std::map<std::string, torch::Tensor> apply_plan_embeddings(const PrunePlan& plan,
                                                           const std::map<std::string, torch::Tensor>& teacher,
                                                           const std::string& tie_from = "embed");

// The kept layers renumbered 0..n-1 (tensors shared, not copied) and the config with n layers.
std::pair<LlamaConfig, std::map<std::string, torch::Tensor>> keep_layers(const LlamaConfig& c,
                                                                         const std::map<std::string, torch::Tensor>& tensors,
                                                                         const std::vector<int64_t>& kept);

// The q/k dims kept when head_dim D becomes Dp: RoPE pairs i = s*j (s = D/Dp), first halves then
// second halves, as the rotate_half layout wants.
std::vector<int64_t> rope_kept_dims(int64_t D, int64_t Dp);

// Parameter-budget search: targets on a grid (hidden and MLP width at 1, 7/8, ..., 1/4 of the
// teacher's, rounded down to a multiple of 64 (8 for widths under 2048); query heads per group at 1,
// 3/4, 1/2 of the teacher's; shapes transformers refuses, hidden % heads != 0, left out) with the
// sizes `fixed` gives held, whose parameter count lies in
// [params * (1 - tolerance), params]; the `max_candidates` closest to the budget first. Throws
// when none does, naming the nearest shapes.
std::vector<PruneTarget> budget_candidates(const LlamaConfig& teacher, const PruneTarget& fixed, int64_t params,
                                           double tolerance, int64_t max_candidates);
// "hidden 576, MLP 1536, 30 layers, 9/3 heads, head_dim 64, tied" (for messages and reports).
std::string shape_summary(const LlamaConfig& c);
// "70M", "3.2B", "1.5e9", "123456789" -> a parameter count (throws naming `what`).
int64_t parse_param_count(const std::string& s, const std::string& what);

}  // namespace bonsai
