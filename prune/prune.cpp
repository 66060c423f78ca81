// Selecting the units to keep and slicing the teacher's weights (see prune.h for the rules).
#include "prune/prune.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/strings.h"
#include "model/checkpoint.h"

namespace bonsai {
namespace {

std::string num(int64_t v) { return std::to_string(v); }

std::vector<int64_t> iota(int64_t n) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  return v;
}

torch::Tensor index_tensor(const std::vector<int64_t>& v) { return torch::tensor(v, torch::kLong); }

// The k highest-scoring indices, ascending. Ties go to the lower index (stable sort), so a
// selection never depends on the sort implementation.
std::vector<int64_t> top_sorted(const torch::Tensor& scores, int64_t k) {
  torch::Tensor order = std::get<1>(scores.to(torch::kDouble).sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  order = order.to(torch::kLong).contiguous();
  std::vector<int64_t> idx(order.data_ptr<int64_t>(), order.data_ptr<int64_t>() + k);
  std::sort(idx.begin(), idx.end());
  return idx;
}

torch::Tensor scaled(const torch::Tensor& t, double s) {
  if (s == 1.0) return t;  // bit-exact when nothing is rescaled
  return (t.to(torch::kFloat) * s).to(t.scalar_type());
}

const torch::Tensor& get(const std::map<std::string, torch::Tensor>& m, const std::string& name) {
  auto it = m.find(name);
  if (it == m.end()) throw Error("pruning: the teacher has no tensor '" + name + "'", "the checkpoint does not match its config");
  return it->second;
}

std::string layer_prefix(int64_t l) { return "model.layers." + std::to_string(l) + "."; }

// RMSNorm weight multiplier for keeping `hidden` of the C channels of a norm whose input has the
// per-channel mean squares `ms` (see prune.h).
double norm_factor(const torch::Tensor& ms, const std::vector<int64_t>& hidden) {
  const int64_t C = ms.size(0), Cp = static_cast<int64_t>(hidden.size());
  if (Cp == C) return 1.0;
  const double total = ms.sum().item<double>();
  const double kept = ms.index_select(0, index_tensor(hidden)).sum().item<double>();
  const double r = total > 0 ? kept / total : 1.0;
  return std::sqrt(static_cast<double>(C) / static_cast<double>(Cp) * r);
}

// Heads of one layer: whole KV groups by summed score, query heads within each group, v dims per
// kept group from its kept heads' channel scores.
void select_attention(PrunePlan& p, int64_t l, const UnitScores& scores) {
  const LlamaConfig &T = p.teacher, &S = p.student;
  const int64_t D = T.head_dim, Dp = S.head_dim, n = T.kv_group_size(), np = S.kv_group_size();
  const torch::Tensor& head = scores.head.at(l);
  torch::Tensor channel = scores.attn_channel.at(l).view({T.num_attention_heads, D});
  std::vector<int64_t> groups = top_sorted(head.view({T.num_key_value_heads, n}).sum(1), S.num_key_value_heads);
  std::vector<int64_t> heads;
  std::vector<std::vector<int64_t>> v_dims;
  for (int64_t g : groups) {
    std::vector<int64_t> kept;
    for (int64_t w : top_sorted(head.narrow(0, g * n, n), np)) kept.push_back(g * n + w);
    heads.insert(heads.end(), kept.begin(), kept.end());
    torch::Tensor v_score = channel.index_select(0, index_tensor(kept)).pow(2).sum(0).sqrt();
    v_dims.push_back(Dp == D ? iota(D) : top_sorted(v_score, Dp));
  }
  p.kv_heads.push_back(groups);
  p.heads.push_back(heads);
  p.v_dims.push_back(v_dims);
}

// q/k/v/o of student layer i.
void slice_attention(const PrunePlan& p, size_t i, const std::map<std::string, torch::Tensor>& t,
                     const torch::Tensor& hc, std::map<std::string, torch::Tensor>& out) {
  const int64_t D = p.teacher.head_dim, np = p.student.kv_group_size();
  const std::string src = layer_prefix(p.layers[i]) + "self_attn.", dst = layer_prefix(static_cast<int64_t>(i)) + "self_attn.";
  std::vector<int64_t> q_rows, k_rows, v_rows, o_cols;
  for (size_t j = 0; j < p.heads[i].size(); ++j) {
    const int64_t h = p.heads[i][j];
    for (int64_t d : p.qk_dims) q_rows.push_back(h * D + d);
    for (int64_t d : p.v_dims[i][j / np]) o_cols.push_back(h * D + d);
  }
  for (size_t g = 0; g < p.kv_heads[i].size(); ++g) {
    for (int64_t d : p.qk_dims) k_rows.push_back(p.kv_heads[i][g] * D + d);
    for (int64_t d : p.v_dims[i][g]) v_rows.push_back(p.kv_heads[i][g] * D + d);
  }
  out[dst + "q_proj.weight"] =
      scaled(get(t, src + "q_proj.weight").index_select(0, index_tensor(q_rows)).index_select(1, hc), p.q_scale);
  out[dst + "k_proj.weight"] = get(t, src + "k_proj.weight").index_select(0, index_tensor(k_rows)).index_select(1, hc);
  out[dst + "v_proj.weight"] = get(t, src + "v_proj.weight").index_select(0, index_tensor(v_rows)).index_select(1, hc);
  out[dst + "o_proj.weight"] = get(t, src + "o_proj.weight").index_select(0, hc).index_select(1, index_tensor(o_cols));
}

// The student's embedding and (untied) output matrices, hidden channels sliced.
void slice_embeddings(const PrunePlan& p, const std::map<std::string, torch::Tensor>& t, const torch::Tensor& hc,
                      const std::string& tie_from, std::map<std::string, torch::Tensor>& out) {
  const torch::Tensor& E = get(t, "model.embed_tokens.weight");
  const torch::Tensor& H = p.teacher.tie_word_embeddings ? E : get(t, "lm_head.weight");
  if (!p.student.tie_word_embeddings) {
    out["model.embed_tokens.weight"] = E.index_select(1, hc);
    out["lm_head.weight"] = H.index_select(1, hc);
    return;
  }
  torch::Tensor M;
  if (p.teacher.tie_word_embeddings || tie_from == "embed") M = E;
  else if (tie_from == "lm_head") M = H;
  else if (tie_from == "mean") {
    // Columns first (elementwise, so the same values), then the mean: fp32 copies of the kept
    // columns only, not of two whole vocab x hidden matrices (2 x 2.1 GB for the 8B).
    torch::Tensor m = E.index_select(1, hc).to(torch::kFloat);
    m.add_(H.index_select(1, hc).to(torch::kFloat)).mul_(0.5);
    out["model.embed_tokens.weight"] = m.to(E.scalar_type());
    return;
  } else throw Error("tie_from '" + tie_from + "' is not one of embed, lm_head, mean");
  out["model.embed_tokens.weight"] = M.index_select(1, hc);
}

// A teacher read from an mmap'ed checkpoint gives the pages of what has been sliced back (they stay
// in the page cache): slicing an 8B teacher then keeps about one layer of it resident, not 16 GB.
void release_teacher(const std::map<std::string, torch::Tensor>& t, const std::string& prefix) {
  for (auto it = t.lower_bound(prefix); it != t.end() && it->first.compare(0, prefix.size(), prefix) == 0; ++it)
    release_file_pages(it->second);
}

}  // namespace

void check_target(const PruneTarget& t) {
  const std::pair<const char*, int64_t> sizes[] = {{"hidden_size", t.hidden_size}, {"intermediate_size", t.intermediate_size},
                                                   {"num_layers", t.num_layers}, {"num_heads", t.num_heads},
                                                   {"num_kv_heads", t.num_kv_heads}, {"head_dim", t.head_dim}};
  for (const auto& [key, v] : sizes)
    if (v < 0) throw Error("target." + std::string(key) + " must be positive (0 = the teacher's), found " + num(v));
  if (t.num_heads > 0 && t.num_kv_heads > 0 && t.num_heads % t.num_kv_heads != 0)
    throw Error("target.num_heads (" + num(t.num_heads) + ") is not a multiple of target.num_kv_heads (" +
                    num(t.num_kv_heads) + ")",
                "grouped-query attention needs every KV head to serve the same number of query heads");
  if (t.head_dim % 2 != 0)
    throw Error("target.head_dim must be even, found " + num(t.head_dim), "RoPE rotates pairs of dimensions");
  if (t.tie != "keep" && t.tie != "tied" && t.tie != "untied")
    throw Error("target.tie must be keep, tied or untied, found '" + t.tie + "'");
}

LlamaConfig student_config(const LlamaConfig& T, const PruneTarget& t) {
  check_target(t);
  auto pick = [](const char* key, int64_t want, int64_t have) {
    if (want == 0) return have;
    if (want > have)
      throw Error("target." + std::string(key) + " is " + num(want) + ", larger than the teacher's " + num(have),
                  "pruning only removes units: every target size must be at most the teacher's");
    return want;
  };
  LlamaConfig s = T;
  s.hidden_size = pick("hidden_size", t.hidden_size, T.hidden_size);
  s.intermediate_size = pick("intermediate_size", t.intermediate_size, T.intermediate_size);
  s.num_hidden_layers = pick("num_layers", t.num_layers, T.num_hidden_layers);
  s.num_key_value_heads = pick("num_kv_heads", t.num_kv_heads, T.num_key_value_heads);
  s.head_dim = pick("head_dim", t.head_dim, T.head_dim);
  const int64_t group = T.kv_group_size();
  s.num_attention_heads = pick("num_heads", t.num_heads > 0 ? t.num_heads : s.num_key_value_heads * group, T.num_attention_heads);
  if (s.num_attention_heads % s.num_key_value_heads != 0)
    throw Error("target.num_heads (" + num(s.num_attention_heads) + ") is not a multiple of the " +
                    num(s.num_key_value_heads) + " KV heads",
                "set target.num_kv_heads to a divisor of target.num_heads");
  if (s.num_attention_heads / s.num_key_value_heads > group)
    throw Error("the target has " + num(s.num_attention_heads / s.num_key_value_heads) +
                    " query heads per KV head, more than the teacher's " + num(group),
                "KV heads are pruned as whole groups and query heads within their group, so a group can only "
                "shrink: lower target.num_heads or raise target.num_kv_heads");
  if (T.head_dim % s.head_dim != 0)
    throw Error("target.head_dim (" + num(s.head_dim) + ") does not divide the teacher's head_dim (" + num(T.head_dim) + ")",
                "a pruned head keeps every (D/D')-th RoPE pair, which is a standard RoPE only when D' divides D "
                "(e.g. " + num(T.head_dim) + " -> " + num(T.head_dim / 2) + ")");
  if (s.hidden_size % s.num_attention_heads != 0)
    throw Error("the student's hidden_size (" + num(s.hidden_size) + ") is not a multiple of its num_heads (" +
                    num(s.num_attention_heads) + ")",
                "transformers' LlamaConfig refuses such a config even with an explicit head_dim: choose "
                "target.hidden_size and target.num_heads with hidden_size % num_heads == 0");
  if (t.tie == "tied") s.tie_word_embeddings = true;
  if (t.tie == "untied") s.tie_word_embeddings = false;
  s.validate("the student config");
  return s;
}

torch::Tensor UnitScores::hidden(const std::vector<int64_t>& layers) const {
  torch::Tensor s = hidden_site.back().clone();
  for (int64_t l : layers) s += hidden_site.at(2 * l) + hidden_site.at(2 * l + 1);
  return s;
}

namespace {

// (H) per layer: the L2 norm of each head's channel scores.
std::vector<torch::Tensor> heads_from_channels(const std::vector<torch::Tensor>& attn_channel, int64_t head_dim) {
  std::vector<torch::Tensor> out;
  for (const auto& a : attn_channel) out.push_back(a.view({-1, head_dim}).norm(2, 1));
  return out;
}

}  // namespace

UnitScores activation_scores(const CalibStats& s, const std::string& heads) {
  if (heads != "contribution" && heads != "attn_out")
    throw Error("unknown head score '" + heads + "'", "use contribution or attn_out");
  UnitScores u{s.head_contrib, s.attn_channel, s.neuron, s.norm_out};
  if (heads == "attn_out") {
    const int64_t H = s.head_contrib.at(0).size(0);
    u.head = heads_from_channels(s.attn_channel, s.attn_channel.at(0).size(0) / H);
  }
  return u;
}

UnitScores magnitude_scores(const LlamaConfig& c, const std::map<std::string, torch::Tensor>& t) {
  UnitScores u;
  const int64_t D = c.head_dim, n = c.kv_group_size(), Hkv = c.num_key_value_heads;
  auto w = [&](const std::string& name) { return get(t, name).to(torch::kFloat); };
  auto sq_rows = [](const torch::Tensor& m) { return m.pow(2).sum(1).to(torch::kDouble); };
  auto sq_cols = [](const torch::Tensor& m) { return m.pow(2).sum(0).to(torch::kDouble); };
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = layer_prefix(l);
    torch::Tensor an = w(p + "input_layernorm.weight"), fn = w(p + "post_attention_layernorm.weight");
    torch::Tensor q = w(p + "self_attn.q_proj.weight") * an, k = w(p + "self_attn.k_proj.weight") * an;
    torch::Tensor v = w(p + "self_attn.v_proj.weight") * an, o = w(p + "self_attn.o_proj.weight");
    torch::Tensor g = w(p + "mlp.gate_proj.weight") * fn, up = w(p + "mlp.up_proj.weight") * fn;
    torch::Tensor down = w(p + "mlp.down_proj.weight");
    torch::Tensor kv = ((sq_rows(k) + sq_rows(v)) / static_cast<double>(n)).view({Hkv, 1, D}).expand({Hkv, n, D}).reshape({-1});
    u.attn_channel.push_back((sq_rows(q) + sq_cols(o) + kv).sqrt());
    u.neuron.push_back((sq_rows(g) + sq_rows(up) + sq_cols(down)).sqrt());
    u.hidden_site.push_back((sq_cols(q) + sq_cols(k) + sq_cols(v) + sq_rows(o)).sqrt());
    u.hidden_site.push_back((sq_cols(g) + sq_cols(up) + sq_rows(down)).sqrt());
  }
  torch::Tensor out = c.tie_word_embeddings ? w("model.embed_tokens.weight") : w("lm_head.weight");
  u.hidden_site.push_back((sq_cols(w("model.embed_tokens.weight")) + sq_cols(out * w("model.norm.weight"))).sqrt());
  u.head = heads_from_channels(u.attn_channel, D);
  return u;
}

UnitScores random_scores(const LlamaConfig& c, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto rnd = [&](int64_t n) { return at::rand({n}, gen, torch::kDouble); };
  UnitScores u;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    u.attn_channel.push_back(rnd(c.num_attention_heads * c.head_dim));
    u.neuron.push_back(rnd(c.intermediate_size));
    u.hidden_site.push_back(rnd(c.hidden_size));
    u.hidden_site.push_back(rnd(c.hidden_size));
  }
  u.hidden_site.push_back(rnd(c.hidden_size));
  u.head = heads_from_channels(u.attn_channel, c.head_dim);
  return u;
}

std::vector<int64_t> select_layers(const std::string& method, const CalibStats& s, int64_t keep, uint64_t seed) {
  const int64_t L = s.num_layers, drop = L - keep;
  if (keep <= 0 || keep > L) throw Error("cannot keep " + num(keep) + " of " + num(L) + " layers");
  if (drop == 0) return iota(L);
  if (method == "block") return top_sorted(s.block_importance, keep);
  if (method == "loss") {
    if (!s.drop_loss.defined()) throw Error("layer selection 'loss' needs the per-layer drop losses", "calibrate with importance.depth=loss");
    return top_sorted(s.drop_loss, keep);
  }
  if (method == "random") {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    return top_sorted(at::rand({L}, gen, torch::kDouble), keep);
  }
  if (method == "contiguous") {
    if (s.span != drop)
      throw Error("contiguous layer selection needs cosines over blocks of " + num(drop) + " layers, the calibration has " +
                      (s.span > 0 ? "blocks of " + num(s.span) : std::string("none")),
                  "calibrate with the target's layer count (or drop calib.scores_from)");
    const int64_t start = s.span_cos.argmax().item<int64_t>();  // the block that changes its input least
    std::vector<int64_t> kept;
    for (int64_t l = 0; l < L; ++l)
      if (l < start || l >= start + drop) kept.push_back(l);
    return kept;
  }
  throw Error("unknown layer selection '" + method + "'", "use block, contiguous, loss or random");
}

PrunePlan make_plan(const LlamaConfig& T, const LlamaConfig& S, const std::vector<int64_t>& layers, const UnitScores& scores,
                    const CalibStats* stats, const PlanOptions& opt) {
  if (static_cast<int64_t>(layers.size()) != S.num_hidden_layers)
    throw Error("pruning plan: " + num(static_cast<int64_t>(layers.size())) + " layers selected for a student of " +
                num(S.num_hidden_layers));
  PrunePlan p;
  p.teacher = T;
  p.student = S;
  p.layers = layers;
  p.hidden = top_sorted(scores.hidden(layers), S.hidden_size);
  p.qk_dims = rope_kept_dims(T.head_dim, S.head_dim);
  const bool rescale_norms = opt.norm_rescale && stats != nullptr && S.hidden_size < T.hidden_size;
  for (int64_t l : layers) {
    select_attention(p, l, scores);
    p.neurons.push_back(top_sorted(scores.neuron.at(l), S.intermediate_size));
    for (int64_t site : {2 * l, 2 * l + 1})
      p.norm_scale.push_back(rescale_norms ? norm_factor(stats->norm_in_ms.at(site), p.hidden) : 1.0);
  }
  p.norm_scale.push_back(rescale_norms ? norm_factor(stats->norm_in_ms.back(), p.hidden) : 1.0);
  if (opt.q_rescale && S.head_dim < T.head_dim)
    p.q_scale = std::sqrt(static_cast<double>(S.head_dim) / static_cast<double>(T.head_dim));
  // With the weights scaled by sqrt(C/C'), eps * C/C' makes a channel that carries nothing drop out
  // exactly (rms over C' channels is sqrt(C/C') times rms over C, eps included).
  if (rescale_norms)
    p.student.rms_norm_eps = T.rms_norm_eps * static_cast<double>(T.hidden_size) / static_cast<double>(S.hidden_size);
  return p;
}

std::map<std::string, torch::Tensor> apply_plan(const PrunePlan& p, const std::map<std::string, torch::Tensor>& t,
                                                const std::string& tie_from) {
  torch::NoGradGuard ng;
  std::map<std::string, torch::Tensor> out;
  const torch::Tensor hc = index_tensor(p.hidden);
  out = apply_plan_embeddings(p, t, tie_from);
  for (size_t i = 0; i < p.layers.size(); ++i) {
    const std::string src = layer_prefix(p.layers[i]), dst = layer_prefix(static_cast<int64_t>(i));
    const torch::Tensor nc = index_tensor(p.neurons[i]);
    out[dst + "input_layernorm.weight"] = scaled(get(t, src + "input_layernorm.weight").index_select(0, hc), p.norm_scale[2 * i]);
    slice_attention(p, i, t, hc, out);
    out[dst + "post_attention_layernorm.weight"] =
        scaled(get(t, src + "post_attention_layernorm.weight").index_select(0, hc), p.norm_scale[2 * i + 1]);
    out[dst + "mlp.gate_proj.weight"] = get(t, src + "mlp.gate_proj.weight").index_select(0, nc).index_select(1, hc);
    out[dst + "mlp.up_proj.weight"] = get(t, src + "mlp.up_proj.weight").index_select(0, nc).index_select(1, hc);
    out[dst + "mlp.down_proj.weight"] = get(t, src + "mlp.down_proj.weight").index_select(0, hc).index_select(1, nc);
    release_teacher(t, src);
  }
  out["model.norm.weight"] = scaled(get(t, "model.norm.weight").index_select(0, hc), p.norm_scale.back());
  return out;
}

std::map<std::string, torch::Tensor> apply_plan_embeddings(const PrunePlan& p, const std::map<std::string, torch::Tensor>& t,
                                                           const std::string& tie_from) {
  torch::NoGradGuard ng;
  std::map<std::string, torch::Tensor> out;
  slice_embeddings(p, t, index_tensor(p.hidden), tie_from, out);
  release_teacher(t, "model.embed_tokens.");
  release_teacher(t, "lm_head.");
  return out;
}

std::pair<LlamaConfig, std::map<std::string, torch::Tensor>> keep_layers(const LlamaConfig& c,
                                                                         const std::map<std::string, torch::Tensor>& t,
                                                                         const std::vector<int64_t>& kept) {
  LlamaConfig s = c;
  s.num_hidden_layers = static_cast<int64_t>(kept.size());
  std::map<int64_t, int64_t> new_index;
  for (size_t i = 0; i < kept.size(); ++i) new_index[kept[i]] = static_cast<int64_t>(i);
  std::map<std::string, torch::Tensor> out;
  const std::string layers = "model.layers.";
  for (const auto& [name, tensor] : t) {
    if (name.rfind(layers, 0) != 0) {
      out[name] = tensor;
      continue;
    }
    const size_t dot = name.find('.', layers.size());
    const int64_t l = std::stoll(name.substr(layers.size(), dot - layers.size()));
    auto it = new_index.find(l);
    if (it != new_index.end()) out[layers + std::to_string(it->second) + name.substr(dot)] = tensor;
  }
  return {s, out};
}

std::vector<int64_t> rope_kept_dims(int64_t D, int64_t Dp) {
  if (Dp <= 0 || Dp % 2 != 0 || D % Dp != 0) throw Error("head_dim " + num(D) + " cannot become " + num(Dp));
  const int64_t stride = D / Dp, half = D / 2;
  std::vector<int64_t> dims;
  for (int64_t j = 0; j < Dp / 2; ++j) dims.push_back(stride * j);
  for (int64_t j = 0; j < Dp / 2; ++j) dims.push_back(half + stride * j);
  return dims;
}

std::string shape_summary(const LlamaConfig& c) {
  return "hidden " + num(c.hidden_size) + ", MLP " + num(c.intermediate_size) + ", " + num(c.num_hidden_layers) +
         " layers, " + num(c.num_attention_heads) + "/" + num(c.num_key_value_heads) + " heads, head_dim " +
         num(c.head_dim) + (c.tie_word_embeddings ? ", tied" : ", untied");
}

namespace {

// One width axis of the budget grid: the fixed size, or fractions of the teacher's rounded down.
std::vector<int64_t> width_grid(int64_t fixed, int64_t teacher) {
  if (fixed > 0) return {fixed};
  const int64_t multiple = teacher >= 2048 ? 64 : 8;  // GPU-friendly sizes for large models
  std::vector<int64_t> out = {teacher};
  for (double f : {0.875, 0.75, 0.625, 0.5, 0.375, 0.25}) {
    const int64_t v = static_cast<int64_t>(static_cast<double>(teacher) * f) / multiple * multiple;
    if (v > 0 && std::find(out.begin(), out.end(), v) == out.end()) out.push_back(v);
  }
  return out;
}

}  // namespace

std::vector<PruneTarget> budget_candidates(const LlamaConfig& T, const PruneTarget& fixed, int64_t params,
                                           double tolerance, int64_t max_candidates) {
  check_target(fixed);
  if (!(tolerance >= 0 && tolerance < 1)) throw Error("budget.tolerance must be in [0, 1), found " + std::to_string(tolerance));
  const int64_t lo = static_cast<int64_t>(std::ceil(static_cast<double>(params) * (1 - tolerance)));
  const int64_t kv = fixed.num_kv_heads > 0 ? fixed.num_kv_heads : T.num_key_value_heads;
  std::vector<int64_t> heads;
  if (fixed.num_heads > 0) heads = {fixed.num_heads};
  for (double f : {1.0, 0.75, 0.5}) {
    const int64_t h = kv * std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(T.kv_group_size()) * f));
    if (fixed.num_heads == 0 && std::find(heads.begin(), heads.end(), h) == heads.end()) heads.push_back(h);
  }
  std::vector<std::pair<int64_t, PruneTarget>> found;  // distance to the budget, target
  std::pair<int64_t, std::string> below = {-1, ""}, above = {-1, ""};
  for (int64_t C : width_grid(fixed.hidden_size, T.hidden_size))
    for (int64_t I : width_grid(fixed.intermediate_size, T.intermediate_size))
      for (int64_t H : heads) {
        PruneTarget t = fixed;
        t.hidden_size = C, t.intermediate_size = I, t.num_heads = H, t.num_kv_heads = kv;
        if (C % H != 0) continue;  // transformers refuses it (see student_config)
        const LlamaConfig s = student_config(T, t);
        const int64_t n = s.num_parameters();
        if (n >= lo && n <= params) found.emplace_back(params - n, t);
        else if (n < lo && n > below.first) below = {n, shape_summary(s)};
        else if (n > params && (above.first < 0 || n < above.first)) above = {n, shape_summary(s)};
      }
  if (found.empty()) {
    std::string near;
    if (below.first >= 0) near += "largest below: " + num(below.first) + " (" + below.second + ")";
    if (above.first >= 0) near += std::string(near.empty() ? "" : "; ") + "smallest above: " + num(above.first) + " (" + above.second + ")";
    throw Error("no shape in the budget grid has between " + num(lo) + " and " + num(params) + " parameters (" + near + ")",
                "raise budget.tolerance, fix fewer target sizes, or give the sizes instead of target.params");
  }
  std::stable_sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<PruneTarget> out;
  for (const auto& f : found)
    if (static_cast<int64_t>(out.size()) < max_candidates) out.push_back(f.second);
  return out;
}

int64_t parse_param_count(const std::string& s, const std::string& what) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (const std::exception&) {
    throw Error(what + ": cannot read '" + s + "' as a parameter count", "write e.g. 70M, 3.2B or 1500000000");
  }
  std::string unit = s.substr(used);
  for (auto& ch : unit) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  double mult = 1;
  if (unit == "K") mult = 1e3;
  else if (unit == "M") mult = 1e6;
  else if (unit == "B" || unit == "G") mult = 1e9;
  else if (!unit.empty()) throw Error(what + ": unknown unit '" + s.substr(used) + "' in '" + s + "'", "use K, M or B");
  if (!(v > 0)) throw Error(what + ": must be positive, got '" + s + "'");
  return static_cast<int64_t>(std::llround(v * mult));
}

}  // namespace bonsai
