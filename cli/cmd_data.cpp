// `bonsai data tokenize`: text -> token ids (one line of space-separated ids per input line), or with
// --decode ids -> text, with any tokenizer bonsai reads (tokenizer.json, model directory, .gguf,
// tiktoken file, vocab.json + merges.txt, or a known model name).
//   bonsai data tokenize --tokenizer smollm2-135m-instruct --text 'Hello world'
//   bonsai data tokenize -t tokenizer.json --file corpus.txt --bos > ids.txt
//   bonsai data tokenize -t tokenizer.json --decode --file ids.txt
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>

#include "cli/command.h"
#include "core/error.h"
#include "data/tokenizer.h"

namespace bonsai {
namespace {

struct TokenizeConfig {
  std::string tokenizer;
  std::string file;  // "-" or "" (with no text) = standard input
  std::string text;
  bool no_special = false;
  bool decode = false;
  bool bos = false;
};

std::string read_input(const TokenizeConfig& cfg) {
  if (!cfg.text.empty() && !cfg.file.empty()) throw Error("give --text or --file, not both");
  if (!cfg.text.empty()) return cfg.text;
  std::stringstream ss;
  if (cfg.file.empty() || cfg.file == "-") {
    ss << std::cin.rdbuf();
  } else {
    std::ifstream f(cfg.file, std::ios::binary);
    if (!f) throw Error("cannot open input file '" + cfg.file + "'");
    ss << f.rdbuf();
  }
  return ss.str();
}

// Lines without their '\n'; a final newline does not start another (empty) line.
std::vector<std::string_view> split_lines(const std::string& s) {
  std::vector<std::string_view> lines;
  for (size_t pos = 0; pos < s.size();) {
    size_t nl = s.find('\n', pos);
    if (nl == std::string::npos) nl = s.size();
    lines.emplace_back(s.data() + pos, nl - pos);
    pos = nl + 1;
  }
  return lines;
}

std::vector<int32_t> parse_ids(std::string_view line, size_t line_no) {
  std::vector<int32_t> ids;
  std::string buf(line);
  std::istringstream in(buf);
  for (std::string word; in >> word;) {
    char* end = nullptr;
    long v = std::strtol(word.c_str(), &end, 10);
    if (*end != '\0' || v < INT32_MIN || v > INT32_MAX)
      throw Error("line " + std::to_string(line_no) + ": '" + word + "' is not a token id",
                  "--decode reads lines of space-separated integer ids");
    ids.push_back(static_cast<int32_t>(v));
  }
  return ids;
}

int run_tokenize(const TokenizeConfig& cfg) {
  if (cfg.decode && cfg.bos) throw Error("--bos applies to encoding, not to --decode");
  Tokenizer tok = Tokenizer::load(cfg.tokenizer);
  if (cfg.bos && tok.bos_id() < 0) throw Error("tokenizer '" + cfg.tokenizer + "' has no BOS token, so --bos cannot add one");
  std::string input = read_input(cfg);
  std::string out;
  size_t line_no = 0;
  for (std::string_view line : split_lines(input)) {
    ++line_no;
    out.clear();
    if (cfg.decode) {
      try {
        out = tok.decode(parse_ids(line, line_no), /*skip_special=*/cfg.no_special);
      } catch (const Error& e) {
        if (std::string(e.what()).rfind("line ", 0) == 0) throw;
        rethrow_with_context(e, "line " + std::to_string(line_no));
      }
    } else {
      std::vector<int32_t> ids = tok.encode(line, /*parse_special=*/!cfg.no_special);
      if (cfg.bos) out = std::to_string(tok.bos_id());
      for (int32_t id : ids) out += (out.empty() ? "" : " ") + std::to_string(id);
    }
    out += '\n';
    std::fwrite(out.data(), 1, out.size(), stdout);
  }
  return std::fflush(stdout) == 0 ? 0 : 1;
}

// `bonsai data`, created once: other data subcommands (pack) hang under the same App.
CLI::App& data_app(CLI::App& app) {
  auto found = app.get_subcommands([](CLI::App* a) { return a->get_name() == "data"; });
  if (!found.empty()) return *found.front();
  CLI::App* data = app.add_subcommand("data", "Data tools: tokenize text, pack datasets into token shards");
  data->require_subcommand(1);
  return *data;
}

}  // namespace

std::unique_ptr<Command> make_data_tokenize_command(CLI::App& data) {
  auto cmd = std::make_unique<Command>(data, "tokenize",
                                       "Encode text to token ids (one line of ids per input line), or decode ids");
  auto cfg = std::make_shared<TokenizeConfig>();
  auto& s = cmd->schema();
  s.add("tokenizer", &cfg->tokenizer,
        "tokenizer.json, model directory, .gguf, tiktoken ranks file, vocab.json (+ merges.txt), or a known model name");
  s.add("file", &cfg->file, "input file ('-' or unset with no text: standard input)");
  s.add("text", &cfg->text, "input text given inline (each line is encoded separately)");
  s.add("no_special", &cfg->no_special,
        "encode special-token strings (<|eot_id|>) as plain text; with decode: leave special tokens out");
  s.add("decode", &cfg->decode, "read lines of ids and print the text");
  s.add("bos", &cfg->bos, "prepend the model's BOS id to every line");
  s.require("tokenizer", "give --tokenizer PATH_OR_NAME");
  cmd->option("--tokenizer,-t", "tokenizer", "the tokenizer");
  cmd->option("--file,-f", "file", "input file");
  cmd->option("--text", "text", "input text");
  cmd->flag("--no-special", "no_special", "no special-token parsing (decode: skip special tokens)");
  cmd->flag("--decode,-d", "decode", "ids -> text");
  cmd->flag("--bos", "bos", "prepend BOS");
  cmd->finish_help();
  cmd->run = [cfg] { return run_tokenize(*cfg); };
  return cmd;
}

std::unique_ptr<Command> make_data_command(CLI::App& app) { return make_data_tokenize_command(data_app(app)); }

}  // namespace bonsai
