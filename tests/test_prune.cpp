// Structured pruning (prune/): on the tiny golden HF models (random weights, random calibration ids)
// units made to contribute nothing must be the ones removed, with the output unchanged; pruning to
// the teacher's own shape is the identity; GQA groups and RoPE frequencies survive head and
// head_dim pruning; the written checkpoint loads in transformers with the same logits.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>

#include "core/error.h"
#include "model/checkpoint.h"
#include "prune/prune.h"
#include "prune/recipe.h"
#include "test_util.h"

namespace bonsai {
namespace {

using Tensors = std::map<std::string, torch::Tensor>;
using ::testing::HasSubstr;

double rel_err(const torch::Tensor& a, const torch::Tensor& ref) {
  auto d = (a.to(torch::kDouble) - ref.to(torch::kDouble)).norm();
  return (d / ref.to(torch::kDouble).norm()).item<double>();
}

struct Model {
  LlamaConfig cfg;
  Tensors t;
};

// A golden model with writable (cloned) fp32 tensors.
Model golden(const std::string& root, const std::string& name) {
  Checkpoint ck = load_checkpoint(root + "/" + name, torch::kFloat);
  Model m{ck.config, {}};
  for (const auto& [k, v] : ck.tensors) m.t[k] = v.clone();
  return m;
}

Llama build(const LlamaConfig& c, const Tensors& t) {
  Llama m(c);
  m->load_state(t, "test model");
  m->eval();
  return m;
}

torch::Tensor logits(Llama& m, const torch::Tensor& ids) {
  torch::NoGradGuard ng;
  return m->forward(ids).logits;
}

std::vector<torch::Tensor> random_batches(int64_t vocab, int64_t n, int64_t B, int64_t T, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  std::vector<torch::Tensor> out;
  for (int64_t i = 0; i < n; ++i) out.push_back(at::randint(0, vocab, {B, T + 1}, gen, torch::kLong));
  return out;
}

torch::Tensor test_ids(const Model& m, int64_t T = 19) { return random_batches(m.cfg.vocab_size, 1, 2, T - 1, 99)[0]; }

struct Pruned {
  PrunePlan plan;
  Tensors t;
  Llama model{nullptr};
};

// Calibrate on random ids, rank by activation importance, select layers by `depth`, slice.
Pruned prune(const Model& m, const PruneTarget& target, const std::string& depth = "block", PlanOptions opt = {},
             const std::string& tie_from = "embed") {
  Llama teacher = build(m.cfg, m.t);
  LlamaConfig s = student_config(m.cfg, target);
  CalibOptions co;
  if (depth == "contiguous") co.span = m.cfg.num_hidden_layers - s.num_hidden_layers;
  CalibStats stats = calibrate(teacher, random_batches(m.cfg.vocab_size, 3, 2, 24, 7), co);
  auto layers = select_layers(depth, stats, s.num_hidden_layers, 0);
  Pruned p;
  p.plan = make_plan(m.cfg, s, layers, activation_scores(stats), &stats, opt);
  p.t = apply_plan(p.plan, m.t, tie_from);
  p.model = build(p.plan.student, p.t);
  return p;
}

// `n` distinct indices in [0, size) from a seeded permutation, ascending; and the rest.
std::pair<std::vector<int64_t>, std::vector<int64_t>> split(int64_t size, int64_t n, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  torch::Tensor perm = at::randperm(size, gen, torch::kLong);
  std::vector<int64_t> all(perm.data_ptr<int64_t>(), perm.data_ptr<int64_t>() + size);
  std::vector<int64_t> a(all.begin(), all.begin() + n), b(all.begin() + n, all.end());
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  return {a, b};
}

torch::Tensor idx(const std::vector<int64_t>& v) { return torch::tensor(v, torch::kLong); }

std::string L(int64_t l, const std::string& rest) { return "model.layers." + std::to_string(l) + "." + rest; }

class PruneGolden : public ::testing::TestWithParam<const char*> {};

TEST_P(PruneGolden, SameShapeReproducesTheTeacherExactly) {
  BONSAI_REQUIRE_DIR("BONSAI_GOLDEN_DIR", root);
  Model m = golden(root, GetParam());
  Pruned p = prune(m, PruneTarget{});
  for (const auto& [name, t] : p.t) EXPECT_TRUE(torch::equal(t, m.t.at(name))) << name;
  Llama teacher = build(m.cfg, m.t);
  torch::Tensor ids = test_ids(m);
  EXPECT_TRUE(torch::equal(logits(p.model, ids), logits(teacher, ids)));
  EXPECT_EQ(p.plan.student, m.cfg);
}

// Hidden channels that are zero in the embedding, every norm, every matrix's input and output:
// the residual stream never carries them. They must be the ones removed, and with the RMSNorm
// rescale (weights x sqrt(C/C'), eps x C/C') removing them changes nothing.
TEST_P(PruneGolden, ZeroedHiddenChannelsAreRemovedAndTheOutputIsUnchanged) {
  BONSAI_REQUIRE_DIR("BONSAI_GOLDEN_DIR", root);
  Model m = golden(root, GetParam());
  const int64_t C = m.cfg.hidden_size, Cp = C * 3 / 4;
  auto [zero, keep] = split(C, C - Cp, 11);
  torch::Tensor z = idx(zero);
  for (auto& [name, t] : m.t) {
    if (t.dim() == 1) t.index_fill_(0, z, 0.0);  // norms
    else if (name.find("o_proj") != std::string::npos || name.find("down_proj") != std::string::npos) t.index_fill_(0, z, 0.0);
    else t.index_fill_(1, z, 0.0);  // embedding, lm_head, q/k/v/gate/up read the hidden state
  }
  PruneTarget target;
  target.hidden_size = Cp;
  Pruned p = prune(m, target);
  EXPECT_EQ(p.plan.hidden, keep);
  Llama teacher = build(m.cfg, m.t);
  torch::Tensor ids = test_ids(m);
  double err = rel_err(logits(p.model, ids), logits(teacher, ids));
  std::printf("[%s] hidden %lld -> %lld: relative error %.3e\n", GetParam(), (long long)C, (long long)Cp, err);
  EXPECT_LE(err, 1e-5);
  // Plain slicing (no rescale) changes every norm's rms by sqrt(C/C'): the rescale is what makes it exact.
  Pruned plain = prune(m, target, "block", PlanOptions{false, true});
  EXPECT_GT(rel_err(logits(plain.model, ids), logits(teacher, ids)), 1e-3);
}

// Neurons whose up_proj row is zero have ffn_act = silu(gate) * 0 = 0 exactly.
TEST_P(PruneGolden, ZeroedNeuronsAreRemovedAndTheOutputIsUnchanged) {
  BONSAI_REQUIRE_DIR("BONSAI_GOLDEN_DIR", root);
  Model m = golden(root, GetParam());
  const int64_t I = m.cfg.intermediate_size, Ip = I * 3 / 4;
  std::vector<std::vector<int64_t>> keep;
  for (int64_t l = 0; l < m.cfg.num_hidden_layers; ++l) {
    auto [zero, k] = split(I, I - Ip, 20 + l);
    m.t.at(L(l, "mlp.up_proj.weight")).index_fill_(0, idx(zero), 0.0);
    keep.push_back(k);
  }
  PruneTarget target;
  target.intermediate_size = Ip;
  Pruned p = prune(m, target);
  EXPECT_EQ(p.plan.neurons, keep);
  Llama teacher = build(m.cfg, m.t);
  torch::Tensor ids = test_ids(m);
  EXPECT_LE(rel_err(logits(p.model, ids), logits(teacher, ids)), 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Prune, PruneGolden, ::testing::Values("gqa_untied", "headdim_tied", "llama3_long"));

// A KV head whose v rows are zero gives zero attn_out for every query head of its group: the whole
// group must go (gqa_untied: 4 query heads in 2 groups).
TEST(Prune, ZeroedKvGroupIsRemovedWhole) {
  BONSAI_REQUIRE_DIR("BONSAI_GOLDEN_DIR", root);
  Model m = golden(root, "gqa_untied");
  const int64_t D = m.cfg.head_dim;
  for (int64_t l = 0; l < m.cfg.num_hidden_layers; ++l) m.t.at(L(l, "self_attn.v_proj.weight")).narrow(0, D, D).zero_();
  PruneTarget target;
  target.num_kv_heads = 1;
  Pruned p = prune(m, target);
  EXPECT_EQ(p.plan.student.num_attention_heads, 2);
  for (size_t i = 0; i < p.plan.layers.size(); ++i) {
    EXPECT_EQ(p.plan.kv_heads[i], std::vector<int64_t>({0}));
    EXPECT_EQ(p.plan.heads[i], std::vector<int64_t>({0, 1}));
  }
  Llama teacher = build(m.cfg, m.t);
  torch::Tensor ids = test_ids(m);
  EXPECT_LE(rel_err(logits(p.model, ids), logits(teacher, ids)), 1e-6);
}

// Multi-head attention (llama3_long: 4 heads, 4 KV heads): zeroed heads are the pruned ones.
TEST(Prune, ZeroedHeadsAreRemoved) {
  BONSAI_REQUIRE_DIR("BONSAI_GOLDEN_DIR", root);
  Model m = golden(root, "llama3_long");
  const int64_t D = m.cfg.head_dim;
  std::vector<std::vector<int64_t>> keep = {{0, 2}, {1, 3}};
  for (int64_t l = 0; l < 2; ++l)
    for (int64_t h = 0; h < 4; ++h)
      if (std::find(keep[l].begin(), keep[l].end(), h) == keep[l].end())
        m.t.at(L(l, "self_attn.v_proj.weight")).narrow(0, h * D, D).zero_();
  PruneTarget target;
  target.num_heads = 2, target.num_kv_heads = 2;
  Pruned p = prune(m, target);
  EXPECT_EQ(p.plan.heads, keep);
  Llama teacher = build(m.cfg, m.t);
  torch::Tensor ids = test_ids(m);
  EXPECT_LE(rel_err(logits(p.model, ids), logits(teacher, ids)), 1e-6);
}

// Query heads whose o_proj columns are zero add nothing to the residual stream: their contribution
// score is 0, so they are the ones removed within their KV groups (gqa_untied: heads 1 and 2 of
// groups {0, 1} and {2, 3}), exactly.
TEST(Prune, QueryHeadsThatContributeNothingAreRemovedWithinTheirGroups) {
  BONSAI_REQUIRE_DIR("BONSAI_GOLDEN_DIR", root);
  Model m = golden(root, "gqa_untied");
  const int64_t D = m.cfg.head_dim;
  for (int64_t l = 0; l < 2; ++l)
    for (int64_t h : {1, 2}) m.t.at(L(l, "self_attn.o_proj.weight")).narrow(1, h * D, D).zero_();
  PruneTarget target;
  target.num_heads = 2;
  Pruned p = prune(m, target);
  for (int64_t l = 0; l < 2; ++l) {
    EXPECT_EQ(p.plan.kv_heads[l], std::vector<int64_t>({0, 1}));
    EXPECT_EQ(p.plan.heads[l], std::vector<int64_t>({0, 3}));
  }
  Llama teacher = build(m.cfg, m.t);
  torch::Tensor ids = test_ids(m);
  EXPECT_LE(rel_err(logits(p.model, ids), logits(teacher, ids)), 1e-6);
}

// head_dim D -> D/2 with q/k zero on the RoPE pairs that are not kept (odd pairs) and v zero on a
// different random half of the dims of each KV head: q/k keep the even pairs, v keeps its non-zero
// dims (chosen by importance), and the logits are unchanged (q rescaled by sqrt(D'/D) keeps the
// softmax temperature). llama3_long runs 300 positions with llama3-scaled frequencies.
class PruneHeadDim : public ::testing::TestWithParam<const char*> {};

TEST_P(PruneHeadDim, ZeroedDimsAreRemovedAndTheOutputIsUnchanged) {
  BONSAI_REQUIRE_DIR("BONSAI_GOLDEN_DIR", root);
  Model m = golden(root, GetParam());
  const int64_t D = m.cfg.head_dim, half = D / 2, H = m.cfg.num_attention_heads, Hkv = m.cfg.num_key_value_heads;
  std::vector<int64_t> odd_pair_dims;
  for (int64_t i = 1; i < half; i += 2) odd_pair_dims.push_back(i), odd_pair_dims.push_back(i + half);
  std::vector<std::vector<std::vector<int64_t>>> v_keep(2);
  for (int64_t l = 0; l < 2; ++l) {
    for (int64_t h = 0; h < H; ++h)
      for (int64_t d : odd_pair_dims) m.t.at(L(l, "self_attn.q_proj.weight"))[h * D + d].zero_();
    for (int64_t g = 0; g < Hkv; ++g) {
      for (int64_t d : odd_pair_dims) m.t.at(L(l, "self_attn.k_proj.weight"))[g * D + d].zero_();
      auto [zero, keep] = split(D, half, 40 + 10 * l + g);
      for (int64_t d : zero) m.t.at(L(l, "self_attn.v_proj.weight"))[g * D + d].zero_();
      v_keep[l].push_back(keep);
    }
  }
  PruneTarget target;
  target.head_dim = half;
  Pruned p = prune(m, target);
  EXPECT_EQ(p.plan.qk_dims, rope_kept_dims(D, half));
  EXPECT_EQ(p.plan.v_dims, v_keep);
  EXPECT_DOUBLE_EQ(p.plan.q_scale, std::sqrt(0.5));
  Llama teacher = build(m.cfg, m.t);
  torch::Tensor ids = std::string(GetParam()) == "llama3_long"
                          ? load_safetensors(root + "/llama3_long/golden.safetensors").at("input_ids")
                          : test_ids(m);
  double err = rel_err(logits(p.model, ids), logits(teacher, ids));
  std::printf("[%s] head_dim %lld -> %lld over %lld positions: relative error %.3e\n", GetParam(), (long long)D,
              (long long)half, (long long)ids.size(1), err);
  EXPECT_LE(err, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Prune, PruneHeadDim, ::testing::Values("gqa_untied", "llama3_long"));

// Keeping every s-th RoPE pair is a standard RoPE of width D/s with the same theta: bit-exact,
// llama3 scaling included (Llama 3.1 8B's settings, 128 -> 64 and 32, and the golden models).
TEST(Prune, KeptRopePairsAreExactlyTheSmallerHeadsFrequencies) {
  LlamaConfig l31;
  l31.vocab_size = 128256, l31.hidden_size = 4096, l31.intermediate_size = 14336, l31.num_hidden_layers = 32;
  l31.num_attention_heads = 32, l31.num_key_value_heads = 8, l31.head_dim = 128, l31.rope_theta = 500000.0;
  l31.rope_scaling = {"llama3", 8.0, 1.0, 4.0, 8192};
  LlamaConfig plain = l31;
  plain.rope_scaling = RopeScaling{};
  plain.rope_theta = 10000.0;
  LlamaConfig golden_like = l31;  // llama3_long's: theta 5e5, original context 64
  golden_like.head_dim = 16, golden_like.rope_scaling.original_max_position_embeddings = 64;
  int checked = 0;
  for (const LlamaConfig& t : {l31, plain, golden_like}) {
    for (int64_t Dp = t.head_dim / 2; Dp >= 4 && t.head_dim % Dp == 0; Dp /= 2) {
      LlamaConfig s = t;
      s.head_dim = Dp;
      auto dims = rope_kept_dims(t.head_dim, Dp);
      std::vector<int64_t> pairs(dims.begin(), dims.begin() + Dp / 2);
      EXPECT_TRUE(torch::equal(rope_inv_freq(s), rope_inv_freq(t).index_select(0, idx(pairs))))
          << t.rope_scaling.type << " " << t.head_dim << " -> " << Dp;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 5 + 5 + 2);
  EXPECT_EQ(rope_kept_dims(8, 4), std::vector<int64_t>({0, 2, 4, 6}));
  EXPECT_EQ(rope_kept_dims(16, 4), std::vector<int64_t>({0, 4, 8, 12}));
}

// GQA: KV groups ranked by the sum of their query heads' scores, query heads within their group;
// every kept group keeps the same number, in order; q/k/v/o rows and columns follow.
TEST(Prune, QueryHeadsArePrunedWithinTheirKvGroup) {
  LlamaConfig c;
  c.vocab_size = 50, c.hidden_size = 48, c.intermediate_size = 32, c.num_hidden_layers = 2;
  c.num_attention_heads = 12, c.num_key_value_heads = 3, c.head_dim = 8;
  Llama t(c);
  t->init_random(5);
  Tensors w;
  for (const auto& p : t->named_parameters()) w[p.key()] = p.value().detach();
  UnitScores scores = random_scores(c, 3);
  PruneTarget target;
  target.num_kv_heads = 2, target.num_heads = 4;
  PrunePlan plan = make_plan(c, student_config(c, target), {0, 1}, scores, nullptr);
  Tensors out = apply_plan(plan, w);
  const int64_t D = 8, n = 4;
  for (int64_t l = 0; l < 2; ++l) {
    const torch::Tensor& head = scores.head[l];
    std::vector<double> group(3, 0.0);
    for (int64_t h = 0; h < 12; ++h) group[h / n] += head[h].item<double>();
    const int64_t worst = std::min_element(group.begin(), group.end()) - group.begin();
    std::vector<int64_t> groups;
    for (int64_t g = 0; g < 3; ++g)
      if (g != worst) groups.push_back(g);
    EXPECT_EQ(plan.kv_heads[l], groups);
    std::vector<int64_t> heads;
    for (int64_t g : groups) {
      std::vector<int64_t> members = {g * n, g * n + 1, g * n + 2, g * n + 3};
      std::sort(members.begin(), members.end(), [&](int64_t a, int64_t b) { return head[a].item<double>() > head[b].item<double>(); });
      std::vector<int64_t> top = {members[0], members[1]};
      std::sort(top.begin(), top.end());
      heads.insert(heads.end(), top.begin(), top.end());
    }
    EXPECT_EQ(plan.heads[l], heads);
    for (int64_t j = 0; j < 4; ++j) {
      const int64_t h = heads[j], g = plan.kv_heads[l][j / 2];
      EXPECT_EQ(h / n, g);  // a kept head stays with its own KV head
      EXPECT_TRUE(torch::equal(out.at(L(l, "self_attn.q_proj.weight")).narrow(0, j * D, D), w.at(L(l, "self_attn.q_proj.weight")).narrow(0, h * D, D)));
      EXPECT_TRUE(torch::equal(out.at(L(l, "self_attn.o_proj.weight")).narrow(1, j * D, D), w.at(L(l, "self_attn.o_proj.weight")).narrow(1, h * D, D)));
    }
    for (int64_t j = 0; j < 2; ++j)
      EXPECT_TRUE(torch::equal(out.at(L(l, "self_attn.k_proj.weight")).narrow(0, j * D, D),
                               w.at(L(l, "self_attn.k_proj.weight")).narrow(0, plan.kv_heads[l][j] * D, D)));
  }
  build(plan.student, out);  // every tensor has the student's shape
}

// A layer whose o_proj and down_proj are zero is the identity: Block Importance 0, dropped first,
// and the pruned model computes exactly what the teacher did. Its drop loss is the teacher's loss.
TEST(Prune, IdentityLayerIsDroppedByBlockImportanceAndLoss) {
  BONSAI_REQUIRE_DIR("BONSAI_GOLDEN_DIR", root);
  Model m = golden(root, "headdim_tied");
  m.t.at(L(1, "self_attn.o_proj.weight")).zero_();
  m.t.at(L(1, "mlp.down_proj.weight")).zero_();
  PruneTarget target;
  target.num_layers = 2;
  Pruned p = prune(m, target, "block");
  EXPECT_EQ(p.plan.layers, std::vector<int64_t>({0, 2}));
  Llama teacher = build(m.cfg, m.t);
  torch::Tensor ids = test_ids(m);
  EXPECT_TRUE(torch::equal(logits(p.model, ids), logits(teacher, ids)));

  auto calib = random_batches(m.cfg.vocab_size, 2, 2, 16, 3);
  CalibStats s = calibrate(teacher, calib, {});
  EXPECT_LT(s.block_importance[1].item<double>(), 1e-6);
  s.drop_loss = layer_drop_losses(m.cfg, m.t, calib, torch::kCPU);
  EXPECT_DOUBLE_EQ(s.drop_loss[1].item<double>(), s.loss);
  EXPECT_EQ(select_layers("loss", s, 2, 0).size(), 2u);
}

// Contiguous depth pruning: the block of 2 identity layers (1, 2 of 3) is found and dropped.
TEST(Prune, ContiguousBlockOfIdentityLayersIsDropped) {
  BONSAI_REQUIRE_DIR("BONSAI_GOLDEN_DIR", root);
  Model m = golden(root, "headdim_tied");
  for (int64_t l : {1, 2}) {
    m.t.at(L(l, "self_attn.o_proj.weight")).zero_();
    m.t.at(L(l, "mlp.down_proj.weight")).zero_();
  }
  PruneTarget target;
  target.num_layers = 1;
  Pruned p = prune(m, target, "contiguous");
  EXPECT_EQ(p.plan.layers, std::vector<int64_t>({0}));
  Llama teacher = build(m.cfg, m.t);
  torch::Tensor ids = test_ids(m);
  EXPECT_TRUE(torch::equal(logits(p.model, ids), logits(teacher, ids)));
  EXPECT_EQ(select_layers("random", CalibStats{3}, 1, 4).size(), 1u);
}

// Untied teacher -> tied student: the one matrix is the embedding, lm_head, or their mean.
TEST(Prune, TiedStudentFromAnUntiedTeacher) {
  BONSAI_REQUIRE_DIR("BONSAI_GOLDEN_DIR", root);
  Model m = golden(root, "gqa_untied");
  PruneTarget target;
  target.tie = "tied";
  const torch::Tensor &E = m.t.at("model.embed_tokens.weight"), &H = m.t.at("lm_head.weight");
  for (const char* from : {"embed", "lm_head", "mean"}) {
    Pruned p = prune(m, target, "block", {}, from);
    EXPECT_TRUE(p.plan.student.tie_word_embeddings);
    EXPECT_EQ(p.t.count("lm_head.weight"), 0u);
    torch::Tensor want = std::string(from) == "embed" ? E : std::string(from) == "lm_head" ? H : (E + H) * 0.5;
    EXPECT_TRUE(torch::equal(p.t.at("model.embed_tokens.weight"), want)) << from;
  }
}

// The activation score is sqrt(sum over sequences of (mean over tokens of |x|)^2), whatever the
// batching of the calibration sequences.
TEST(Prune, ActivationScoreIsSequenceMeanThenBatchL2) {
  BONSAI_REQUIRE_DIR("BONSAI_GOLDEN_DIR", root);
  Model m = golden(root, "gqa_untied");
  Llama teacher = build(m.cfg, m.t);
  torch::Tensor batch = random_batches(m.cfg.vocab_size, 1, 4, 12, 5)[0];
  torch::Tensor act;
  TraceFn fn = [&](int64_t layer, const char* name, const torch::Tensor& t) {
    if (layer == 1 && std::string(name) == "ffn_act") act = t.clone();
  };
  ForwardOptions fo;
  fo.trace = &fn;
  {
    torch::NoGradGuard ng;
    teacher->forward(batch.narrow(1, 0, 12), fo);
  }
  torch::Tensor want = act.to(torch::kDouble).abs().mean(1).pow(2).sum(0).sqrt();
  CalibStats one = calibrate(teacher, {batch}, {});
  EXPECT_LE(rel_err(one.neuron[1], want), 1e-6);
  std::vector<torch::Tensor> rows;
  for (int64_t b = 0; b < 4; ++b) rows.push_back(batch.narrow(0, b, 1));
  CalibStats split_up = calibrate(teacher, rows, {});
  EXPECT_LE(rel_err(split_up.neuron[1], one.neuron[1]), 1e-6);
  EXPECT_LE(rel_err(split_up.attn_channel[0], one.attn_channel[0]), 1e-6);
  EXPECT_EQ(one.tokens, 48);
  EXPECT_EQ(one.sequences, 4);
}

TEST(Prune, CalibrationStatisticsRoundTripAndRefuseAnotherTeacher) {
  BONSAI_REQUIRE_DIR("BONSAI_GOLDEN_DIR", root);
  Model m = golden(root, "gqa_untied");
  Llama teacher = build(m.cfg, m.t);
  CalibStats s = calibrate(teacher, random_batches(m.cfg.vocab_size, 1, 2, 10, 1), {1});
  const std::string dir = test::scratch_dir("prune_stats");
  s.save(dir + "/importance.safetensors", m.cfg);
  CalibStats r = CalibStats::load(dir + "/importance.safetensors", m.cfg);
  EXPECT_EQ(r.loss, s.loss);
  EXPECT_EQ(r.span, 1);
  EXPECT_TRUE(torch::equal(r.span_cos, s.span_cos));
  for (size_t i = 0; i < s.norm_in_ms.size(); ++i) EXPECT_TRUE(torch::equal(r.norm_in_ms[i], s.norm_in_ms[i]));
  EXPECT_TRUE(torch::equal(r.head_contrib[1], s.head_contrib[1]));
  LlamaConfig other = m.cfg;
  other.intermediate_size = 128;
  EXPECT_THROW(
      {
        try {
          CalibStats::load(dir + "/importance.safetensors", other);
        } catch (const Error& e) {
          EXPECT_THAT(e.what(), HasSubstr("another shape"));
          throw;
        }
      },
      Error);
  std::filesystem::remove_all(dir);
}

// Weight magnitude (the baseline) also finds neurons whose weights are all zero.
TEST(Prune, MagnitudeScoresFindZeroedNeurons) {
  BONSAI_REQUIRE_DIR("BONSAI_GOLDEN_DIR", root);
  Model m = golden(root, "gqa_untied");
  auto [zero, keep] = split(m.cfg.intermediate_size, 40, 8);
  m.t.at(L(0, "mlp.gate_proj.weight")).index_fill_(0, idx(zero), 0.0);
  m.t.at(L(0, "mlp.up_proj.weight")).index_fill_(0, idx(zero), 0.0);
  m.t.at(L(0, "mlp.down_proj.weight")).index_fill_(1, idx(zero), 0.0);
  UnitScores u = magnitude_scores(m.cfg, m.t);
  PruneTarget target;
  target.intermediate_size = m.cfg.intermediate_size - 40;
  PrunePlan plan = make_plan(m.cfg, student_config(m.cfg, target), {0, 1}, u, nullptr);
  EXPECT_EQ(plan.neurons[0], keep);
}

std::string error_of(const LlamaConfig& t, const PruneTarget& target) {
  try {
    student_config(t, target);
  } catch (const Error& e) {
    return std::string(e.what()) + " | " + e.hint();
  }
  return "";
}

TEST(Prune, ImpossibleTargetsAreRefusedNamingTheKey) {
  LlamaConfig t;
  t.vocab_size = 100, t.hidden_size = 64, t.intermediate_size = 160, t.num_hidden_layers = 2;
  t.num_attention_heads = 4, t.num_key_value_heads = 2, t.head_dim = 16;
  PruneTarget p;
  p.hidden_size = 128;
  EXPECT_THAT(error_of(t, p), HasSubstr("target.hidden_size is 128, larger than the teacher's 64"));
  p = {};
  p.num_layers = 3;
  EXPECT_THAT(error_of(t, p), HasSubstr("target.num_layers is 3, larger"));
  p = {};
  p.num_heads = 3, p.num_kv_heads = 2;
  EXPECT_THAT(error_of(t, p), HasSubstr("target.num_heads (3) is not a multiple of target.num_kv_heads (2)"));
  p = {};
  p.head_dim = 7;
  EXPECT_THAT(error_of(t, p), HasSubstr("target.head_dim must be even"));
  p = {};
  p.head_dim = 12;
  EXPECT_THAT(error_of(t, p), HasSubstr("does not divide the teacher's head_dim (16)"));
  p = {};
  p.num_kv_heads = 1, p.num_heads = 4;
  EXPECT_THAT(error_of(t, p), HasSubstr("4 query heads per KV head, more than the teacher's 2"));
  p = {};
  p.hidden_size = 62;
  EXPECT_THAT(error_of(t, p), HasSubstr("hidden_size (62) is not a multiple of its num_heads (4)"));
  p = {};
  p.intermediate_size = -1;
  EXPECT_THAT(error_of(t, p), HasSubstr("target.intermediate_size must be positive"));
  EXPECT_EQ(error_of(t, PruneTarget{}), "");
}

// The shipped 8B configs give exactly the Llama 3.2 shapes (and parameter counts) from Llama 3.1 8B.
TEST(Prune, ShippedConfigsGiveTheLlama32Shapes) {
  const std::string src = test::env_dir("BONSAI_SOURCE_DIR");
  LlamaConfig l31;
  l31.vocab_size = 128256, l31.hidden_size = 4096, l31.intermediate_size = 14336, l31.num_hidden_layers = 32;
  l31.num_attention_heads = 32, l31.num_key_value_heads = 8, l31.head_dim = 128, l31.rope_theta = 500000.0;
  l31.rope_scaling = {"llama3", 8.0, 1.0, 4.0, 8192};
  EXPECT_EQ(l31.num_parameters(), 8030261248);
  struct Want {
    const char* file;
    int64_t layers, hidden, heads, head_dim, params;
  };
  for (const Want& w : {Want{"8b_to_3b", 28, 3072, 24, 128, 3212749824}, Want{"8b_to_1b", 16, 2048, 32, 64, 1235814400}}) {
    PruneConfig c;
    ConfigSchema schema;
    c.register_keys(schema);
    const std::string path = src + "/configs/prune/" + w.file + ".yaml";
    schema.read(load_config_yaml(path), path);
    c.validate();
    LlamaConfig s = student_config(l31, c.target);
    EXPECT_EQ(s.num_hidden_layers, w.layers);
    EXPECT_EQ(s.hidden_size, w.hidden);
    EXPECT_EQ(s.intermediate_size, 8192);
    EXPECT_EQ(s.num_attention_heads, w.heads);
    EXPECT_EQ(s.num_key_value_heads, 8);
    EXPECT_EQ(s.head_dim, w.head_dim);
    EXPECT_TRUE(s.tie_word_embeddings);
    EXPECT_EQ(s.num_parameters(), w.params) << w.file;  // the official Llama 3.2 1B / 3B counts
  }
}

TEST(Prune, BudgetSearchFindsShapesWithinTheBudgetOrSaysWhyNot) {
  LlamaConfig t;  // SmolLM2-135M
  t.vocab_size = 49152, t.hidden_size = 576, t.intermediate_size = 1536, t.num_hidden_layers = 30;
  t.num_attention_heads = 9, t.num_key_value_heads = 3, t.head_dim = 64, t.tie_word_embeddings = true;
  const int64_t budget = parse_param_count("70M", "test");
  EXPECT_EQ(budget, 70000000);
  auto cands = budget_candidates(t, PruneTarget{}, budget, 0.05, 8);
  ASSERT_FALSE(cands.empty());
  int64_t last_gap = -1;
  for (const auto& c : cands) {
    LlamaConfig s = student_config(t, c);
    EXPECT_LE(s.num_parameters(), budget);
    EXPECT_GE(s.num_parameters(), budget * 0.95);
    EXPECT_EQ(s.hidden_size % s.num_attention_heads, 0);
    EXPECT_GE(budget - s.num_parameters(), last_gap);  // closest first
    last_gap = budget - s.num_parameters();
  }
  PruneTarget fixed;
  fixed.num_layers = 20;
  for (const auto& c : budget_candidates(t, fixed, budget, 0.1, 4)) EXPECT_EQ(c.num_layers, 20);
  try {
    budget_candidates(t, PruneTarget{}, 1000000, 0.05, 8);
    ADD_FAILURE() << "a 1M budget is below every shape";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("no shape in the budget grid has between 950000 and 1000000 parameters"));
    EXPECT_THAT(e.what(), HasSubstr("smallest above"));
  }
  EXPECT_EQ(parse_param_count("3.2B", "x"), 3200000000);
  EXPECT_EQ(parse_param_count("1.5e9", "x"), 1500000000);
  EXPECT_THROW(parse_param_count("7X", "x"), Error);
  EXPECT_THROW(parse_param_count("-5M", "x"), Error);
}

// The written checkpoint loads in transformers and gives bonsai's logits (GQA + head_dim +
// hidden pruned; untied -> tied; llama3 RoPE at D/2): scripts/ref/check_pruned_hf.py.
TEST(Prune, PrunedCheckpointsMatchTransformers) {
  BONSAI_REQUIRE_DIR("BONSAI_GOLDEN_DIR", root);
  const char* python = test::env_cstr("BONSAI_PYTHON");
  const std::string src = test::env_dir("BONSAI_SOURCE_DIR");
  if (python == nullptr || !std::filesystem::exists(python)) GTEST_SKIP() << "no BONSAI_PYTHON (run through ctest)";
  struct Case {
    const char* model;
    PruneTarget target;
  };
  PruneTarget a, b;
  a.hidden_size = 48, a.intermediate_size = 96, a.num_kv_heads = 1, a.head_dim = 8, a.tie = "tied";
  b.hidden_size = 48, b.num_heads = 2, b.num_kv_heads = 2, b.head_dim = 8, b.num_layers = 1;
  for (const Case& c : {Case{"gqa_untied", a}, Case{"llama3_long", b}}) {
    Model m = golden(root, c.model);
    Pruned p = prune(m, c.target, "block", {}, "mean");
    const std::string dir = test::scratch_dir(std::string("prune_hf_") + c.model);
    SaveOptions so;
    save_hf_checkpoint(dir + "/student", p.plan.student, p.t, so);
    write_check_logits(dir + "/student", dir + "/check_logits.safetensors");
    std::string cmd = std::string(python) + " " + src + "/scripts/ref/check_pruned_hf.py " + dir + " 2>&1";
    FILE* pipe = ::popen(cmd.c_str(), "r");
    ASSERT_NE(pipe, nullptr);
    std::string out;
    char buf[512];
    while (std::fgets(buf, sizeof buf, pipe)) out += buf;
    const int rc = ::pclose(pipe);
    std::printf("[%s] %s", c.model, out.c_str());
    EXPECT_EQ(rc, 0) << out;
    std::filesystem::remove_all(dir);
  }
}

// An mmap'ed teacher (as bonsai prune reads one) gives the pages it has been read from back
// (release_file_pages) during calibration and slicing, and nothing changes: the same statistics,
// the same student tensors, tie options included; heap tensors are left alone.
TEST(Prune, MappedTeacherGivesItsPagesBackWithTheSameResults) {
  BONSAI_REQUIRE_DIR("BONSAI_GOLDEN_DIR", root);
  Checkpoint ck = load_checkpoint(root + "/gqa_untied");  // views into the mapping
  Model m{ck.config, {}};
  for (const auto& [k, v] : ck.tensors) m.t[k] = v.clone();
  const std::string E = "model.embed_tokens.weight";
  EXPECT_GT(release_file_pages(ck.tensors.at(E)), 0u);
  EXPECT_EQ(release_file_pages(m.t.at(E)), 0u);
  EXPECT_TRUE(torch::equal(ck.tensors.at(E), m.t.at(E)));  // read back from the file

  const auto batches = random_batches(m.cfg.vocab_size, 3, 2, 24, 7);
  Llama heap = build(m.cfg, m.t), mapped = build(ck.config, ck.tensors);
  CalibStats want = calibrate(heap, batches, {});
  std::vector<int64_t> done;
  CalibOptions co;
  co.layer_done = [&](int64_t l) {
    done.push_back(l);
    for (const auto& [name, t] : ck.tensors) release_file_pages(t);
  };
  CalibStats got = calibrate(mapped, batches, co);
  const std::vector<int64_t> per_batch = {0, 1, -1};  // gqa_untied has 2 layers
  std::vector<int64_t> expect;
  for (size_t b = 0; b < batches.size(); ++b) expect.insert(expect.end(), per_batch.begin(), per_batch.end());
  EXPECT_EQ(done, expect);
  EXPECT_EQ(got.loss, want.loss);
  for (size_t l = 0; l < want.neuron.size(); ++l) {
    EXPECT_TRUE(torch::equal(got.neuron[l], want.neuron[l]));
    EXPECT_TRUE(torch::equal(got.head_contrib[l], want.head_contrib[l]));
  }

  PruneTarget target;
  target.hidden_size = 48, target.intermediate_size = 96, target.num_kv_heads = 1, target.head_dim = 8, target.tie = "tied";
  const LlamaConfig s = student_config(m.cfg, target);
  const PrunePlan plan = make_plan(m.cfg, s, select_layers("block", want, s.num_hidden_layers, 0), activation_scores(want), &want);
  for (const char* from : {"embed", "lm_head", "mean"}) {
    const Tensors a = apply_plan(plan, m.t, from), b = apply_plan(plan, ck.tensors, from);
    ASSERT_EQ(a.size(), b.size());
    for (const auto& [name, t] : a) EXPECT_TRUE(torch::equal(t, b.at(name))) << from << " " << name;
    const Tensors e = apply_plan_embeddings(plan, ck.tensors, from);
    ASSERT_EQ(e.size(), 1u);
    EXPECT_TRUE(torch::equal(e.at(E), a.at(E))) << from;
  }
}

}  // namespace
}  // namespace bonsai
