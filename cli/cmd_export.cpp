// `bonsai export`: convert a checkpoint (HF directory, GGUF file, or a short model name) into a
// Hugging Face directory that transformers loads, in the dtype asked for.
#include <chrono>
#include <cstdio>

#include "cli/command.h"
#include "core/strings.h"
#include "model/checkpoint.h"

namespace bonsai {
namespace {

struct ExportConfig {
  std::string model;
  std::string format = "hf";
  std::string dtype = "f32";
  std::string output;
  std::string shard_size = "5GB";
};

int run_export(const ExportConfig& cfg) {
  auto t0 = std::chrono::steady_clock::now();
  torch::ScalarType dtype = parse_dtype(cfg.dtype, "key 'dtype'");
  uint64_t shard = parse_size(cfg.shard_size, "key 'shard_size'");
  Checkpoint ck = load_checkpoint(cfg.model, dtype);
  SaveOptions opt;
  opt.dtype = dtype;
  opt.max_shard_bytes = shard;
  opt.carry_tokenizer_from = ck.hf_dir;
  opt.generation_config = ck.generation_config;
  opt.metadata = {{"bonsai.source", ck.source}, {"bonsai.source_format", ck.format}};
  save_hf_checkpoint(cfg.output, ck.config, ck.tensors, opt);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "exported %s (%s, %.1fM parameters) -> %s [%s, %s] in %.1f s\n", cfg.model.c_str(),
               ck.format.c_str(), ck.config.num_parameters() / 1e6, cfg.output.c_str(), cfg.format.c_str(),
               cfg.dtype.c_str(), secs);
  return 0;
}

}  // namespace

std::unique_ptr<Command> make_export_command(CLI::App& app) {
  auto cmd = std::make_unique<Command>(app, "export", "Write a model as a Hugging Face checkpoint directory");
  auto cfg = std::make_shared<ExportConfig>();
  auto& s = cmd->schema();
  s.add("model", &cfg->model, "source: HF directory, .gguf file, or a known name (smollm2-135m-instruct)");
  s.add_choice("format", &cfg->format, {"hf"}, "output format");
  s.add_choice("dtype", &cfg->dtype, {"f32", "bf16", "f16"}, "dtype of the written weights");
  s.add("output", &cfg->output, "output directory (written atomically: DIR.partial, then renamed)");
  s.add("shard_size", &cfg->shard_size, "largest safetensors shard, e.g. 5GB, 500MB");
  s.require("model", "give --model PATH_OR_NAME");
  s.require("output", "give --output DIR");
  cmd->option("--model,-m", "model", "source checkpoint or known model name");
  cmd->option("--format,-f", "format", "output format");
  cmd->option("--dtype", "dtype", "weight dtype: f32, bf16, f16");
  cmd->option("--output,-o", "output", "output directory");
  cmd->option("--shard-size", "shard_size", "largest shard");
  cmd->finish_help();
  cmd->run = [cfg] { return run_export(*cfg); };
  return cmd;
}

}  // namespace bonsai
