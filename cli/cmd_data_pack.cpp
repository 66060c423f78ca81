// `bonsai data pack`: tokenize text / instruction / preference datasets into HDF5 token shards for
// training (data/pack.h has the formats, data/shards.h the file format).
//   bonsai data pack --config configs/data/c4_demo.yaml
//   bonsai data pack -t TOKENIZER -o OUT_DIR --format jsonl --input 'data/*.jsonl.gz'
#include <cstdio>

#include "cli/command.h"
#include "core/error.h"
#include "core/strings.h"
#include "data/pack.h"

namespace bonsai {
namespace {

// The config as the schema sees it: scalar keys, and `sources` as a list of strings. An entry is a
// path or glob (taking format, split, field, ... from the top-level keys below), or a quoted flow
// map giving one source its own options: "{path: a.json, format: alpaca}".
struct PackCliConfig {
  PackConfig pack;
  std::vector<std::string> sources;
  PackSource defaults;
  std::string max_doc_bytes = "64MB";
};

// The command as typed (reconstructed from what CLI11 parsed), recorded in every shard.
std::string command_line(const Command& cmd) {
  std::string line = "bonsai data pack";
  for (const CLI::Option* opt : cmd.app()->get_options()) {
    if (opt->count() == 0) continue;
    std::string name = !opt->get_lnames().empty() ? "--" + opt->get_lnames()[0]
                       : !opt->get_snames().empty() ? "-" + opt->get_snames()[0] : "";
    if (opt->get_expected_min() == 0) {  // a flag
      line += " " + name;
      continue;
    }
    for (const auto& r : opt->results()) line += (name.empty() ? " " : " " + name + " ") + r;
  }
  return line;
}

int run_pack(PackCliConfig& cfg, const Command& cmd) {
  YAML::Node list(YAML::NodeType::Sequence);
  for (const auto& s : cfg.sources) {
    if (!s.empty() && s[0] == '{') {
      try {
        list.push_back(YAML::Load(s));
      } catch (const YAML::Exception& e) {
        throw Error("key 'sources': entry '" + s + "' is not a valid YAML map: " + e.msg);
      }
    } else {
      list.push_back(s);
    }
  }
  PackConfig pc = cfg.pack;
  pc.sources = parse_sources(list, cfg.defaults, "key 'sources'");
  pc.max_doc_bytes = static_cast<int64_t>(parse_size(cfg.max_doc_bytes, "key 'max_doc_bytes'"));
  pc.progress = true;
  pc.created_by = command_line(cmd);
  PackStats stats = pack_dataset(pc);
  std::fprintf(stderr, "%s -> %s\n", stats.summary().c_str(), pc.output.c_str());
  return 0;
}

void declare_keys(ConfigSchema& s, PackCliConfig& c) {
  s.add("tokenizer", &c.pack.tokenizer, "tokenizer: model directory, tokenizer.json, tiktoken file or .gguf");
  s.add("output", &c.pack.output, "output directory (shard-NNNNN.h5 + index.json)");
  s.add_choice("kind", &c.pack.kind, {"pretrain", "sft", "preference"}, "what the shards hold");
  s.add("sources", &c.sources,
        "inputs: paths/globs (using the keys below), or quoted maps \"{path: P, format: F, ...}\"");
  s.add("format", &c.defaults.format, "input format: " + join(pack_formats(), ", "));
  s.add_choice("split", &c.defaults.split, {"file", "paragraph", "line"}, "text: what one document is");
  s.add("field", &c.defaults.field, "jsonl: the field holding the text");
  s.add("messages_field", &c.defaults.messages_field, "sharegpt/messages: the field holding the turns ('' = default)");
  s.add("prompt_field", &c.defaults.prompt_field, "paired: the prompt field");
  s.add("chosen_field", &c.defaults.chosen_field, "preference: the preferred response field");
  s.add("rejected_field", &c.defaults.rejected_field, "preference: the other response field");
  s.add("system_prompt", &c.defaults.system_prompt, "sft/preference: a system message before every chat");
  s.add("shard_tokens", &c.pack.shard_tokens, "most tokens per shard");
  s.add("eos_between_docs", &c.pack.eos_between_docs, "pretrain: append EOS after every document");
  s.add_choice("add_bos", &c.pack.add_bos, {"auto", "true", "false"}, "pretrain: BOS before every document");
  s.add("chat_template", &c.pack.chat_template, "sft/preference: chatml, llama3, llama3.1, llama3.2 or smollm2; '' = the tokenizer's own");
  s.add("threads", &c.pack.threads, "tokenizer threads (0 = all cores)");
  s.add("limit", &c.pack.limit, "stop after this many documents (0 = all)");
  s.add("max_doc_bytes", &c.max_doc_bytes, "text split=file: largest document, e.g. 64MB");
  s.add("chunk_tokens", &c.pack.chunk_tokens, "HDF5 chunk size in tokens");
  s.add("compression_level", &c.pack.compression_level, "deflate level 0..9");
  s.add("overwrite", &c.pack.overwrite, "replace a pack already in output");
  s.require("tokenizer", "give --tokenizer PATH (the model's tokenizer: shards are tied to it)");
  s.require("output", "give --output DIR");
  s.require("sources", "list the inputs under 'sources' in the config, or give --input PATH");
}

}  // namespace

std::unique_ptr<Command> make_data_pack_command(CLI::App& data_app) {
  auto cmd = std::make_unique<Command>(data_app, "pack", "Tokenize datasets into HDF5 token shards for training");
  auto cfg = std::make_shared<PackCliConfig>();
  declare_keys(cmd->schema(), *cfg);
  cmd->option("--tokenizer,-t", "tokenizer", "tokenizer (the model's)");
  cmd->option("--output,-o", "output", "output directory");
  cmd->option("--kind", "kind", "pretrain, sft or preference");
  cmd->option("--input,-i", "sources", "one input path or glob");
  cmd->option("--format,-f", "format", "input format");
  cmd->option("--shard-tokens", "shard_tokens", "most tokens per shard");
  cmd->option("--chat-template", "chat_template", "built-in chat template");
  cmd->option("--limit", "limit", "stop after this many documents");
  cmd->option("--threads", "threads", "tokenizer threads");
  cmd->flag("--overwrite", "overwrite", "replace an earlier pack in the output directory");
  cmd->finish_help();
  Command* self = cmd.get();
  cmd->run = [cfg, self] { return run_pack(*cfg, *self); };
  return cmd;
}

}  // namespace bonsai
