#include "train/train_state.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/atomic_file.h"
#include "core/error.h"
#include "model/checkpoint.h"

namespace bonsai {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%08ld", static_cast<long>(step));
  return buf;
}

void prune_old(const fs::path& dir, int64_t keep_last) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) {
    std::string n = e.path().filename().string();
    if (n.rfind("step-", 0) == 0 && n.find('.') == std::string::npos) names.push_back(n);
  }
  std::sort(names.begin(), names.end());
  for (size_t i = 0; i + keep_last < names.size(); ++i) fs::remove_all(dir / names[i]);
}

}  // namespace

std::string rng_state_hex() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  torch::Tensor s = gen.get_state();
  std::string hex;
  const uint8_t* p = s.data_ptr<uint8_t>();
  static const char* digits = "0123456789abcdef";
  for (int64_t i = 0; i < s.numel(); ++i) hex += digits[p[i] >> 4], hex += digits[p[i] & 15];
  return hex;
}

void set_rng_state_hex(const std::string& hex, const std::string& where) {
  if (hex.size() % 2 != 0) throw Error(where + ": RNG state has odd length");
  torch::Tensor s = torch::empty({static_cast<int64_t>(hex.size() / 2)}, torch::kUInt8);
  auto val = [&](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    throw Error(where + ": RNG state is not hex");
  };
  for (size_t i = 0; i < hex.size(); i += 2) s.data_ptr<uint8_t>()[i / 2] = static_cast<uint8_t>(val(hex[i]) * 16 + val(hex[i + 1]));
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(s);
}

std::string save_train_checkpoint(const std::string& run_dir, Llama& model, torch::optim::Optimizer& opt,
                                  const TrainState& st, int64_t keep_last) {
  fs::path root = fs::path(run_dir) / "checkpoints";
  fs::create_directories(root);
  const std::string name = step_name(st.step);
  fs::path partial = root / (name + ".partial"), final_dir = root / name;
  fs::remove_all(partial);
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& p : model->named_parameters()) tensors[p.key()] = p.value().detach();
  SaveOptions so;
  so.dtype = torch::kFloat;
  so.metadata = {{"bonsai.step", std::to_string(st.step)}};
  save_hf_checkpoint(partial.string(), model->config(), tensors, so);  // writes partial.partial -> partial
  torch::save(opt, (partial / "optimizer.pt").string());
  json j = {{"step", st.step}, {"tokens_seen", st.tokens_seen}, {"loader_state", st.loader_state},
            {"rng_state", st.rng_state}, {"extra", st.extra}, {"format", "bonsai-train-state-v1"}};
  write_file_atomic((partial / "trainer_state.json").string(), j.dump(2) + "\n");
  fs::remove_all(final_dir);
  fs::rename(partial, final_dir);
  write_file_atomic((root / "latest").string(), name + "\n");
  prune_old(root, keep_last);
  return final_dir.string();
}

std::optional<std::string> latest_checkpoint(const std::string& run_dir) {
  fs::path root = fs::path(run_dir) / "checkpoints";
  std::ifstream in(root / "latest");
  std::string name;
  if (!(in >> name)) return std::nullopt;
  if (!fs::exists(root / name / "trainer_state.json")) {
    throw Error("checkpoint '" + (root / name).string() + "' named by 'latest' is incomplete",
                "remove " + (root / "latest").string() + " to start over, or point --resume at another checkpoint");
  }
  return (root / name).string();
}

TrainState load_train_checkpoint(const std::string& dir, Llama& model, torch::optim::Optimizer& opt, bool load_optimizer) {
  const std::string state_path = dir + "/trainer_state.json";
  std::ifstream in(state_path);
  if (!in) throw Error("cannot read '" + state_path + "'", "is this a bonsai training checkpoint directory?");
  json j = json::parse(in, nullptr, false);
  if (j.is_discarded() || j.value("format", "") != "bonsai-train-state-v1")
    throw Error("'" + state_path + "' is not a bonsai training state (format bonsai-train-state-v1)");
  Checkpoint ck = load_checkpoint(dir, torch::kFloat);
  if (!(ck.config == model->config()))
    throw Error("checkpoint '" + dir + "' holds a model of another shape than this run's", "resume with the config that wrote it");
  {
    torch::NoGradGuard ng;
    for (auto& p : model->named_parameters()) p.value().copy_(ck.tensors.at(p.key()));
  }
  // Onto the model's device: rank 0 saved it from its own (cuda:0 on GPUs), every rank loads it.
  if (load_optimizer) torch::load(opt, dir + "/optimizer.pt", model->parameters().front().device());
  TrainState st;
  st.step = j.at("step").get<int64_t>();
  st.tokens_seen = j.at("tokens_seen").get<int64_t>();
  st.loader_state = j.at("loader_state").get<std::string>();
  st.rng_state = j.at("rng_state").get<std::string>();
  st.extra = j.value("extra", json::object());
  set_rng_state_hex(st.rng_state, state_path);
  return st;
}

}  // namespace bonsai
