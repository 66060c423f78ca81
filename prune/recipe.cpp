// The pruning recipe: set up, calibrate, select, slice, save, report (see recipe.h).
#include "prune/recipe.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "core/atomic_file.h"
#include "core/error.h"
#include "data/loader.h"
#include "data/tokenizer.h"
#include "model/checkpoint.h"
#include "model/registry.h"

namespace bonsai {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

// Progress on stderr, with the seconds since the start (the stages of a large run take minutes).
void say(const std::string& msg) {
  static const auto start = Clock::now();
  std::fprintf(stderr, "prune [%6.1f s] %s\n", std::chrono::duration<double>(Clock::now() - start).count(), msg.c_str());
}

std::string num(int64_t v) { return std::to_string(v); }

std::string fmt(double v, int prec = 4) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", prec, v);
  return buf;
}

// Rows of T + 1 tokens from `bonsai data pack` shards.
struct DataSpec {
  std::vector<std::string> data;
  int64_t samples, seq_len, batch;
  uint64_t seed;
  bool shuffle;  // calibration: a seeded sample of the whole set; evaluation: the first windows
  std::string what;
};

std::vector<torch::Tensor> read_batches(const DataSpec& d, const Tokenizer& tok, const std::string& tok_name, int64_t vocab) {
  LoaderOptions lo;
  lo.data = d.data;
  lo.tokenizer_identity = tok.identity();
  lo.tokenizer_name = tok_name;
  lo.batch_size = d.batch;
  lo.seq_len = d.seq_len;
  lo.seed = d.seed;
  lo.shuffle = d.shuffle;
  lo.epochs = 1;
  lo.prefetch = 0;
  lo.drop_last = false;
  std::unique_ptr<Loader> loader;
  try {
    loader = std::make_unique<Loader>(lo);
  } catch (const Error& e) {
    rethrow_with_context(e, d.what);
  }
  if (loader->kind() != ShardKind::pretrain)
    throw Error(d.what + " holds " + shard_kind_name(loader->kind()) + " shards", "pruning reads plain text: bonsai data pack with kind: pretrain");
  if (loader->num_samples() < static_cast<uint64_t>(d.samples))
    throw Error(d.what + " is shorter than asked: its " + std::to_string(loader->total_tokens()) + " tokens make " +
                    std::to_string(loader->num_samples()) + " sequences of " + num(d.seq_len + 1) + " tokens, " +
                    num(d.samples) + " asked",
                "give more data, or lower the number of samples or the sequence length");
  std::vector<torch::Tensor> out;
  for (int64_t got = 0; got < d.samples;) {
    auto b = loader->next();
    if (!b) throw Error(d.what + " ended after " + num(got) + " sequences");
    const int64_t rows = std::min<int64_t>(b->B, d.samples - got);
    torch::Tensor t = torch::tensor(b->tokens, torch::kInt).view({b->B, b->T + 1}).narrow(0, 0, rows).to(torch::kLong);
    if (t.max().item<int64_t>() >= vocab)
      throw Error(d.what + " has token id " + num(t.max().item<int64_t>()) + ", outside the teacher's vocabulary of " + num(vocab));
    out.push_back(t);
    got += rows;
  }
  return out;
}

Tokenizer load_tokenizer(const std::string& spec) {
  try {
    return Tokenizer::load(spec);
  } catch (const Error& e) {
    rethrow_with_context(e, "the tokenizer the calibration shards must match (data.tokenizer, default: the teacher)");
  }
}

// The student shapes to try: the explicit target, or the budget grid (errors name the key).
std::vector<PruneTarget> candidate_targets(const PruneConfig& c, const LlamaConfig& T) {
  if (c.params.empty()) {
    student_config(T, c.target);
    return {c.target};
  }
  return budget_candidates(T, c.target, parse_param_count(c.params, "key 'target.params'"), c.budget_tolerance,
                           c.budget_candidates);
}

torch::Device pick_device(const std::string& d) {
  if (d == "cpu" || (d == "auto" && !torch::cuda::is_available())) return torch::kCPU;
  if (!torch::cuda::is_available()) throw Error("device: cuda asked, but no CUDA device is available", "use device=cpu");
  return torch::Device(torch::kCUDA, 0);
}

Llama make_model(const LlamaConfig& cfg, const std::map<std::string, torch::Tensor>& tensors, torch::Device dev,
                 const std::string& what) {
  Llama m(cfg);
  m->load_state(tensors, what);
  m->to(dev);
  m->eval();
  return m;
}

// One way of pruning, evaluated: the plan, the student's tensors and its calibration loss.
struct Candidate {
  PrunePlan plan;
  std::map<std::string, torch::Tensor> tensors;
  std::string tie_from;
  double calib_loss = INFINITY;
};

Candidate evaluate(const PrunePlan& plan, const std::map<std::string, torch::Tensor>& teacher, const std::string& tie_from,
                   const std::vector<torch::Tensor>& calib, torch::Device dev) {
  Candidate c{plan, apply_plan(plan, teacher, tie_from), tie_from};
  Llama m = make_model(plan.student, c.tensors, dev, "pruned student");
  c.calib_loss = mean_lm_loss(m, calib);
  return c;
}

// How a tied student's matrix can be made: only an untied teacher with a tied student has a choice.
std::vector<std::string> tie_options(const std::string& tie_from, const LlamaConfig& T, const LlamaConfig& S) {
  if (T.tie_word_embeddings || !S.tie_word_embeddings) return {"embed"};
  if (tie_from == "auto") return {"embed", "lm_head", "mean"};
  return {tie_from};
}

// Tries every candidate shape (and tie option), keeping the lowest calibration loss; each try is
// recorded for the report.
Candidate choose(const PruneConfig& c, const LlamaConfig& T, const std::vector<PruneTarget>& targets,
                 const std::vector<int64_t>& layers, const UnitScores& scores, const CalibStats& stats,
                 const std::map<std::string, torch::Tensor>& teacher, const std::vector<torch::Tensor>& calib,
                 torch::Device dev, json& tried) {
  Candidate best;
  PlanOptions po{c.norm_rescale, c.q_rescale};
  auto consider = [&](Candidate cand) {
    tried.push_back({{"shape", shape_summary(cand.plan.student)}, {"params", cand.plan.student.num_parameters()},
                     {"tie_from", cand.tie_from}, {"calib_loss", cand.calib_loss}});
    say("  " + shape_summary(cand.plan.student) + " (" + num(cand.plan.student.num_parameters()) + " params, tie_from " +
        cand.tie_from + "): calibration loss " + std::to_string(cand.calib_loss));
    if (cand.calib_loss < best.calib_loss || best.tensors.empty()) best = std::move(cand);
  };
  for (const PruneTarget& t : targets) {
    const LlamaConfig S = student_config(T, t);
    consider(evaluate(make_plan(T, S, layers, scores, &stats, po), teacher, tie_options(c.tie_from, T, S)[0], calib, dev));
  }
  // The other tie options differ only in the embedding: they share the best shape's sliced body (an
  // 8B -> 3B body is 6.4 GB in bf16; slicing it again for every option would hold two at once).
  const auto ties = tie_options(c.tie_from, T, best.plan.student);
  const PrunePlan plan = best.plan;
  const std::map<std::string, torch::Tensor> body = best.tensors;  // shares the tensors
  for (size_t i = 1; i < ties.size(); ++i) {
    Candidate cand{plan, body, ties[i]};
    for (auto& [name, t] : apply_plan_embeddings(plan, teacher, ties[i])) cand.tensors[name] = t;
    Llama m = make_model(plan.student, cand.tensors, dev, "pruned student");
    cand.calib_loss = mean_lm_loss(m, calib);
    consider(std::move(cand));
  }
  return best;
}

json to_list(const torch::Tensor& t) {
  torch::Tensor d = t.to(torch::kDouble).contiguous();
  return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

json units_report(const PrunePlan& p, const UnitScores& scores) {
  json attn = json::array(), mlp = json::array();
  const int64_t n = p.teacher.kv_group_size();
  for (size_t i = 0; i < p.layers.size(); ++i) {
    const int64_t l = p.layers[i];
    const torch::Tensor& head = scores.head[l];
    attn.push_back({{"student_layer", i}, {"teacher_layer", l}, {"head_importance", to_list(head)},
                    {"kv_group_importance", to_list(head.view({-1, n}).sum(1))}, {"kept_kv_heads", p.kv_heads[i]},
                    {"kept_heads", p.heads[i]}, {"v_dims", p.v_dims[i]}});
    mlp.push_back({{"student_layer", i}, {"teacher_layer", l}, {"importance", to_list(scores.neuron[l])}, {"kept", p.neurons[i]}});
  }
  return {{"hidden", {{"importance", to_list(scores.hidden(p.layers))}, {"kept", p.hidden}}},
          {"attention", attn}, {"qk_dims", p.qk_dims}, {"mlp", mlp}, {"norm_scale", p.norm_scale}, {"q_scale", p.q_scale}};
}

// What was selected and why: the methods, every candidate tried, layer and unit importance.
void add_selection(json& report, const PruneConfig& c, const CalibStats& stats, const Candidate& best,
                   const UnitScores& scores, const json& tried) {
  const PrunePlan& plan = best.plan;
  report["student"] = {{"path", c.output + "/student"}, {"config", plan.student.to_json()}, {"params", plan.student.num_parameters()}};
  report["methods"] = {{"width", c.width}, {"heads", c.heads}, {"depth", c.depth}, {"seed", c.seed},
                       {"norm_rescale", c.norm_rescale}, {"q_rescale", c.q_rescale}, {"tie_from", best.tie_from}};
  report["tried"] = tried;
  if (!c.params.empty())
    report["budget"] = {{"params", parse_param_count(c.params, "target.params")}, {"tolerance", c.budget_tolerance}};
  report["layers"] = {{"block_importance", to_list(stats.block_importance)}, {"kept", plan.layers}, {"span", stats.span}};
  if (stats.span > 0) report["layers"]["span_cos"] = to_list(stats.span_cos);
  if (stats.drop_loss.defined()) report["layers"]["drop_loss"] = to_list(stats.drop_loss);
  report["units"] = units_report(plan, scores);
}

// The share of the summed importance that the kept units hold (a quick read of a selection).
double kept_share(const torch::Tensor& s, const std::vector<int64_t>& kept) {
  const double total = s.sum().item<double>();
  return total > 0 ? s.index_select(0, torch::tensor(kept, torch::kLong)).sum().item<double>() / total : 0.0;
}

std::string report_md(const json& r, const PrunePlan& p, const UnitScores& scores, const CalibStats& stats) {
  std::string md = "# bonsai prune report\n\n";
  md += "Teacher: `" + r["teacher"]["model"].get<std::string>() + "` (" + shape_summary(p.teacher) + "), " +
        num(p.teacher.num_parameters()) + " parameters\n\n";
  md += "Student: " + shape_summary(p.student) + ", " + num(p.student.num_parameters()) + " parameters (" +
        fmt(100.0 * p.student.num_parameters() / p.teacher.num_parameters(), 1) + "% of the teacher)\n\n";
  md += "Selection: width " + r["methods"]["width"].get<std::string>() + ", depth " + r["methods"]["depth"].get<std::string>() +
        ", tie_from " + r["methods"]["tie_from"].get<std::string>() + ". Activation scores: " +
        r["calibration"]["aggregation"].get<std::string>() + ".\n\n";
  md += "| | teacher | student |\n|---|---|---|\n";
  md += "| calibration loss (" + num(r["calibration"]["sequences"].get<int64_t>()) + " x " + num(r["calibration"]["seq_len"].get<int64_t>()) + " tokens) | " +
        fmt(r["calibration"]["loss_teacher"]) + " | " + fmt(r["calibration"]["loss_student"]) + " |\n";
  if (r.contains("eval"))
    md += "| held-out perplexity (" + num(r["eval"]["tokens"].get<int64_t>()) + " tokens) | " +
          (r["eval"].contains("ppl_teacher") ? fmt(r["eval"]["ppl_teacher"], 2) : std::string("-")) + " | " +
          fmt(r["eval"]["ppl_student"], 2) + " |\n";
  md += "\n## Layers\n\n| teacher layer | block importance | drop loss | kept as |\n|---|---|---|---|\n";
  for (int64_t l = 0; l < p.teacher.num_hidden_layers; ++l) {
    auto it = std::find(p.layers.begin(), p.layers.end(), l);
    md += "| " + num(l) + " | " + fmt(stats.block_importance[l].item<double>()) + " | " +
          (stats.drop_loss.defined() ? fmt(stats.drop_loss[l].item<double>()) : std::string("-")) + " | " +
          (it == p.layers.end() ? std::string("dropped") : num(it - p.layers.begin())) + " |\n";
  }
  md += "\n## Width (share of the importance kept)\n\nHidden channels: " + num(p.student.hidden_size) + " of " +
        num(p.teacher.hidden_size) + ", " + fmt(100 * kept_share(scores.hidden(p.layers), p.hidden), 1) + "%\n\n";
  md += "| student layer | KV heads kept | query heads kept | MLP neurons kept (share) |\n|---|---|---|---|\n";
  for (size_t i = 0; i < p.layers.size(); ++i) {
    json kv = p.kv_heads[i], heads = p.heads[i];
    md += "| " + num(static_cast<int64_t>(i)) + " | " + kv.dump() + " | " + heads.dump() + " | " +
          num(static_cast<int64_t>(p.neurons[i].size())) + " (" + fmt(100 * kept_share(scores.neuron[p.layers[i]], p.neurons[i]), 1) + "%) |\n";
  }
  md += "\nEvery unit's importance and index is in report.json.\n";
  return md;
}

}  // namespace

void write_check_logits(const std::string& student_dir, const std::string& out) {
  Llama m = load_model(student_dir, torch::kFloat);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(0);
  torch::Tensor ids = at::randint(0, m->config().vocab_size, {2, 16}, gen, torch::kLong);
  torch::NoGradGuard ng;
  save_safetensors(out, {{"input_ids", ids}, {"logits", m->forward(ids).logits}});
}

void PruneConfig::register_keys(ConfigSchema& s) {
  s.add("teacher.model", &teacher, "the model to prune (HF directory, GGUF or known name)");
  s.add_choice("teacher.dtype", &teacher_dtype, {"f32", "bf16"}, "dtype the teacher and students run in");
  s.add("target.hidden_size", &target.hidden_size, "student hidden size (0 = the teacher's)");
  s.add("target.intermediate_size", &target.intermediate_size, "student MLP width (0 = the teacher's)");
  s.add("target.num_layers", &target.num_layers, "student layers (0 = the teacher's)");
  s.add("target.num_heads", &target.num_heads, "student query heads (0 = kv heads x the teacher's group size)");
  s.add("target.num_kv_heads", &target.num_kv_heads, "student KV heads (0 = the teacher's)");
  s.add("target.head_dim", &target.head_dim, "student head_dim, a divisor of the teacher's (0 = the teacher's)");
  s.add_choice("target.tie", &target.tie, {"keep", "tied", "untied"}, "student tie_word_embeddings");
  s.add_choice("target.tie_from", &tie_from, {"auto", "embed", "lm_head", "mean"},
               "untied teacher -> tied student: the matrix to keep (auto: lowest calibration loss of the three)");
  s.add("target.params", &params, "parameter budget (e.g. 3.2B) searched over a grid of shapes; sizes given above stay fixed");
  s.add("budget.tolerance", &budget_tolerance, "shapes within [params * (1 - tolerance), params] qualify");
  s.add("budget.max_candidates", &budget_candidates, "shapes closest to the budget that are pruned and compared");
  s.add_choice("importance.width", &width, {"activation", "magnitude", "random"}, "how heads, neurons and channels are ranked");
  s.add_choice("importance.depth", &depth, {"block", "contiguous", "loss", "random"}, "how layers are chosen");
  s.add("importance.seed", &seed, "seed of the random selections");
  s.add("importance.norm_rescale", &norm_rescale, "rescale RMSNorm weights for the removed hidden channels' energy");
  s.add_choice("importance.heads", &heads, {"contribution", "attn_out"},
               "head score: output through o_proj, or attn_out before it (Minitron)");
  s.add("importance.q_rescale", &q_rescale, "q rows x sqrt(D'/D) when head_dim shrinks (keeps the attention temperature)");
  s.add("data.calib", &calib_data, "calibration data (bonsai data pack, kind pretrain)");
  s.add("data.eval", &eval_data, "held-out data for the report's perplexity (optional)");
  s.add("data.tokenizer", &tokenizer, "tokenizer the shards must match (default: the teacher's)");
  s.add("calib.samples", &calib_samples, "calibration sequences");
  s.add("calib.seq_len", &calib_seq_len, "tokens per calibration sequence");
  s.add("calib.batch_size", &calib_batch, "sequences per forward");
  s.add("calib.seed", &calib_seed, "which sequences are sampled");
  s.add("calib.scores_from", &scores_from, "reuse importance.safetensors from an earlier run on this teacher");
  s.add("eval.samples", &eval_samples, "held-out windows (0: no held-out evaluation)");
  s.add("eval.seq_len", &eval_seq_len, "tokens per held-out window (0 = calib.seq_len)");
  s.add("eval.teacher", &eval_teacher, "also evaluate the teacher on the held-out windows");
  s.add_choice("device", &device, {"auto", "cpu", "cuda"}, "where the models run");
  s.add("output", &output, "output directory (student/, report.json, report.md, importance.safetensors)");
  s.add_choice("save_dtype", &save_dtype, {"f32", "bf16", "f16"}, "dtype of the saved student");
  s.require("teacher.model", "give the model to prune: teacher.model=PATH");
  s.require("data.calib", "give calibration data: data.calib=[DIR] (from bonsai data pack)");
  s.require("output", "give --output DIR");
}

void PruneConfig::validate() const {
  check_target(target);
  if (!params.empty()) parse_param_count(params, "key 'target.params'");
  if (calib_samples <= 0 || calib_seq_len <= 0 || calib_batch <= 0)
    throw Error("calib.samples, calib.seq_len and calib.batch_size must be positive");
  if (eval_samples < 0 || eval_seq_len < 0) throw Error("eval.samples and eval.seq_len must not be negative");
  if (eval_samples > 0 && eval_data.empty())
    throw Error("eval.samples is " + num(eval_samples) + " but data.eval is empty", "give held-out data or set eval.samples=0");
  if (budget_candidates <= 0) throw Error("budget.max_candidates must be positive");
}

int run_prune(const PruneConfig& c, const std::string& resolved_yaml) {
  const auto t0 = Clock::now();
  // ---- set up: every bad input is reported here, before the teacher is converted or run
  c.validate();
  Checkpoint ck = load_checkpoint(c.teacher);  // HF: mmap'ed, nothing converted yet
  const LlamaConfig T = ck.config;
  const std::vector<PruneTarget> targets = candidate_targets(c, T);
  const int64_t keep_layers = student_config(T, targets.front()).num_hidden_layers;  // the grid keeps layers fixed
  const std::string tok_spec = c.tokenizer.empty() ? resolve_model(c.teacher) : c.tokenizer;
  const Tokenizer tok = load_tokenizer(tok_spec);
  const auto calib = read_batches({c.calib_data, c.calib_samples, c.calib_seq_len, c.calib_batch,
                                   static_cast<uint64_t>(c.calib_seed), true, "the calibration data (data.calib)"},
                                  tok, tok_spec, T.vocab_size);
  std::vector<torch::Tensor> eval;
  if (c.eval_samples > 0)
    eval = read_batches({c.eval_data, c.eval_samples, c.eval_seq_len > 0 ? c.eval_seq_len : c.calib_seq_len, c.calib_batch,
                         0, false, "the evaluation data (data.eval)"}, tok, tok_spec, T.vocab_size);
  const torch::Device dev = pick_device(c.device);
  const torch::ScalarType dtype = parse_dtype(c.teacher_dtype, "key 'teacher.dtype'");
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& [name, t] : ck.tensors) tensors[name] = t.to(dtype);  // no copy when the dtype matches
  Llama teacher = make_model(T, tensors, dev, "teacher '" + c.teacher + "'");
  fs::create_directories(c.output);

  // ---- calibrate
  CalibStats stats;
  if (c.scores_from.empty()) {
    say("calibrating " + shape_summary(T) + " on " + num(c.calib_samples) + " x " + num(c.calib_seq_len) + " tokens");
    CalibOptions co;
    co.span = c.depth == "contiguous" ? T.num_hidden_layers - keep_layers : 0;
    co.layer_done = [&tensors](int64_t l) {  // an mmap'ed teacher gives back what each layer read
      const std::string prefix = l >= 0 ? "model.layers." + std::to_string(l) + "." : "";
      for (const auto& [name, t] : tensors)
        if (l >= 0 ? name.compare(0, prefix.size(), prefix) == 0 : name.rfind("model.layers.", 0) != 0)
          release_file_pages(t);
    };
    stats = calibrate(teacher, calib, co);
  } else {
    stats = CalibStats::load(c.scores_from, T);
    say("importance from " + c.scores_from + " (" + num(stats.sequences) + " calibration sequences)");
    if (stats.data_hash != batches_hash(calib)) {  // scores of other data: this data's teacher loss
      stats.loss = mean_lm_loss(teacher, calib);
      stats.data_hash = batches_hash(calib);
    }
  }
  if (c.depth == "loss" && !stats.drop_loss.defined()) {
    say("calibration loss with each of the " + num(T.num_hidden_layers) + " layers dropped");
    stats.drop_loss = layer_drop_losses(T, tensors, calib, dev);
  }
  stats.save(c.output + "/importance.safetensors", T);
  say("teacher calibration loss " + fmt(stats.loss));
  json report = {{"teacher", {{"model", c.teacher}, {"config", T.to_json()}, {"params", T.num_parameters()}}}};
  report["calibration"] = {
      {"sequences", c.calib_samples}, {"seq_len", c.calib_seq_len}, {"loss_teacher", stats.loss},
      {"scores_from", c.scores_from.empty() ? c.output + "/importance.safetensors" : c.scores_from},
      {"aggregation", std::string("per channel: mean over tokens of |activation|, then L2 over sequences (Minitron's "
                                  "(batch L2, sequence mean)); heads: ") +
                          (c.heads == "contribution" ? "their output through o_proj, mean over tokens of its L2 norm, "
                                                       "then L2 over sequences"
                                                     : "L2 norm of their attn_out channel scores (Minitron)")}};
  if (!eval.empty()) {
    report["eval"] = {{"sequences", c.eval_samples}, {"tokens", c.eval_samples * (c.eval_seq_len > 0 ? c.eval_seq_len : c.calib_seq_len)}};
    if (c.eval_teacher) {
      const double l = mean_lm_loss(teacher, eval);
      report["eval"]["loss_teacher"] = l, report["eval"]["ppl_teacher"] = std::exp(l);
      say("teacher held-out perplexity " + fmt(std::exp(l), 2));
    }
  }
  teacher = nullptr;  // frees a device copy

  // ---- select and slice
  UnitScores scores = c.width == "activation" ? activation_scores(stats, c.heads)
                      : c.width == "magnitude" ? magnitude_scores(T, tensors)
                                               : random_scores(T, static_cast<uint64_t>(c.seed));
  const std::vector<int64_t> layers = select_layers(c.depth, stats, keep_layers, static_cast<uint64_t>(c.seed));
  say("selecting (" + num(static_cast<int64_t>(targets.size())) + " candidate shape(s))");
  json tried = json::array();
  Candidate best = choose(c, T, targets, layers, scores, stats, tensors, calib, dev, tried);
  const PrunePlan& plan = best.plan;
  for (const auto& [name, t] : tensors) release_file_pages(t);  // the teacher is done with

  // ---- save, then check the saved checkpoint loads and record its logits for transformers
  SaveOptions so;
  so.dtype = parse_dtype(c.save_dtype, "key 'save_dtype'");
  so.metadata = {{"bonsai.stage", "prune"}, {"bonsai.teacher", ck.source}};
  so.carry_tokenizer_from = ck.hf_dir;
  so.generation_config = ck.generation_config;
  for (auto& [name, t] : best.tensors) t = t.cpu();
  save_hf_checkpoint(c.output + "/student", plan.student, best.tensors, so);
  say("saved " + c.output + "/student");
  if (!eval.empty()) {
    Llama student = make_model(plan.student, best.tensors, dev, "pruned student");
    const double l = mean_lm_loss(student, eval);
    report["eval"]["loss_student"] = l, report["eval"]["ppl_student"] = std::exp(l);
    say("student held-out perplexity " + fmt(std::exp(l), 2));
  }
  // The check re-loads the saved student in fp32 (12.8 GB for the 3B shape): the sliced tensors go
  // first, so that the two are never resident together.
  best.tensors.clear();
  write_check_logits(c.output + "/student", c.output + "/check_logits.safetensors");
  say("wrote " + c.output + "/check_logits.safetensors");

  // ---- report
  report["calibration"]["loss_student"] = best.calib_loss;
  add_selection(report, c, stats, best, scores, tried);
  report["config"] = resolved_yaml;
  report["seconds"] = std::chrono::duration<double>(Clock::now() - t0).count();
  write_file_atomic(c.output + "/report.json", report.dump(1) + "\n");
  write_file_atomic(c.output + "/report.md", report_md(report, plan, scores, stats));
  say("done: " + num(T.num_parameters()) + " -> " + num(plan.student.num_parameters()) + " parameters, calibration loss " +
      fmt(stats.loss) + " -> " + fmt(best.calib_loss) + "; " + c.output + "/student, report " + c.output + "/report.md (" +
      fmt(report["seconds"].get<double>(), 1) + " s)");
  return 0;
}

}  // namespace bonsai
