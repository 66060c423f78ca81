// Tokenizer loaders: Hugging Face tokenizer.json (+ tokenizer_config.json beside it), tiktoken
// ranks files (with the Llama 3 special tokens), GGUF tokenizer metadata, and GPT-2's
// vocab.json + merges.txt. Each fills Tokenizer::Impl's vocabulary, merges and split patterns and
// calls finish(); every error names the file and what was expected.
#include <nlohmann/json.hpp>

#include <charconv>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "data/tokenizer_impl.h"
#include "model/gguf.h"

namespace bonsai::tok {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Impl = Tokenizer::Impl;

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error("cannot open tokenizer file '" + path + "'");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

json parse_json_file(const std::string& path) {
  std::string text = read_file(path);
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    throw Error("invalid JSON in '" + path + "' (byte " + std::to_string(e.byte) + "): " + e.what());
  }
}

std::string clip(const std::string& s, size_t n = 60) { return s.size() <= n ? s : s.substr(0, n) + "..."; }

// Grows the vocabulary so that `id` exists.
void ensure_id(Impl& im, size_t id) {
  if (id >= im.text.size()) {
    im.text.resize(id + 1);
    im.kind.resize(id + 1, TokenKind::Missing);
  }
}

// Resolves merges given as token-string pairs; rank = position. Like HF, a merge whose parts or
// result are not in the vocabulary is an error.
void set_merges(Impl& im, const std::vector<std::pair<std::string, std::string>>& merges, const std::string& where) {
  FlatStringMap<int32_t> index;
  index.reserve(im.text.size());
  for (size_t i = 0; i < im.text.size(); ++i)
    if (im.kind[i] != TokenKind::Missing) index.insert(im.text[i], static_cast<int32_t>(i));
  im.merges.reserve(merges.size());
  im.merge_list.reserve(merges.size());
  for (size_t r = 0; r < merges.size(); ++r) {
    const auto& [a, b] = merges[r];
    const int32_t* ia = index.find(a);
    const int32_t* ib = index.find(b);
    const int32_t* iab = index.find(a + b);
    if (ia == nullptr || ib == nullptr || iab == nullptr) {
      std::string missing = ia == nullptr ? a : ib == nullptr ? b : a + b;
      throw Error(where + ": merge #" + std::to_string(r) + " '" + a + " " + b + "': '" + missing +
                  "' is not in the vocabulary");
    }
    im.merges.insert(*ia, *ib, static_cast<int32_t>(r), *iab);
    im.merge_list.emplace_back(*ia, *ib);
  }
}

// "a b" -> (a, b); the separator is the first space after position 0 (as llama.cpp reads it).
bool split_merge(const std::string& m, std::pair<std::string, std::string>& out) {
  size_t sp = m.find(' ', 1);
  if (sp == std::string::npos || m.find(' ', sp + 1) != std::string::npos) return false;
  out = {m.substr(0, sp), m.substr(sp + 1)};
  return !out.first.empty() && !out.second.empty();
}

// ---- tokenizer.json -------------------------------------------------------------------------

std::string regex_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && static_cast<unsigned char>(c) < 0x80) out += '\\';
    out += c;
  }
  return out;
}

// HF pre_tokenizer -> split patterns. Only the steps a byte-level BPE uses are accepted.
void parse_pre_tokenizer(const json& pt, const std::string& path, std::vector<std::string>& patterns, bool& byte_level) {
  std::string type = pt.value("type", "");
  if (type == "Sequence") {
    for (const auto& p : pt.at("pretokenizers")) parse_pre_tokenizer(p, path, patterns, byte_level);
  } else if (type == "ByteLevel") {
    if (pt.value("add_prefix_space", false))
      throw Error("tokenizer '" + path + "': ByteLevel pre-tokenizer with add_prefix_space=true is not supported");
    byte_level = true;
    if (pt.value("use_regex", true)) patterns.push_back(kPatternGpt2);
  } else if (type == "Split") {
    std::string behavior = pt.value("behavior", "");
    if (behavior != "Isolated" || pt.value("invert", false))
      throw Error("tokenizer '" + path + "': Split pre-tokenizer with behavior '" + behavior +
                  "'" + (pt.value("invert", false) ? " and invert=true" : "") + " is not supported (only Isolated)");
    const json& pat = pt.at("pattern");
    if (pat.contains("Regex")) patterns.push_back(pat.at("Regex").get<std::string>());
    else patterns.push_back(regex_escape(pat.at("String").get<std::string>()));
  } else if (type == "Digits") {
    patterns.push_back(pt.value("individual_digits", false) ? kPatternDigit : kPatternDigits);
  } else {
    throw Error("tokenizer '" + path + "': pre-tokenizer '" + type + "' is not supported",
                "bonsai reads byte-level BPE tokenizers: Sequence of Split / Digits / ByteLevel");
  }
}

void check_bpe_model(const json& model, const std::string& path) {
  std::string type = model.value("type", model.contains("merges") ? "BPE" : "");
  if (type != "BPE")
    throw Error("tokenizer '" + path + "': unsupported model type '" + type + "'",
                "bonsai supports byte-level BPE tokenizers (model.type \"BPE\"), not WordPiece, Unigram or WordLevel");
  if (model.value("byte_fallback", false))
    throw Error("tokenizer '" + path + "': BPE with byte_fallback (SentencePiece style) is not supported",
                "bonsai supports byte-level BPE (GPT-2, Llama 3, SmolLM, StarCoder)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    auto it = model.find(key);
    if (it != model.end() && !it->is_null() && !it->get<std::string>().empty())
      throw Error("tokenizer '" + path + "': BPE option '" + key + "' is not supported");
  }
  auto d = model.find("dropout");
  if (d != model.end() && !d->is_null() && d->get<double>() != 0.0)
    throw Error("tokenizer '" + path + "': BPE dropout is not supported (encoding would be random)");
}

void read_hf_vocab(Impl& im, const json& j, const std::string& path) {
  for (const auto& [token, idv] : j.at("model").at("vocab").items()) {
    int64_t id = idv.get<int64_t>();
    if (id < 0) throw Error("tokenizer '" + path + "': vocab id " + std::to_string(id) + " for '" + token + "' is negative");
    ensure_id(im, static_cast<size_t>(id));
    if (im.kind[id] != TokenKind::Missing)
      throw Error("tokenizer '" + path + "': vocab id " + std::to_string(id) + " is given to both '" + im.text[id] +
                  "' and '" + token + "'");
    im.text[id] = token;
    im.kind[id] = TokenKind::Normal;
  }
  for (const auto& t : j.value("added_tokens", json::array())) {
    int64_t id = t.at("id").get<int64_t>();
    std::string content = t.at("content").get<std::string>();
    if (id < 0) throw Error("tokenizer '" + path + "': added token '" + content + "' has a negative id");
    if (t.value("single_word", false))
      throw Error("tokenizer '" + path + "': added token '" + content + "' uses single_word, which is not supported");
    ensure_id(im, static_cast<size_t>(id));
    im.text[id] = content;
    im.kind[id] = t.value("special", false) ? TokenKind::Special : TokenKind::Added;
    im.strip.resize(im.text.size(), 0);
    im.strip[id] = (t.value("lstrip", false) ? 1 : 0) | (t.value("rstrip", false) ? 2 : 0);
  }
}

std::vector<std::pair<std::string, std::string>> read_hf_merges(const json& model, const std::string& path) {
  std::vector<std::pair<std::string, std::string>> merges;
  const json& arr = model.at("merges");
  merges.reserve(arr.size());
  for (size_t i = 0; i < arr.size(); ++i) {
    std::pair<std::string, std::string> m;
    const json& e = arr[i];
    bool ok = e.is_string() ? split_merge(e.get<std::string>(), m)
                            : (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string());
    if (ok && e.is_array()) m = {e[0].get<std::string>(), e[1].get<std::string>()};
    if (!ok)
      throw Error("tokenizer '" + path + "': model.merges[" + std::to_string(i) + "] is " + clip(e.dump()) +
                  "; expected \"left right\" or [\"left\", \"right\"]");
    merges.push_back(std::move(m));
  }
  return merges;
}

// TemplateProcessing that starts with a special token means the model wants BOS prepended.
void read_post_processor(Impl& im, const json& pp) {
  if (pp.is_null()) return;
  std::string type = pp.value("type", "");
  if (type == "Sequence") {
    for (const auto& p : pp.value("processors", json::array())) read_post_processor(im, p);
    return;
  }
  if (type != "TemplateProcessing") return;
  const json& single = pp.value("single", json::array());
  if (single.empty() || !single[0].contains("SpecialToken")) return;
  std::string name = single[0]["SpecialToken"].value("id", "");
  const json& st = pp.value("special_tokens", json::object());
  if (st.contains(name) && !st[name].value("ids", json::array()).empty()) {
    im.bos = st[name]["ids"][0].get<int32_t>();
    im.add_bos = true;
  }
}

// tokenizer_config.json (and chat_template.jinja) beside a tokenizer.json: bos/eos, add_bos, chat template.
void read_tokenizer_config(Impl& im, const fs::path& dir) {
  std::error_code ec;
  fs::path jinja = dir / "chat_template.jinja";
  if (fs::exists(jinja, ec)) im.chat_template = read_file(jinja.string());
  fs::path cfg_path = dir / "tokenizer_config.json";
  if (!fs::exists(cfg_path, ec)) return;
  json cfg = parse_json_file(cfg_path.string());
  auto token_of = [&](const char* key) -> int32_t {
    auto it = cfg.find(key);
    if (it == cfg.end() || it->is_null()) return -1;
    std::string s = it->is_string() ? it->get<std::string>() : it->value("content", "");
    const int32_t* id = im.text_to_id.find(s);
    return id == nullptr ? -1 : *id;
  };
  if (int32_t b = token_of("bos_token"); b >= 0) im.bos = b;
  if (int32_t e = token_of("eos_token"); e >= 0) im.eos = e;
  if (cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean()) im.add_bos = cfg["add_bos_token"].get<bool>();
  if (im.chat_template.empty() && cfg.contains("chat_template")) {
    const json& ct = cfg["chat_template"];
    if (ct.is_string()) im.chat_template = ct.get<std::string>();
    for (const auto& named : ct.is_array() ? ct : json::array())
      if (named.value("name", "") == "default") im.chat_template = named.value("template", "");
  }
}

}  // namespace

std::unique_ptr<Impl> load_hf_json(const std::string& path) {
  json j = parse_json_file(path);
  auto im = std::make_unique<Impl>();
  im->source = path;
  try {
    if (!j.is_object() || !j.contains("model")) throw Error("tokenizer '" + path + "': no \"model\" object (not a tokenizer.json?)");
    const json& model = j.at("model");
    check_bpe_model(model, path);
    if (j.contains("normalizer") && !j["normalizer"].is_null())
      throw Error("tokenizer '" + path + "': normalizer '" + j["normalizer"].value("type", "?") + "' is not supported",
                  "byte-level BPE tokenizers (GPT-2, Llama 3, SmolLM) have \"normalizer\": null");
    read_hf_vocab(*im, j, path);
    std::vector<std::string> patterns;
    bool byte_level = false;
    if (j.contains("pre_tokenizer") && !j["pre_tokenizer"].is_null())
      parse_pre_tokenizer(j["pre_tokenizer"], path, patterns, byte_level);
    if (!byte_level)
      throw Error("tokenizer '" + path + "': the pre-tokenizer has no ByteLevel step, so this is not a byte-level BPE");
    im->pre = std::make_unique<PreTokenizer>(std::move(patterns));
    im->ignore_merges = model.value("ignore_merges", false);
    set_merges(*im, read_hf_merges(model, path), "tokenizer '" + path + "'");
    read_post_processor(*im, j.value("post_processor", json()));
  } catch (const json::exception& e) {
    throw Error("tokenizer '" + path + "': unexpected structure: " + e.what());
  }
  im->finish();
  read_tokenizer_config(*im, fs::path(path).parent_path());
  return im;
}

// ---- tiktoken ranks ---------------------------------------------------------------------------

namespace {

bool base64_decode(std::string_view in, std::string& out) {
  auto val = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  out.clear();
  if (in.empty() || in.size() % 4 != 0) return false;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '=') {
      if (i + 2 < in.size() || (i + 1 < in.size() && in[i + 1] != '=')) return false;  // padding only at the end
      break;
    }
    int v = val(in[i]);
    if (v < 0) return false;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xFF);
    }
  }
  return !out.empty();
}

// Llama 3's 256 special tokens, in id order after the ranks, as Meta's llama-models
// models/llama3/tokenizer.py defines them.
std::vector<std::string> llama3_special_tokens() {
  std::vector<std::string> s = {"<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                                "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
                                "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>",
                                "<|python_tag|>", "<|image|>"};
  for (int i = 0; s.size() < 256; ++i) s.push_back("<|reserved_special_token_" + std::to_string(2 + i) + "|>");
  return s;
}

// tiktoken merges pair (a, b) when the concatenation a+b is a token, at that token's rank.
void derive_rank_merges(Impl& im, size_t n_ranks) {
  FlatStringMap<int32_t> by_bytes;
  by_bytes.reserve(n_ranks);
  std::vector<std::string> bytes(n_ranks);
  for (size_t i = 0; i < n_ranks; ++i) {
    byte_level_decode(im.text[i], bytes[i]);
    by_bytes.insert(bytes[i], static_cast<int32_t>(i));
  }
  im.merges.reserve(n_ranks * 2);
  for (size_t t = 0; t < n_ranks; ++t) {
    std::string_view b = bytes[t];
    for (size_t k = 1; k < b.size(); ++k) {
      const int32_t* l = by_bytes.find(b.substr(0, k));
      const int32_t* r = l == nullptr ? nullptr : by_bytes.find(b.substr(k));
      if (r != nullptr) im.merges.insert(*l, *r, static_cast<int32_t>(t), static_cast<int32_t>(t));
    }
  }
}

}  // namespace

std::unique_ptr<Impl> load_tiktoken(const std::string& path) {
  std::string data = read_file(path);
  auto im = std::make_unique<Impl>();
  im->source = path;
  std::unordered_map<int64_t, size_t> rank_line;
  std::vector<std::pair<std::string, int64_t>> entries;
  std::string tok_bytes;
  size_t line_no = 0;
  for (size_t pos = 0; pos < data.size();) {
    size_t nl = data.find('\n', pos);
    std::string_view line(data.data() + pos, (nl == std::string::npos ? data.size() : nl) - pos);
    pos = nl == std::string::npos ? data.size() : nl + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    size_t sp = line.find(' ');
    int64_t rank = -1;
    bool ok = sp != std::string::npos && line.find(' ', sp + 1) == std::string::npos &&
              base64_decode(line.substr(0, sp), tok_bytes);
    if (ok) {
      auto [end, ec] = std::from_chars(line.data() + sp + 1, line.data() + line.size(), rank);
      ok = ec == std::errc() && end == line.data() + line.size() && rank >= 0;
    }
    if (!ok)
      throw Error("tiktoken file '" + path + "' line " + std::to_string(line_no) + ": expected 'base64 rank', found '" +
                      clip(std::string(line)) + "'",
                  "a tiktoken ranks file has one 'base64(token) rank' per line (a SentencePiece .model is not one)");
    auto [it, fresh] = rank_line.emplace(rank, line_no);
    if (!fresh)
      throw Error("tiktoken file '" + path + "' line " + std::to_string(line_no) + ": duplicate rank " +
                  std::to_string(rank) + " (first on line " + std::to_string(it->second) + ")");
    entries.emplace_back(tok_bytes, rank);
  }
  if (entries.empty()) throw Error("tiktoken file '" + path + "' has no ranks");
  size_t n = entries.size();
  im->text.resize(n);
  im->kind.assign(n, TokenKind::Normal);
  for (const auto& [b, rank] : entries) {
    if (static_cast<size_t>(rank) >= n)
      throw Error("tiktoken file '" + path + "' line " + std::to_string(rank_line[rank]) + ": rank " +
                  std::to_string(rank) + " is out of range (the file has " + std::to_string(n) +
                  " ranks, so they must be 0.." + std::to_string(n - 1) + ")");
    im->text[rank] = byte_level_encode(b);
  }
  derive_rank_merges(*im, n);
  for (const auto& s : llama3_special_tokens()) {
    im->text.push_back(s);
    im->kind.push_back(TokenKind::Special);
  }
  im->ranks_are_ids = true;
  im->ignore_merges = true;
  im->pre_name = "llama-bpe";
  im->pre = std::make_unique<PreTokenizer>(known_pre_tokenizer("llama-bpe"));
  im->bos = static_cast<int32_t>(n);
  im->eos = static_cast<int32_t>(n + 1);
  im->add_bos = true;
  im->finish();
  return im;
}

// ---- GGUF -------------------------------------------------------------------------------------

namespace {

TokenKind kind_of_gguf_type(int64_t type) {
  switch (type) {
    case 2:  // unknown
    case 3:  // control
      return TokenKind::Special;
    case 4:  // user-defined
      return TokenKind::Added;
    default:  // normal, unused, byte
      return TokenKind::Normal;
  }
}

int32_t gguf_token_id(const gguf::File& f, const char* key, size_t n) {
  const gguf::Value* v = f.find(key);
  if (v == nullptr) return -1;
  int64_t id = v->as_i64();
  if (id < 0 || static_cast<size_t>(id) >= n)
    throw Error("GGUF '" + f.path() + "': " + key + " = " + std::to_string(id) + " is outside the vocabulary (0.." +
                std::to_string(n - 1) + ")");
  return static_cast<int32_t>(id);
}

}  // namespace

std::unique_ptr<Impl> load_gguf(const std::string& path) {
  gguf::File f = gguf::File::open(path);
  std::string model = f.get("tokenizer.ggml.model").as_string();
  if (model != "gpt2")
    throw Error("GGUF '" + path + "': unsupported model type: tokenizer.ggml.model is '" + model + "'",
                model == "llama" ? "'llama' is a SentencePiece vocabulary; bonsai reads byte-level BPE ('gpt2') only"
                                 : "bonsai reads byte-level BPE vocabularies (tokenizer.ggml.model 'gpt2') only");
  const gguf::Value* pre_v = f.find("tokenizer.ggml.pre");
  std::string pre = pre_v == nullptr ? "(absent)" : pre_v->as_string();
  std::vector<std::string> patterns = known_pre_tokenizer(pre);
  if (patterns.empty())
    throw Error("GGUF '" + path + "': unsupported pre-tokenizer: tokenizer.ggml.pre is '" + pre + "'",
                "supported: llama-bpe, gpt-2, smollm, starcoder");
  auto im = std::make_unique<Impl>();
  im->source = path;
  im->text = f.get("tokenizer.ggml.tokens").as_string_array();
  size_t n = im->text.size();
  im->kind.assign(n, TokenKind::Normal);
  if (const gguf::Value* tt = f.find("tokenizer.ggml.token_type")) {
    std::vector<int64_t> types = tt->as_i64_array();
    if (types.size() != n)
      throw Error("GGUF '" + path + "': tokenizer.ggml.token_type has " + std::to_string(types.size()) +
                  " entries for " + std::to_string(n) + " tokens");
    for (size_t i = 0; i < n; ++i) im->kind[i] = kind_of_gguf_type(types[i]);
  }
  std::vector<std::pair<std::string, std::string>> merges;
  const std::vector<std::string> raw = f.get("tokenizer.ggml.merges").as_string_array();
  merges.reserve(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    std::pair<std::string, std::string> m;
    if (!split_merge(raw[i], m))
      throw Error("GGUF '" + path + "': tokenizer.ggml.merges[" + std::to_string(i) + "] is '" + clip(raw[i]) +
                  "'; expected 'left right'");
    merges.push_back(std::move(m));
  }
  set_merges(*im, merges, "GGUF '" + path + "'");
  im->pre_name = pre;
  im->pre = std::make_unique<PreTokenizer>(std::move(patterns));
  im->ignore_merges = pre == "llama-bpe";  // llama.cpp's rule for this pre-tokenizer
  im->bos = gguf_token_id(f, "tokenizer.ggml.bos_token_id", n);
  im->eos = gguf_token_id(f, "tokenizer.ggml.eos_token_id", n);
  const gguf::Value* ab = f.find("tokenizer.ggml.add_bos_token");
  im->add_bos = ab != nullptr ? ab->as_bool() : pre == "llama-bpe";
  if (const gguf::Value* ct = f.find("tokenizer.chat_template")) im->chat_template = ct->as_string();
  im->finish();
  return im;
}

// ---- vocab.json + merges.txt --------------------------------------------------------------------

std::unique_ptr<Impl> load_vocab_merges(const std::string& vocab_json, const std::string& merges_txt) {
  json vocab = parse_json_file(vocab_json);
  if (!vocab.is_object()) throw Error("'" + vocab_json + "' is not a JSON object of token -> id");
  auto im = std::make_unique<Impl>();
  im->source = vocab_json;
  for (const auto& [token, idv] : vocab.items()) {
    if (!idv.is_number_integer() || idv.get<int64_t>() < 0)
      throw Error("'" + vocab_json + "': the id of '" + clip(token) + "' is " + clip(idv.dump()) + ", not an id");
    size_t id = idv.get<size_t>();
    ensure_id(*im, id);
    if (im->kind[id] != TokenKind::Missing)
      throw Error("'" + vocab_json + "': id " + std::to_string(id) + " is given to both '" + im->text[id] + "' and '" + token + "'");
    im->text[id] = token;
    // GPT-2's one special token; HF's GPT2Tokenizer registers it as such.
    im->kind[id] = token == "<|endoftext|>" ? TokenKind::Special : TokenKind::Normal;
  }
  std::istringstream lines(read_file(merges_txt));
  std::vector<std::pair<std::string, std::string>> merges;
  std::string line;
  for (size_t line_no = 1; std::getline(lines, line); ++line_no) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (line_no == 1 && line.rfind("#version", 0) == 0)) continue;
    std::pair<std::string, std::string> m;
    if (!split_merge(line, m))
      throw Error("merges file '" + merges_txt + "' line " + std::to_string(line_no) + ": expected 'left right', found '" +
                  clip(line) + "'");
    merges.push_back(std::move(m));
  }
  set_merges(*im, merges, "merges file '" + merges_txt + "'");
  im->pre_name = "gpt-2";
  im->pre = std::make_unique<PreTokenizer>(known_pre_tokenizer("gpt-2"));
  const std::string eot = "<|endoftext|>";
  for (size_t i = 0; i < im->text.size(); ++i)
    if (im->kind[i] == TokenKind::Special && im->text[i] == eot) im->bos = im->eos = static_cast<int32_t>(i);
  im->finish();
  return im;
}

}  // namespace bonsai::tok
