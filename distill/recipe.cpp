#include "distill/recipe.h"

#include <ATen/autocast_mode.h>
#include <c10/cuda/CUDAFunctions.h>

#include <chrono>
#include <cstdio>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>

#include "core/error.h"
#include "core/process.h"
#include "data/loader.h"
#include "data/tokenizer.h"
#include "distill/precompute.h"
#include "distill/topk_store.h"
#include "model/checkpoint.h"
#include "model/registry.h"
#include "train/dist.h"
#include "train/metrics.h"
#include "train/optim.h"
#include "train/train_state.h"

namespace bonsai {
namespace {

using Clock = std::chrono::steady_clock;

struct Teacher {
  Llama model;
  double weight;
};

// A loader batch as tensors: inputs (B,T) and labels (B,T) with -100 where the loss does not apply.
std::pair<torch::Tensor, torch::Tensor> to_tensors(const Batch& b) {
  auto tok = torch::tensor(b.tokens, torch::kInt).to(torch::kLong).view({b.B, b.T + 1});
  auto mask = torch::tensor(std::vector<int32_t>(b.loss_mask.begin(), b.loss_mask.end()), torch::kInt).view({b.B, b.T + 1});
  auto input = tok.narrow(1, 0, b.T).contiguous();
  auto labels = tok.narrow(1, 1, b.T).masked_fill(mask.narrow(1, 1, b.T) == 0, -100).contiguous();
  return {input, labels};
}

Llama load_student(const DistillConfig& c) {
  if (c.student_init == "pretrained") return load_model(c.student, torch::kFloat);
  Checkpoint ck = load_checkpoint(c.student, torch::kFloat);  // for the shape only
  Llama m(ck.config);
  m->init_random(static_cast<uint64_t>(c.train.seed));
  return m;
}

std::vector<Teacher> load_teachers(const DistillConfig& c, const LlamaConfig& student) {
  std::vector<Teacher> out;
  for (size_t i = 0; i < c.teachers.size(); ++i) {
    Llama t = load_model(c.teachers[i], parse_dtype(c.teacher_dtype, "key 'teacher.dtype'"));
    for (auto& p : t->parameters()) p.set_requires_grad(false);
    const int64_t vt = t->config().vocab_size, vs = student.vocab_size;
    if (vt != vs && std::abs(vt - vs) > 1024) {
      throw Error("teacher '" + c.teachers[i] + "' has a vocabulary of " + std::to_string(vt) + ", the student " +
                  std::to_string(vs), "distillation needs the same tokenizer (vocabularies may differ only by padding)");
    }
    double w = c.teacher_weights.empty() ? 1.0 / (c.teachers.size() + c.topk.size()) : c.teacher_weights[i];
    out.push_back({t, w});
  }
  return out;
}

// Offline teachers: the rows of a batch looked up by sample id.
struct OfflineTeacher {
  std::unique_ptr<TopKReader> reader;
  double weight;
};

std::vector<OfflineTeacher> open_topk(const DistillConfig& c, const std::string& identity, const Loader& loader) {
  std::vector<OfflineTeacher> out;
  const size_t n_total = c.teachers.size() + c.topk.size();
  for (size_t i = 0; i < c.topk.size(); ++i) {
    auto r = std::make_unique<TopKReader>(c.topk[i]);
    const auto& m = r->meta();
    const std::string f = "top-k file '" + c.topk[i] + "'";
    if (m.tokenizer_identity != identity) throw Error(f + " was computed with another tokenizer", "precompute it again for this data");
    if (m.seq_len != c.train.seq_len)
      throw Error(f + " has seq_len " + std::to_string(m.seq_len) + ", this run train.seq_len " + std::to_string(c.train.seq_len));
    if (m.temperature != c.loss.temperature)
      throw Error(f + " was computed at temperature " + std::to_string(m.temperature) + ", this run uses loss.temperature " +
                  std::to_string(c.loss.temperature), "the top-k are tempered when stored: precompute at this run's temperature");
    if (m.data_json != describe_data(loader.num_samples(), loader.total_tokens(), c.train.seq_len))
      throw Error(f + " describes other data (" + m.data_json + ")", "precompute it on this run's data.train");
    double w = c.topk_weights.empty() ? 1.0 / n_total : c.topk_weights[i];
    out.push_back({std::move(r), w});
  }
  return out;
}

TopKTeacher read_topk(const OfflineTeacher& t, const Batch& b) {
  const int64_t T = b.T, k = t.reader->meta().k;
  auto v = torch::empty({b.B, T, k}, torch::kHalf);
  auto idx = torch::empty({b.B, T, k}, torch::kInt);
  auto lse = torch::empty({b.B, T}, torch::kFloat);
  for (int64_t r = 0; r < b.B; ++r) {
    if (b.sample_ids[r] >= static_cast<uint64_t>(t.reader->meta().n_samples))
      throw Error("sample " + std::to_string(b.sample_ids[r]) + " is beyond the " + std::to_string(t.reader->meta().n_samples) +
                  " samples of the top-k file", "precompute without topk.max_samples, or train fewer steps");
    t.reader->read(b.sample_ids[r], reinterpret_cast<uint16_t*>(v[r].data_ptr<at::Half>()),
                   reinterpret_cast<uint32_t*>(idx[r].data_ptr<int32_t>()), lse[r].data_ptr<float>());
  }
  return {v.view({-1, k}).to(torch::kFloat), idx.view({-1, k}).to(torch::kLong), lse.view(-1), t.weight};
}

// Enables autocast to bf16 on `device`'s type for its lifetime (and clears the cast-weight cache on exit).
struct AutocastScope {
  bool on;
  at::DeviceType type;
  AutocastScope(bool enable, torch::Device device) : on(enable), type(device.type()) {
    if (!on) return;
    at::autocast::set_autocast_dtype(type, at::kBFloat16);
    at::autocast::set_autocast_enabled(type, true);
  }
  ~AutocastScope() {
    if (!on) return;
    at::autocast::set_autocast_enabled(type, false);
    at::autocast::clear_cache();
  }
};

// train.device: "cpu", "cuda" (this process's GPU: LOCAL_RANK), or "auto" (cuda when one is visible).
torch::Device resolve_device(const std::string& want, const DistEnv& env) {
  const bool have = torch::cuda::is_available();
  if (want == "cpu" || (want == "auto" && !have)) return torch::kCPU;
  if (!have)
    throw Error("key 'train.device' is cuda but no CUDA device is visible", "set train.device=cpu (or auto)");
  const int64_t n = static_cast<int64_t>(torch::cuda::device_count());
  if (env.local_rank >= n)
    throw Error("LOCAL_RANK " + std::to_string(env.local_rank) + " has no GPU: this node shows " + std::to_string(n),
                "start one process per GPU (torchrun --nproc-per-node, or SLURM --ntasks-per-node = GPUs per node)");
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank));
}

struct StepResult {
  double loss = 0, kd = 0, ce = 0;
  int64_t tokens = 0;
};

// One micro-batch: forward both models, fused loss, backward (scaled for accumulation).
StepResult micro_step(Llama& student, std::vector<Teacher>& teachers, const std::vector<OfflineTeacher>& offline,
                      const Batch& b, const DistillConfig& c, bool backward) {
  auto [input_cpu, labels_cpu] = to_tensors(b);
  const torch::Device dev = student->embedding_weight().device();
  torch::Tensor input = input_cpu.to(dev), labels = labels_cpu.to(dev);
  std::vector<OnlineTeacher> online;
  {
    torch::NoGradGuard ng;
    for (auto& t : teachers) {
      ForwardOptions fo;
      fo.compute_logits = false;
      auto h = t.model->forward(input, fo).last_hidden;
      online.push_back({h.reshape({-1, h.size(-1)}), t.model->output_weight(), t.weight});
    }
  }
  ForwardOptions so;
  so.compute_logits = false;
  so.checkpoint_layers = c.train.activation_checkpointing;
  torch::Tensor hs;
  {
    // bf16 compute: autocast runs the matmuls in bf16 while the parameters (master weights) and
    // Adam state stay fp32; the fused loss upcasts to fp32 itself.
    AutocastScope autocast(c.train.compute_dtype == "bf16", dev);
    hs = student->forward(input, so).last_hidden;
  }
  std::vector<TopKTeacher> topk;
  for (const auto& t : offline) {
    TopKTeacher k = read_topk(t, b);
    topk.push_back({k.values.to(dev), k.indices.to(dev), k.lse.to(dev), k.weight_in_mix});
  }
  auto parts = fused_kd_loss(hs.reshape({-1, hs.size(-1)}), student->output_weight(), labels.view(-1), online, topk, c.loss);
  if (backward) (parts.loss / static_cast<double>(c.train.grad_accum)).backward();
  return {parts.loss.item<double>(), parts.kd, parts.ce, parts.tokens};
}

std::map<std::string, double> validate_model(Llama& student, std::vector<Teacher>& teachers, const DistillConfig& c,
                                             const std::string& identity) {
  // Validation uses the online teachers only (top-k files cover the training samples).
  LoaderOptions lo;
  lo.data = c.val_data;
  lo.tokenizer_identity = identity;
  lo.batch_size = c.train.micro_batch;
  lo.seq_len = c.train.seq_len;
  lo.shuffle = false;
  lo.epochs = 1;
  lo.prefetch = 0;
  Loader val(lo);
  double loss = 0, ce = 0;
  int64_t n = 0;
  torch::NoGradGuard ng;
  KdLossOptions ce_only = c.loss;
  ce_only.kd_weight = 0;
  for (int64_t i = 0; i < c.train.eval_batches; ++i) {
    auto b = val.next();
    if (!b) break;
    auto r = micro_step(student, teachers, {}, *b, c, false);
    DistillConfig cc = c;
    cc.loss = ce_only;
    std::vector<Teacher> none;
    ce += micro_step(student, none, {}, *b, cc, false).ce;
    loss += r.loss;
    ++n;
  }
  if (n == 0) throw Error("validation data gave no batch", "give more validation data or a shorter train.seq_len");
  return {{"loss", loss / n}, {"ce", ce / n}, {"ppl", std::exp(ce / n)}};
}

// Rebuilds this rank's Adam state from ZeRO optimizer shards saved by `old_world` ranks (another
// world size; same parameters, same flattening). Every old shard whose elements overlap this rank's
// is loaded into an optimizer of the old rank's layout, and the overlapping elements of its moments
// are copied into this rank's pieces. Returns the number of old shard files read.
int64_t load_zero_resharded(const ZeroShards& shards, torch::optim::AdamW& opt, Llama& student, const TrainConfig& tc,
                            int64_t old_world, const std::function<std::string(int64_t)>& file_of) {
  auto named = student->named_parameters();
  const auto& mine = shards.pieces();
  struct Moments {
    torch::Tensor m, v;
    int64_t step = 0;
  };
  std::vector<Moments> got(mine.size());
  int64_t files = 0;
  torch::NoGradGuard ng;
  for (int64_t r = 0; r < old_world; ++r) {
    const auto old = shards.layout(old_world, r);
    auto overlap = [](int64_t a0, int64_t an, int64_t b0, int64_t bn) {
      return std::make_pair(std::max(a0, b0), std::min(a0 + an, b0 + bn));
    };
    bool needed = false;
    for (const auto& o : old)
      for (const auto& p : mine) {
        const auto [lo, hi] = overlap(o.offset, o.numel, p.offset, p.numel);
        needed = needed || (o.param == p.param && lo < hi);
      }
    if (!needed) continue;
    const std::string f = file_of(r);
    if (!std::filesystem::exists(f))
      throw Error("resume: no ZeRO optimizer shard '" + f + "' (rank " + std::to_string(r) + " of the " +
                      std::to_string(old_world) + " that saved the checkpoint)",
                  "every rank's shard of the step is needed; was the checkpoints/zero folder copied completely?");
    std::vector<torch::Tensor> keep;
    std::vector<OptTensor> layout;
    for (const auto& o : old) {
      const torch::Tensor& full = named[o.param].value();
      keep.push_back(torch::zeros({o.numel}, full.options()));
      layout.push_back({named[o.param].key(), keep.back(), full.dim()});
    }
    auto old_opt = make_adamw(layout, tc);
    try {
      // Onto this rank's device: the file holds the old rank's (cuda:<its local rank> on GPUs).
      torch::load(*old_opt, f, named[old.front().param].value().device());
    } catch (const c10::Error& e) {
      throw Error("resume: cannot read ZeRO optimizer shard '" + f + "' as rank " + std::to_string(r) + " of " +
                      std::to_string(old_world) + ": " + e.what_without_backtrace(),
                  "the shard must come from this run's model and dist.zero checkpoint");
    }
    ++files;
    for (size_t i = 0; i < old.size(); ++i) {
      auto it = old_opt->state().find(keep[i].unsafeGetTensorImpl());
      if (it == old_opt->state().end()) continue;  // no state yet: nothing to carry
      const auto& s = static_cast<const torch::optim::AdamWParamState&>(*it->second);
      for (size_t j = 0; j < mine.size(); ++j) {
        if (mine[j].param != old[i].param) continue;
        const auto [lo, hi] = overlap(old[i].offset, old[i].numel, mine[j].offset, mine[j].numel);
        if (lo >= hi) continue;
        Moments& g = got[j];
        if (!g.m.defined()) g.m = torch::zeros_like(mine[j].value), g.v = torch::zeros_like(mine[j].value);
        g.m.narrow(0, lo - mine[j].offset, hi - lo).copy_(s.exp_avg().narrow(0, lo - old[i].offset, hi - lo));
        g.v.narrow(0, lo - mine[j].offset, hi - lo).copy_(s.exp_avg_sq().narrow(0, lo - old[i].offset, hi - lo));
        g.step = std::max(g.step, s.step());
      }
    }
  }
  for (size_t j = 0; j < mine.size(); ++j) {
    if (!got[j].m.defined()) continue;
    auto st = std::make_unique<torch::optim::AdamWParamState>();
    st->step(got[j].step);
    st->exp_avg(got[j].m);
    st->exp_avg_sq(got[j].v);
    opt.state()[mine[j].value.unsafeGetTensorImpl()] = std::move(st);
  }
  return files;
}

}  // namespace

void DistillConfig::register_keys(ConfigSchema& s, bool with_teachers) {
  s.add("student.model", &student, "student weights (HF dir, GGUF or known name)");
  s.add_choice("student.init", &student_init, {"pretrained", "random"}, "start from the weights, or only the shape");
  if (with_teachers) {
    s.add("teacher.models", &teachers, "online teachers (HF dir, GGUF or known name)");
    s.add("teacher.weights", &teacher_weights, "mixing weight of each teacher (default: equal)");
    s.add_choice("teacher.dtype", &teacher_dtype, {"f32", "bf16"}, "teacher compute dtype");
    s.add("teacher.topk", &topk, "offline teachers: topk.h5 files from `bonsai distill precompute`");
    s.add("teacher.topk_weights", &topk_weights, "mixing weight of each top-k file");
    s.add_choice("loss.kind", &loss.kind, {"fkl", "rkl", "jsd", "skew_fkl", "skew_rkl"}, "divergence");
    s.add("loss.temperature", &loss.temperature, "softmax temperature of both models");
    s.add("loss.kd_weight", &loss.kd_weight, "weight of KD; 1 - kd_weight goes to cross-entropy");
    s.add("loss.beta", &loss.beta, "jsd interpolation");
    s.add("loss.skew", &loss.skew, "skew_fkl / skew_rkl mixing");
    s.add("loss.scale_by_t2", &loss.scale_by_t2, "multiply KD by temperature^2");
  }
  s.add("loss.chunk_tokens", &loss.chunk_tokens, "tokens per chunk of the fused loss");
  s.add("data.train", &train_data, "training data (bonsai data pack outputs)");
  s.add("data.val", &val_data, "validation data");
  s.add("data.tokenizer", &tokenizer, "tokenizer spec the shards must match (default: the student)");
  train.register_keys(s);
  s.add("output", &output, "run directory (metrics.jsonl, tb/, checkpoints/, student/)");
  s.add("resume", &resume, "continue from output/checkpoints/latest");
  s.add_choice("save_dtype", &save_dtype, {"f32", "bf16", "f16"}, "dtype of the final student checkpoint");
  s.add("dist.zero", &zero, "0: every rank holds the whole optimizer state; 1: each holds 1/world of it (ZeRO-1); "
        "2: and only 1/world of the averaged gradient, reduce-scattered (ZeRO-2)");
  s.add("dist.overlap", &dist_overlap, "average gradient buckets while backward still runs (plain data parallelism "
        "and ZeRO-1; ZeRO-2 reduce-scatters after backward)");
  s.add("dist.bucket_mb", &dist_bucket_mb, "MiB of gradient per collective (torch DDP's bucket_cap_mb)");
  s.add("dist.timeout_s", &dist_timeout_s, "seconds a collective may wait before the run fails (a rank died or hangs)");
  s.require("student.model", "give the student: student.model=PATH");
  s.require("data.train", "give training data: data.train=[DIR] (from bonsai data pack)");
  s.require("output", "give --output DIR");
}

void DistillConfig::validate(bool with_teachers) const {
  train.validate();
  loss.validate();
  if (with_teachers && teachers.empty() && topk.empty() && loss.kd_weight > 0)
    throw Error("keys 'teacher.models' and 'teacher.topk' are empty but loss.kd_weight is " + std::to_string(loss.kd_weight),
                "name at least one teacher, or set loss.kd_weight=0 for plain training");
  if (!topk_weights.empty() && topk_weights.size() != topk.size())
    throw Error("key 'teacher.topk_weights' has " + std::to_string(topk_weights.size()) + " entries for " +
                std::to_string(topk.size()) + " top-k files");
  if (!teacher_weights.empty() && teacher_weights.size() != teachers.size())
    throw Error("key 'teacher.weights' has " + std::to_string(teacher_weights.size()) + " entries for " +
                std::to_string(teachers.size()) + " teachers");
  if (zero < 0 || zero > 2) throw Error("key 'dist.zero' must be 0, 1 or 2, got " + std::to_string(zero));
  if (!(dist_bucket_mb > 0) || dist_bucket_mb > 4096)
    throw Error("key 'dist.bucket_mb' must be in (0, 4096], got " + std::to_string(dist_bucket_mb), "25 is torch DDP's default");
  if (train.eval_every > 0 && val_data.empty())
    throw Error("key 'train.eval_every' is set but 'data.val' is empty", "give validation data or set train.eval_every=0");
}

// Fault injection for the multi-process tests: BONSAI_FAULT_RANK=r BONSAI_FAULT_STEP=s makes rank r
// exit abruptly before step s, as a crashed node would.
void maybe_inject_fault(const DistEnv& env, int64_t step) {
  const char* r = std::getenv("BONSAI_FAULT_RANK");
  const char* s = std::getenv("BONSAI_FAULT_STEP");
  if (r && s && std::atoi(r) == env.rank && std::atoll(s) == step) std::_Exit(3);
}

int run_distill(const DistillConfig& c, const std::string& resolved_yaml) {
  // ---- set up
  const DistEnv env = dist_env_from_environment();
  const torch::Device device = resolve_device(c.train.device, env);
  if (device.is_cuda()) c10::cuda::set_device(device.index());
  // A process group for several processes (Gloo on CPUs, NCCL on GPUs), and on a GPU also for one
  // launched process (torchrun --nproc-per-node=1: NCCL with world size 1, the path a cluster run takes).
  std::unique_ptr<DataParallel> dp;
  if (env.world_size > 1 || (env.source != "single" && device.is_cuda()))
    dp = std::make_unique<DataParallel>(env, device, std::chrono::seconds(c.dist_timeout_s));
  const bool rank0 = env.rank == 0;
  torch::manual_seed(static_cast<uint64_t>(c.train.seed));
  Llama student = load_student(c);
  student->to(device);
  for (auto& p : student->parameters()) p.set_requires_grad(true);
  student->train();
  if (dp) dp->broadcast_from_rank0(student->parameters());
  std::vector<Teacher> teachers = load_teachers(c, student->config());
  for (auto& t : teachers) t.model->to(device);
  Tokenizer tok = Tokenizer::load(c.tokenizer.empty() ? resolve_model(c.student) : c.tokenizer);
  LoaderOptions lo;
  lo.data = c.train_data;
  lo.tokenizer_identity = tok.identity();
  lo.tokenizer_name = c.tokenizer.empty() ? c.student : c.tokenizer;
  lo.batch_size = c.train.micro_batch;
  lo.seq_len = c.train.seq_len;
  lo.seed = static_cast<uint64_t>(c.train.seed);
  lo.rank = env.rank;
  lo.world_size = env.world_size;
  Loader loader(lo);
  std::vector<OfflineTeacher> offline = open_topk(c, tok.identity(), loader);
  // ZeRO-1/2 (train/dist.h): each rank owns 1/world of the flattened parameters, updates them with
  // its own Adam state, and all-gathers the others' updated shards after every step; ZeRO-2 also
  // keeps only its shard of the averaged gradient. One process: nothing to shard.
  std::unique_ptr<ZeroShards> shards;
  std::unique_ptr<torch::optim::AdamW> opt;
  const int64_t bucket_bytes = std::max<int64_t>(1, static_cast<int64_t>(c.dist_bucket_mb * (1 << 20)));
  if (dp && c.zero > 0) {
    auto named = student->named_parameters();
    std::vector<torch::Tensor> ps;
    for (const auto& p : named) ps.push_back(p.value());
    shards = std::make_unique<ZeroShards>(*dp, ps, static_cast<int>(c.zero), bucket_bytes);
    std::vector<OptTensor> mine;
    for (const auto& pc : shards->pieces())
      mine.push_back({named[pc.param].key(), pc.value, named[pc.param].value().dim()});
    opt = make_adamw(mine, c.train);
  } else {
    opt = make_adamw(*student, c.train);
  }
  // ZeRO optimizer shards: checkpoints/zero/step-N.rank-R.pt, written by every rank before rank 0
  // writes step-N, so a complete step-N always has its shards. Stages 1 and 2 share the layout; a
  // run resumed with another world size reshards them (load_zero_resharded).
  auto zero_file_of = [&](int64_t step, int64_t rank) {
    return c.output + "/checkpoints/zero/step-" + std::to_string(step) + ".rank-" + std::to_string(rank) + ".pt";
  };
  auto zero_file = [&](int64_t step) { return zero_file_of(step, env.rank); };
  std::string resumed_note;
  TrainState st;
  if (c.resume) {
    auto ck = latest_checkpoint(c.output);
    if (!ck) throw Error("resume: no checkpoint in '" + c.output + "/checkpoints'", "run without resume=true first");
    // How the checkpoint was saved (ranks, ZeRO), checked before any state is loaded.
    nlohmann::json saved;
    {
      const std::string state_file = *ck + "/trainer_state.json";
      std::ifstream in(state_file);
      saved = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
      if (!in.is_open() || saved.is_discarded() || !saved.is_object())
        throw Error("resume: cannot read '" + state_file + "' as JSON (missing or damaged)",
                    "point --resume at an intact checkpoint, or remove checkpoints/latest to start over");
    }
    const nlohmann::json saved_extra = saved.value("extra", nlohmann::json::object());
    const int64_t saved_w = saved_extra.value("world_size", int64_t{1});
    const int64_t saved_zero = saved_extra.value("zero", int64_t{0});
    if (shards && saved_zero == 0)
      throw Error("resume: checkpoint '" + *ck + "' was saved without dist.zero, this run has dist.zero=" + std::to_string(c.zero),
                  "resume with the dist.zero the run was saved with");
    if (!shards && saved_zero > 0)
      throw Error("resume: checkpoint '" + *ck + "' holds ZeRO optimizer shards (dist.zero=" + std::to_string(saved_zero) +
                      "), this run has none",
                  "resume with dist.zero=1 or 2 under a launcher (scripts/launch_local.sh N, torchrun or SLURM; any N)");
    st = load_train_checkpoint(*ck, student, *opt, /*load_optimizer=*/!shards);
    if (shards && saved_w == env.world_size) {
      const std::string f = zero_file(st.step);
      if (!std::filesystem::exists(f))
        throw Error("resume: no ZeRO optimizer shard '" + f + "'", "was the checkpoints/zero folder copied completely?");
      torch::load(*opt, f, device);  // this rank's device, whichever device saved it
    } else if (shards) {
      const int64_t n = load_zero_resharded(*shards, *opt, student, c.train, saved_w,
                                            [&](int64_t r) { return zero_file_of(st.step, r); });
      resumed_note = "ZeRO optimizer state resharded from " + std::to_string(saved_w) + " to " +
                     std::to_string(env.world_size) + " rank(s) (" + std::to_string(n) + " old shard(s) read by rank 0)";
    }
    if (saved_w != env.world_size && resumed_note.empty())
      resumed_note = "resumed with " + std::to_string(env.world_size) + " rank(s); the checkpoint was saved by " + std::to_string(saved_w);
    loader.restore(LoaderState::from_json(st.loader_state, *ck + "/trainer_state.json"));
  }
  MetricsLogger log(c.output, /*enabled=*/rank0, /*append=*/c.resume);
  log.message("distill: student " + c.student + " (" + std::to_string(student->config().num_parameters() / 1000000) +
              "M params) on " + device.str() + ", " + std::to_string(teachers.size()) + " teacher(s), " + std::to_string(env.world_size) +
              " rank(s) (" + env.source + "), from step " + std::to_string(st.step));
  if (!resumed_note.empty()) log.message(resumed_note);
  auto params = student->parameters();
  // Gradient buckets all-reduced during the last backward pass of each step (not ZeRO-2, whose
  // reduce-scatter runs after backward; train/dist.h).
  std::unique_ptr<GradientReducer> reducer;
  if (dp && c.dist_overlap && c.zero != 2) {
    reducer = std::make_unique<GradientReducer>(*dp, params, bucket_bytes);
    log.message("gradient averaging overlapped with backward: " + std::to_string(reducer->buckets()) + " bucket(s) of <= " +
                [&] { char b[32]; std::snprintf(b, sizeof b, "%g", c.dist_bucket_mb); return std::string(b); }() + " MiB");
  }
  // Rank 0 writes (the loader state counts all ranks' samples); the others wait for it.
  auto save = [&] {
    std::string where = c.output + "/checkpoints";
    if (shards) {  // each rank's optimizer shard
      std::filesystem::create_directories(where + "/zero");
      const std::string f = zero_file(st.step);
      torch::save(*opt, f + ".tmp");
      std::filesystem::rename(f + ".tmp", f);
      dp->barrier();  // every shard is on disk before rank 0 declares the checkpoint complete
    }
    if (rank0) {
      st.loader_state = loader.state().to_json();
      st.rng_state = rng_state_hex();
      st.extra = {{"config", resolved_yaml}, {"world_size", env.world_size}, {"zero", shards ? c.zero : 0}};
      where = save_train_checkpoint(c.output, student, *opt, st, c.train.keep_last);
    }
    if (dp) dp->barrier();
    return where;
  };

  // ---- loop
  const int64_t st0 = st.step;
  while (st.step < c.train.max_steps) {
    maybe_inject_fault(env, st.step + 1);
    auto t0 = Clock::now();
    student->zero_grad();  // all parameters: with ZeRO the optimizer only knows its shard
    StepResult sum;
    for (int64_t m = 0; m < c.train.grad_accum; ++m) {
      auto b = loader.next();
      if (!b) throw Error("training data ran out at step " + std::to_string(st.step), "set fewer train.max_steps");
      if (reducer && m + 1 == c.train.grad_accum) reducer->arm();  // the last backward pass of the step
      auto r = micro_step(student, teachers, offline, *b, c, true);
      sum.loss += r.loss / c.train.grad_accum, sum.kd += r.kd / c.train.grad_accum, sum.ce += r.ce / c.train.grad_accum;
      sum.tokens += b->B * b->T;
    }
    if (dp) {
      if (reducer) reducer->finish();
      if (shards) shards->reduce_gradients(/*averaged=*/reducer != nullptr);
      else if (!reducer) dp->average_gradients(params, bucket_bytes);
      if (reducer && st.step == st0)
        log.message("step " + std::to_string(st.step + 1) + ": " + std::to_string(reducer->started_during_backward()) + " of " +
                    std::to_string(reducer->buckets()) + " gradient bucket(s) started before backward returned");
      auto m = dp->mean({sum.loss, sum.kd, sum.ce});
      sum.loss = m[0], sum.kd = m[1], sum.ce = m[2];
      sum.tokens *= env.world_size;
    }
    // Gradient bytes this rank holds between the reduction and the step (ZeRO-2: its shard only).
    const int64_t grad_bytes = shards ? shards->gradient_bytes() : gradient_bytes(params);
    double gnorm = shards && shards->stage() == 2 ? shards->clip_grad_norm(c.train.grad_clip)
                                                   : clip_grad_norm(params, c.train.grad_clip);
    if (!std::isfinite(sum.loss) || !std::isfinite(gnorm)) {
      auto last = latest_checkpoint(c.output);
      if (c.train.on_nan == "stop") {
        throw Error("loss is " + std::to_string(sum.loss) + " (gradient norm " + std::to_string(gnorm) + ") at step " +
                    std::to_string(st.step + 1), "the last good checkpoint is " + (last ? *last : std::string("(none yet)")) +
                    "; lower train.lr, or set train.on_nan=skip");
      }
      log.message("step " + std::to_string(st.step + 1) + ": non-finite loss or gradient, step skipped");
      ++st.step;
      continue;
    }
    double lr = lr_at(st.step, c.train);
    set_lr(*opt, lr);
    opt->step();
    release_allocator_cache(size_t{1} << 30);
    if (shards) {
      shards->gather_parameters();
      shards->release_gradients();
    }
    ++st.step;
    st.tokens_seen += sum.tokens;
    double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    if (st.step % c.train.log_every == 0 || st.step == c.train.max_steps) {
      std::map<std::string, double> v = {{"loss", sum.loss}, {"kd", sum.kd}, {"ce", sum.ce}, {"lr", lr},
                    {"grad_norm", gnorm}, {"tokens", static_cast<double>(st.tokens_seen)}, {"tokens_per_s", sum.tokens / secs}};
      // Memory per rank (every rank's numbers, measured where they live): Adam state bytes after
      // the step, gradient bytes held between the reduction and the step.
      std::vector<double> mem = {static_cast<double>(optimizer_state_bytes(*opt)), static_cast<double>(grad_bytes)};
      if (dp) mem = dp->gather_all(mem);
      for (int r = 0; r < env.world_size; ++r) {
        v["optimizer_state_bytes_rank" + std::to_string(r)] = mem[2 * r];
        v["grad_bytes_rank" + std::to_string(r)] = mem[2 * r + 1];
      }
      log.log_train(st.step, c.train.max_steps, v);
    }
    if (c.train.eval_every > 0 && (st.step % c.train.eval_every == 0 || st.step == c.train.max_steps)) {
      if (rank0) {  // the validation set is small and not sharded: rank 0 alone, the others wait
        student->eval();
        log.log_val(st.step, validate_model(student, teachers, c, tok.identity()));
        student->train();
      }
      if (dp) dp->barrier();
    }
    if (c.train.save_every > 0 && st.step % c.train.save_every == 0 && st.step < c.train.max_steps) save();
    if (c.train.stop_after > 0 && st.step == c.train.stop_after && st.step < c.train.max_steps) {
      std::string ck = save();
      log.message("stopped after step " + std::to_string(st.step) + " as asked (train.stop_after); resume with resume=true from " + ck);
      return 0;
    }
  }

  // ---- save
  std::string ck = save();
  if (!rank0) return 0;
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& p : student->named_parameters()) tensors[p.key()] = p.value().detach().cpu();
  SaveOptions so;
  so.dtype = parse_dtype(c.save_dtype, "key 'save_dtype'");
  so.metadata = {{"bonsai.stage", "distill"}, {"bonsai.steps", std::to_string(st.step)}};
  if (std::filesystem::exists(resolve_model(c.student)) && std::filesystem::is_directory(resolve_model(c.student)))
    so.carry_tokenizer_from = resolve_model(c.student);
  save_hf_checkpoint(c.output + "/student", student->config(), tensors, so);
  log.message("done: " + std::to_string(st.step) + " steps, " + std::to_string(st.tokens_seen) + " tokens; checkpoint " +
              ck + "; student " + c.output + "/student");
  return 0;
}

}  // namespace bonsai
