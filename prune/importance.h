// Calibration statistics for structured pruning (Minitron, arXiv 2407.14679 / 2408.11796): the
// teacher runs over calibration sequences without grad and the Llama trace hook feeds every named
// activation to running accumulators; no activation outlives its batch.
//
// Activation score of a channel c (attention-output channel, MLP neuron, normed hidden channel):
//     score_c = sqrt( sum over sequences b of ( mean over tokens t of |x[b,t,c]| )^2 )
// i.e. mean over the sequence, then L2 over the batch. Minitron's paper compares (batch, sequence)
// aggregations (mean / L2 / variance); NVIDIA Model Optimizer's minitron pruner accumulates exactly
// this one (sum over the batch of the squared sequence mean of |x|, square root at the end). Why it
// suits pruning: the sequence mean asks "how much does this
// unit contribute to a typical token of this text" (a single outlier token cannot dominate), and the
// L2 across sequences then favours units that are strongly used by *some* sequences over units
// that are weakly used by all (a topic-specific head survives). Accumulating sum_b (mean_t |x|)^2
// is exact under any batching, so the result does not depend on calib.batch_size.
//
// Attention heads get two scores. Minitron's is the L2 norm of the head's attn_out channel scores
// (its output before o_proj). The second, the default for ranking heads, is the head's contribution
// to the residual stream: y_h = o_proj[:, head h] . attn_out_h, scored as mean over tokens of
// ||y_h||_2, then L2 over sequences. On SmolLM2-135M (3 query heads per KV head, keeping 2 in
// every group, no retraining; WikiText-2 perplexity over 24 windows of 256 tokens, teacher 39.4,
// in a transformers experiment that bonsai's own runs agree with) the attn_out score chose worse
// heads than random selection (956 vs 501) while the contribution chose better ones (218): a head
// that attends to one token (an attention sink) outputs that token's value vector, large before
// o_proj but often projected to little, and attn_out ignores what o_proj does with it.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "model/llama.h"

namespace bonsai {

struct CalibStats {
  int64_t num_layers = 0;
  int64_t sequences = 0, tokens = 0;
  double loss = 0;  // the teacher's mean next-token cross-entropy on the calibration tokens
  uint64_t data_hash = 0;  // batches_hash of the calibration batches (says whether `loss` is reusable)

  // Activation scores (fp64, CPU), per layer unless noted.
  std::vector<torch::Tensor> attn_channel;  // (H*D): attn_out channels (head-major), before o_proj
  std::vector<torch::Tensor> head_contrib;  // (H): each head's contribution through o_proj (above)
  std::vector<torch::Tensor> neuron;        // (I): ffn_act = silu(gate) * up
  std::vector<torch::Tensor> norm_out;      // [2L+1] (C): site 2l attn_norm, 2l+1 ffn_norm, 2L final_norm
  // Mean squares over calibration tokens of each RMSNorm's *input*, per channel (for rescaling the
  // norms when hidden channels go, see prune.h).
  std::vector<torch::Tensor> norm_in_ms;    // [2L+1] (C)
  // Layer importance.
  torch::Tensor block_importance;  // (L): Block Importance = 1 - mean cos(layer input, layer output)
  int64_t span = 0;                // > 0: span_cos holds blocks of this many layers
  torch::Tensor span_cos;          // (L - span + 1): mean cos(input of layer s, output of layer s+span-1)
  torch::Tensor drop_loss;         // (L): calibration loss with layer l removed; undefined unless computed

  // (H): L2 norm of each head's attn_out channel scores (Minitron's head score).
  torch::Tensor head_scores(int64_t layer, int64_t head_dim) const;
  // (C): norm_out scores summed over the attn/ffn norms of `layers` and the final norm.
  torch::Tensor hidden_scores(const std::vector<int64_t>& layers) const;

  // A safetensors file (for reusing one calibration for several selections), and back. `shape`
  // identifies the teacher (vocab, hidden, intermediate, layers, heads, kv heads, head_dim); load
  // refuses a file made for another shape.
  void save(const std::string& path, const LlamaConfig& teacher) const;
  static CalibStats load(const std::string& path, const LlamaConfig& teacher);
};

struct CalibOptions {
  int64_t span = 0;          // also collect span_cos for contiguous blocks of this many layers
  int64_t loss_chunk = 1024;  // tokens per chunk of the output projection (bounds logits memory)
  // Called in every batch after layer l's forward (its weights are done with until the next batch),
  // and with -1 after the batch's output projection: the recipe gives an mmap'ed teacher's pages
  // back there (model/checkpoint.h, release_file_pages), so an 8B teacher is not 16 GB resident.
  std::function<void(int64_t layer)> layer_done;
};

// Runs `teacher` over `batches` (each (B, T+1) int64 ids: inputs [:, :T], next-token labels
// [:, 1:]) without grad and returns the statistics above.
CalibStats calibrate(Llama& teacher, const std::vector<torch::Tensor>& batches, const CalibOptions& opt);

// FNV-1a over the token ids and shapes of `batches`: identifies a calibration set.
uint64_t batches_hash(const std::vector<torch::Tensor>& batches);

struct LossSum {
  double nll = 0;
  int64_t tokens = 0;
  double mean() const { return tokens > 0 ? nll / static_cast<double>(tokens) : 0.0; }
};
// Next-token cross-entropy of one (B, T+1) batch, the output projection done `chunk` tokens at a
// time (8B: a (4096, 128256) fp32 logits block is 2 GB; chunks keep it at 0.5 GB).
LossSum lm_loss(Llama& model, const torch::Tensor& batch, int64_t chunk = 1024);
double mean_lm_loss(Llama& model, const std::vector<torch::Tensor>& batches, int64_t chunk = 1024);

// The calibration loss with each layer removed in turn (L extra passes over `batches`): the
// "loss increase when a layer is dropped" layer importance. `tensors` are the model's (shared, not
// copied, by the L-1-layer models).
torch::Tensor layer_drop_losses(const LlamaConfig& cfg, const std::map<std::string, torch::Tensor>& tensors,
                                const std::vector<torch::Tensor>& batches, torch::Device device, int64_t chunk = 1024);

}  // namespace bonsai
