// `bonsai export`: convert a checkpoint (HF directory, GGUF file, or a short model name) into a
// Hugging Face directory that transformers loads, in the dtype asked for.
#include <chrono>
#include <filesystem>
#include <cstdio>

#include <fstream>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "core/strings.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "data/tokenizer_export.h"
#include "model/checkpoint.h"
#include "model/gguf_export.h"

namespace bonsai {
namespace {

struct ExportConfig {
  std::string model;
  std::string format = "hf";
  std::string dtype = "f32";
  std::string output;
  std::string shard_size = "5GB";
};

// The unk token an HF directory's tokenizer_config.json names ("unk_token": "x" or {"content": "x"}).
int32_t hf_unk_id(const std::string& hf_dir, const Tokenizer& tok) {
  std::ifstream f(hf_dir + "/tokenizer_config.json");
  if (!f) return -1;
  nlohmann::json j = nlohmann::json::parse(f, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("unk_token")) return -1;
  const auto& u = j["unk_token"];
  std::string text = u.is_string() ? u.get<std::string>() : (u.is_object() && u.contains("content") && u["content"].is_string())
                                                                ? u["content"].get<std::string>() : "";
  return text.empty() ? -1 : tok.token_id(text);
}

// A GGUF source carries its tokenizer.* keys over; an HF source has them written from its tokenizer.
std::vector<std::pair<std::string, gguf::Value>> gguf_tokenizer_for(const ExportConfig& cfg, const Checkpoint& ck) {
  if (!ck.gguf_tokenizer_kv.empty()) return ck.gguf_tokenizer_kv;
  if (ck.hf_dir.empty())
    throw Error("GGUF export of '" + cfg.model + "': the source has no tokenizer to write into the GGUF",
                "export from an HF directory with tokenizer.json, or from a GGUF");
  try {
    Tokenizer tok = Tokenizer::load(ck.hf_dir);
    GgufTokenizerOptions o;
    if (ck.config.pad_token_id) o.pad_id = static_cast<int32_t>(*ck.config.pad_token_id);
    o.unk_id = hf_unk_id(ck.hf_dir, tok);
    return gguf_tokenizer_kv(tok, o);
  } catch (const Error& e) {
    rethrow_with_context(e, "GGUF export of '" + cfg.model + "'");
  }
}

void export_gguf(const ExportConfig& cfg, const Checkpoint& ck) {
  const auto tokenizer_kv = gguf_tokenizer_for(cfg, ck);
  std::filesystem::create_directories(cfg.output);
  GgufExportOptions opt;
  opt.dtype = cfg.dtype;
  opt.tokenizer_kv = tokenizer_kv;
  write_gguf(cfg.output + "/model.gguf", ck.config, ck.tensors, opt);
  std::string tmpl;
  for (const auto& [k, v] : tokenizer_kv)
    if (k == "tokenizer.chat_template") tmpl = v.as_string();
  if (!tmpl.empty()) write_file_atomic(cfg.output + "/Modelfile", ollama_modelfile("model.gguf", tmpl));
}

// What the HF tokenizer files say beyond the tokenizer itself: context length, pad and unk tokens.
HfTokenizerOptions tokenizer_options(const Checkpoint& ck) {
  HfTokenizerOptions o;
  o.model_max_length = ck.config.max_position_embeddings;
  o.pad_id = static_cast<int32_t>(ck.config.pad_token_id.value_or(-1));
  for (const auto& [k, v] : ck.gguf_tokenizer_kv)
    if (k == "tokenizer.ggml.unknown_token_id") o.unk_id = static_cast<int32_t>(v.as_i64());
  return o;
}

// Removes the tokenizer staging directory however the export ends.
struct RemoveOnExit {
  std::string path;
  ~RemoveOnExit() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

int run_export(const ExportConfig& cfg) {
  auto t0 = std::chrono::steady_clock::now();
  if (cfg.format == "gguf") {
    Checkpoint ck = load_checkpoint(cfg.model, torch::kFloat);
    export_gguf(cfg, ck);
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr, "exported %s -> %s/model.gguf [%s] in %.1f s\n", cfg.model.c_str(), cfg.output.c_str(),
                 cfg.dtype.c_str(), secs);
    return 0;
  }
  if (cfg.dtype == "q8_0") throw Error("dtype q8_0 is for --format gguf", "HF checkpoints take f32, bf16 or f16");
  torch::ScalarType dtype = parse_dtype(cfg.dtype, "key 'dtype'");
  uint64_t shard = parse_size(cfg.shard_size, "key 'shard_size'");
  Checkpoint ck = load_checkpoint(cfg.model, dtype);
  SaveOptions opt;
  opt.dtype = dtype;
  opt.max_shard_bytes = shard;
  // A GGUF (or an HF directory without tokenizer.json) gets HF tokenizer files written from its own.
  RemoveOnExit staging{cfg.output + ".tokenizer.partial"};
  std::string why;
  opt.carry_tokenizer_from = stage_hf_tokenizer(ck.source, ck.hf_dir, staging.path, tokenizer_options(ck), why);
  if (!why.empty()) std::fprintf(stderr, "warning: no tokenizer files written: %s\n", why.c_str());
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
  auto cmd = std::make_unique<Command>(app, "export", "Write a model as a Hugging Face directory or a GGUF file");
  auto cfg = std::make_shared<ExportConfig>();
  auto& s = cmd->schema();
  s.add("model", &cfg->model, "source: HF directory, .gguf file, or a known name (smollm2-135m-instruct)");
  s.add_choice("format", &cfg->format, {"hf", "gguf"}, "output format (gguf: DIR/model.gguf + an Ollama Modelfile)");
  s.add_choice("dtype", &cfg->dtype, {"f32", "bf16", "f16", "q8_0"}, "dtype of the written weights (q8_0: gguf only)");
  s.add("output", &cfg->output, "output directory (hf: written as DIR.partial, then renamed)");
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
