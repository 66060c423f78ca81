// Fused, chunked distillation loss: the student's final projection and the KD/CE loss are computed
// a chunk of tokens at a time, forward and backward together, so no full (N,V) logits tensor of
// either model is ever held. Gradients for the student's hidden states and output weight are
// produced during the forward pass (one pass over the vocabulary) and scaled in backward.
//
// Shapes: N tokens (B*T flattened), C student hidden, Ct teacher hidden, V vocab, K top-k.
//
// Divergences, with P the teacher and Q the student distribution at temperature tau:
//   fkl       KL(P || Q)                          (forward KL, Hinton/Minitron)
//   rkl       KL(Q || P)                          (reverse KL, MiniLLM)
//   jsd       beta*KL(P||M) + (1-beta)*KL(Q||M),  M = beta*P + (1-beta)*Q   (generalized JSD, GKD)
//   skew_fkl  KL(P || a*P + (1-a)*Q)              (DistiLLM skew KL, a = skew)
//   skew_rkl  KL(Q || a*Q + (1-a)*P)              (DistiLLM skew reverse KL)
// Total per token: kd_weight * w_kd * KD + (1 - kd_weight) * CE(labels), averaged over tokens whose
// label is not ignore_index; w_kd = tau^2 when scale_by_t2 (keeps gradient size independent of tau).
//
// Offline (top-k) teachers: only the top-k logits and the teacher's log-partition (logsumexp at the
// stored temperature) are kept, so the teacher's probabilities of the top-k tokens are exact and the
// rest of its mass is one "tail" bucket. The loss is the divergence between the (K+1)-bucket
// coarsenings of P and Q (Q's tail is the student's mass outside the top-k). With K = V it is the
// full loss; it never needs the teacher's full distribution.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

namespace bonsai {

struct KdLossOptions {
  std::string kind = "fkl";  // fkl, rkl, jsd, skew_fkl, skew_rkl
  double temperature = 1.0;
  double beta = 0.5;         // jsd
  double skew = 0.1;         // skew_fkl / skew_rkl
  double kd_weight = 1.0;    // 1 = pure KD, 0 = pure CE
  bool scale_by_t2 = true;
  int64_t chunk_tokens = 256;  // 256 x 128k-vocab fp32 = 128 MB per (c,V) temporary
  int64_t ignore_index = -100;
  void validate() const;
};

// One teacher, online: its final hidden states and output weight (logits computed per chunk).
struct OnlineTeacher {
  torch::Tensor hidden;  // (N,Ct), any float dtype, no grad
  torch::Tensor weight;  // (V_t,Ct)
  double weight_in_mix = 1.0;
};

// One teacher, offline: precomputed top-k logits (at `temperature`, already divided by it) and the
// log-partition of the full tempered distribution.
struct TopKTeacher {
  torch::Tensor values;   // (N,K) float: top-k tempered logits
  torch::Tensor indices;  // (N,K) int64
  torch::Tensor lse;      // (N,) float: logsumexp of all tempered logits
  double weight_in_mix = 1.0;
};

struct KdLossParts {
  torch::Tensor loss;  // scalar, differentiable w.r.t. student hidden and weight
  double kd = 0, ce = 0;  // the two parts (token means), for logging
  int64_t tokens = 0;     // tokens counted
};

// hidden (N,C) and weight (V_s,C) of the student; labels (N,) int64. Teachers' vocabularies may be
// larger than the student's only by padding: the first min(V_s, V_t) ids are used.
KdLossParts fused_kd_loss(const torch::Tensor& hidden, const torch::Tensor& weight, const torch::Tensor& labels,
                          const std::vector<OnlineTeacher>& online, const std::vector<TopKTeacher>& offline,
                          const KdLossOptions& opt);

// The same loss computed the plain way (full fp32 logits, autograd through log_softmax), for tests
// and for checking the fused path; exactly the definitions above.
torch::Tensor reference_kd_loss(const torch::Tensor& hidden, const torch::Tensor& weight, const torch::Tensor& labels,
                                const std::vector<OnlineTeacher>& online, const std::vector<TopKTeacher>& offline,
                                const KdLossOptions& opt);

// Top-k of tempered teacher logits (N,V) -> a TopKTeacher (what `distill precompute` stores).
TopKTeacher topk_from_logits(const torch::Tensor& logits, int64_t k, double temperature);

}  // namespace bonsai
