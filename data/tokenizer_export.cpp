// Hugging Face tokenizer files from a bonsai Tokenizer (see data/tokenizer_export.h), and the
// Tokenizer accessors that expose its content in file form. The tokenizer.json mirrors what bonsai
// does when encoding: special/added tokens matched first, then each split regex isolating pieces in
// order, then byte-level BPE with the explicit merge list (ignore_merges as loaded).
#include "data/tokenizer_export.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <unordered_map>

#include "core/atomic_file.h"
#include "core/error.h"
#include "data/tokenizer_impl.h"

namespace bonsai {

// ---- Tokenizer accessors (declared in data/tokenizer.h) -----------------------------------------

Tokenizer::TokenType Tokenizer::token_type(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= impl_->kind.size()) return TokenType::Missing;
  switch (impl_->kind[id]) {
    case tok::TokenKind::Normal: return TokenType::Normal;
    case tok::TokenKind::Special: return TokenType::Special;
    case tok::TokenKind::Added: return TokenType::Added;
    default: return TokenType::Missing;
  }
}

bool Tokenizer::token_lstrip(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->strip.size() && (impl_->strip[id] & 1) != 0;
}
bool Tokenizer::token_rstrip(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->strip.size() && (impl_->strip[id] & 2) != 0;
}
const std::vector<std::string>& Tokenizer::split_patterns() const { return impl_->pre->patterns(); }
bool Tokenizer::ignore_merges() const { return impl_->ignore_merges; }
bool Tokenizer::merges_by_rank() const { return impl_->ranks_are_ids; }
const std::vector<std::pair<int32_t, int32_t>>& Tokenizer::merges() const { return impl_->merge_list; }

namespace {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;  // keeps keys in the order HF's own files have them

// A JSON string literal. nlohmann refuses to dump invalid UTF-8, and so would HF's loader.
std::string quote(const std::string& s, const Tokenizer& tok, int32_t id) {
  try {
    return nlohmann::json(s).dump();
  } catch (const nlohmann::json::type_error&) {
    throw Error("tokenizer '" + tok.source() + "': token " + std::to_string(id) +
                    " is not valid UTF-8, so it cannot be written to a tokenizer.json",
                "HF tokenizer files hold byte-level token strings, which are always valid UTF-8");
  }
}

bool is_added(const Tokenizer& tok, int32_t id) {
  auto t = tok.token_type(id);
  return t == Tokenizer::TokenType::Special || t == Tokenizer::TokenType::Added;
}

// One entry of "added_tokens" (tokenizer.json) / "added_tokens_decoder" (tokenizer_config.json).
ojson added_token(const Tokenizer& tok, int32_t id, bool with_id) {
  ojson t;
  if (with_id) t["id"] = id;
  t["content"] = tok.token_text(id);
  t["single_word"] = false;
  t["lstrip"] = tok.token_lstrip(id);
  t["rstrip"] = tok.token_rstrip(id);
  t["normalized"] = false;  // there is no normalizer; matched against the raw text
  t["special"] = tok.token_type(id) == Tokenizer::TokenType::Special;
  return t;
}

// Split(regex, Isolated) per pattern, then ByteLevel without its own regex: the same pieces as
// bonsai's PreTokenizer (each stage splits the previous stage's pieces).
ojson pre_tokenizer(const Tokenizer& tok) {
  ojson steps = ojson::array();
  for (const auto& p : tok.split_patterns())
    steps.push_back({{"type", "Split"}, {"pattern", {{"Regex", p}}}, {"behavior", "Isolated"}, {"invert", false}});
  steps.push_back({{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}});
  return {{"type", "Sequence"}, {"pretokenizers", steps}};
}

// BOS prepended only when the model wants it; what tokenizer(text) in transformers then does, and
// what the tokenizer.json loader reads back as add_bos.
ojson post_processor(const Tokenizer& tok) {
  if (!tok.add_bos() || tok.bos_id() < 0)
    return {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}};
  const std::string bos = tok.token_text(tok.bos_id());
  auto special = [&](int type_id) { return ojson{{"SpecialToken", {{"id", bos}, {"type_id", type_id}}}}; };
  auto seq = [](const char* id, int type_id) { return ojson{{"Sequence", {{"id", id}, {"type_id", type_id}}}}; };
  ojson spec = {{"id", bos}, {"ids", ojson::array({tok.bos_id()})}, {"tokens", ojson::array({bos})}};
  ojson specials = ojson::object();
  specials[bos] = spec;
  return {{"type", "TemplateProcessing"},
          {"single", ojson::array({special(0), seq("A", 0)})},
          {"pair", ojson::array({special(0), seq("A", 0), special(1), seq("B", 1)})},
          {"special_tokens", specials}};
}

// The BPE model, written by hand: ordered_json inserts in linear time per key, too slow for a
// 100k-token vocabulary; one token and one merge per line keeps the file readable and diffable.
std::string bpe_model(const Tokenizer& tok) {
  if (tok.merges_by_rank())
    throw Error("tokenizer '" + tok.source() + "' is a tiktoken ranks file, which has no explicit merge list",
                "a tokenizer.json needs merges; convert it with transformers' TikTokenConverter instead");
  std::string out = "{\n    \"type\": \"BPE\",\n    \"dropout\": null,\n    \"unk_token\": null,\n"
                    "    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n"
                    "    \"fuse_unk\": false,\n    \"byte_fallback\": false,\n    \"ignore_merges\": ";
  out += tok.ignore_merges() ? "true" : "false";
  out += ",\n    \"vocab\": {";
  std::unordered_map<std::string, int32_t> seen;  // a JSON object cannot hold one string twice
  const auto n = static_cast<int32_t>(tok.vocab_size());
  bool first = true;
  for (int32_t id = 0; id < n; ++id) {
    if (tok.token_type(id) == Tokenizer::TokenType::Missing) continue;
    std::string text = tok.token_text(id);
    auto [it, fresh] = seen.emplace(text, id);
    if (!fresh)
      throw Error("tokenizer '" + tok.source() + "': ids " + std::to_string(it->second) + " and " + std::to_string(id) +
                  " are both '" + text + "', which a tokenizer.json vocabulary cannot express");
    out += first ? "\n      " : ",\n      ";
    out += quote(text, tok, id) + ": " + std::to_string(id);
    first = false;
  }
  out += "\n    },\n    \"merges\": [";
  first = true;
  for (const auto& [a, b] : tok.merges()) {
    out += first ? "\n      [" : ",\n      [";
    out += quote(tok.token_text(a), tok, a) + ", " + quote(tok.token_text(b), tok, b) + "]";
    first = false;
  }
  out += "\n    ]\n  }";
  return out;
}

// into[key] = the token's string; left out when the model has no such token.
void set_token(const Tokenizer& tok, int32_t id, ojson& into, const char* key) {
  if (id >= 0 && id < tok.vocab_size()) into[key] = tok.token_text(id);
}

}  // namespace

std::string hf_tokenizer_json(const Tokenizer& tok) {
  std::string model = bpe_model(tok);  // first: it refuses what cannot be written
  std::string out = "{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n  \"added_tokens\": [";
  bool first = true;
  for (int32_t id = 0; id < tok.vocab_size(); ++id) {
    if (!is_added(tok, id)) continue;
    out += (first ? "\n    " : ",\n    ") + added_token(tok, id, true).dump();
    first = false;
  }
  out += "\n  ],\n  \"normalizer\": null,\n";
  out += "  \"pre_tokenizer\": " + pre_tokenizer(tok).dump() + ",\n";
  out += "  \"post_processor\": " + post_processor(tok).dump() + ",\n";
  out += "  \"decoder\": " +
         ojson({{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}).dump() +
         ",\n";
  out += "  \"model\": " + model + "\n}\n";
  return out;
}

std::string hf_tokenizer_config_json(const Tokenizer& tok, const HfTokenizerOptions& opt) {
  ojson c;
  c["add_bos_token"] = tok.add_bos() && tok.bos_id() >= 0;
  c["add_eos_token"] = false;
  c["add_prefix_space"] = false;
  ojson decoder = ojson::object();
  for (int32_t id = 0; id < tok.vocab_size(); ++id)
    if (is_added(tok, id)) decoder[std::to_string(id)] = added_token(tok, id, false);
  c["added_tokens_decoder"] = decoder;
  set_token(tok, tok.bos_id(), c, "bos_token");
  if (!tok.chat_template().empty()) c["chat_template"] = tok.chat_template();
  // Byte-level BPE decodes exactly; HF's clean-up would drop spaces before punctuation.
  c["clean_up_tokenization_spaces"] = false;
  set_token(tok, tok.eos_id(), c, "eos_token");
  if (opt.model_max_length > 0) c["model_max_length"] = opt.model_max_length;
  set_token(tok, opt.pad_id, c, "pad_token");
  // The generic class loads tokenizer.json as written; model-specific classes (LlamaTokenizerFast,
  // GPT2Tokenizer) may rebuild the pre-tokenizer from their own defaults.
  c["tokenizer_class"] = "PreTrainedTokenizerFast";
  set_token(tok, opt.unk_id, c, "unk_token");
  return c.dump(2) + "\n";
}

std::string hf_special_tokens_map_json(const Tokenizer& tok, const HfTokenizerOptions& opt) {
  ojson m = ojson::object();
  auto add = [&](const char* key, int32_t id) {
    if (id < 0 || id >= tok.vocab_size()) return;
    m[key] = {{"content", tok.token_text(id)}, {"lstrip", tok.token_lstrip(id)}, {"normalized", false},
              {"rstrip", tok.token_rstrip(id)}, {"single_word", false}};
  };
  add("bos_token", tok.bos_id());
  add("eos_token", tok.eos_id());
  add("pad_token", opt.pad_id);
  add("unk_token", opt.unk_id);
  return m.dump(2) + "\n";
}

void write_hf_tokenizer(const Tokenizer& tok, const std::string& dir, const HfTokenizerOptions& opt) {
  // Build all three first, so a tokenizer that cannot be written leaves no partial set behind.
  std::string tj = hf_tokenizer_json(tok);
  std::string cfg = hf_tokenizer_config_json(tok, opt);
  std::string map = hf_special_tokens_map_json(tok, opt);
  write_file_atomic((fs::path(dir) / "tokenizer.json").string(), tj);
  write_file_atomic((fs::path(dir) / "tokenizer_config.json").string(), cfg);
  write_file_atomic((fs::path(dir) / "special_tokens_map.json").string(), map);
}

std::string stage_hf_tokenizer(const std::string& source, const std::string& hf_dir, const std::string& staging,
                               const HfTokenizerOptions& opt, std::string& why) {
  std::error_code ec;
  why.clear();
  if (!hf_dir.empty()) {
    fs::path d(hf_dir);
    if (fs::exists(d / "tokenizer.json", ec)) return hf_dir;
    bool has_any = (fs::exists(d / "vocab.json", ec) && fs::exists(d / "merges.txt", ec)) ||
                   fs::exists(d / "tokenizer.model", ec);
    if (!has_any) {
      why = "'" + hf_dir + "' has no tokenizer files (tokenizer.json, vocab.json + merges.txt, tokenizer.model)";
      return "";
    }
  }
  try {
    Tokenizer tok = Tokenizer::load(hf_dir.empty() ? source : hf_dir);
    fs::remove_all(staging, ec);
    fs::create_directories(staging);
    write_hf_tokenizer(tok, staging, opt);
  } catch (const Error& e) {
    fs::remove_all(staging, ec);
    why = e.what();
    return "";
  }
  // The source directory's own files win (its tokenizer_config.json knows more than we derive);
  // links are free, and the checkpoint writer copies only the tokenizer files among them.
  if (!hf_dir.empty()) {
    for (const auto& entry : fs::directory_iterator(hf_dir)) {
      if (!entry.is_regular_file()) continue;
      fs::path link = fs::path(staging) / entry.path().filename();
      fs::remove(link, ec);
      fs::create_symlink(fs::absolute(entry.path()), link);
    }
  }
  return staging;
}

std::vector<std::pair<std::string, gguf::Value>> gguf_tokenizer_kv(const Tokenizer& tok, const GgufTokenizerOptions& opt) {
  using gguf::Value;
  using gguf::ValueType;
  const std::string where = "GGUF tokenizer metadata from '" + tok.source() + "'";
  if (tok.merges_by_rank())
    throw Error(where + ": a tiktoken ranks file has no merge list, which GGUF's gpt2 tokenizer needs",
                "export from a checkpoint whose tokenizer.json lists its merges");
  const std::string pre = tok.pre_tokenizer_name();
  if (pre == "custom")
    throw Error(where + ": its pre-tokenizer split patterns have no llama.cpp name (llama-bpe, gpt-2, smollm, "
                        "starcoder), so llama.cpp would split text differently",
                "export to HF safetensors instead, or add the pattern's name to the tokenizer");
  const int64_t V = tok.vocab_size();
  std::vector<Value> tokens, types, merges;
  tokens.reserve(V);
  types.reserve(V);
  for (int32_t id = 0; id < V; ++id) {
    switch (tok.token_type(id)) {
      case Tokenizer::TokenType::Missing:
        tokens.push_back(Value::string("[PAD" + std::to_string(id) + "]"));
        types.push_back(Value::i32(5));  // UNUSED
        continue;
      case Tokenizer::TokenType::Normal: types.push_back(Value::i32(1)); break;
      case Tokenizer::TokenType::Special: types.push_back(Value::i32(3)); break;  // CONTROL
      case Tokenizer::TokenType::Added: types.push_back(Value::i32(4)); break;    // USER_DEFINED
    }
    tokens.push_back(Value::string(tok.token_text(id)));
  }
  merges.reserve(tok.merges().size());
  for (const auto& [a, b] : tok.merges()) merges.push_back(Value::string(tok.token_text(a) + " " + tok.token_text(b)));
  std::vector<std::pair<std::string, Value>> kv;
  kv.emplace_back("tokenizer.ggml.model", Value::string("gpt2"));
  kv.emplace_back("tokenizer.ggml.pre", Value::string(pre));
  kv.emplace_back("tokenizer.ggml.tokens", Value::array(ValueType::STRING, std::move(tokens)));
  kv.emplace_back("tokenizer.ggml.token_type", Value::array(ValueType::I32, std::move(types)));
  kv.emplace_back("tokenizer.ggml.merges", Value::array(ValueType::STRING, std::move(merges)));
  if (tok.bos_id() >= 0) kv.emplace_back("tokenizer.ggml.bos_token_id", Value::u32(static_cast<uint32_t>(tok.bos_id())));
  if (tok.eos_id() >= 0) kv.emplace_back("tokenizer.ggml.eos_token_id", Value::u32(static_cast<uint32_t>(tok.eos_id())));
  if (opt.unk_id >= 0) kv.emplace_back("tokenizer.ggml.unknown_token_id", Value::u32(static_cast<uint32_t>(opt.unk_id)));
  if (opt.pad_id >= 0) kv.emplace_back("tokenizer.ggml.padding_token_id", Value::u32(static_cast<uint32_t>(opt.pad_id)));
  kv.emplace_back("tokenizer.ggml.add_bos_token", Value::boolean(tok.add_bos()));
  kv.emplace_back("tokenizer.ggml.add_space_prefix", Value::boolean(false));
  if (!tok.chat_template().empty()) kv.emplace_back("tokenizer.chat_template", Value::string(tok.chat_template()));
  return kv;
}

}  // namespace bonsai
