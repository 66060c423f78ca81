// `bonsai data pack` (see data/pack.h): streaming readers (gzip-transparent lines, JSONL, JSON
// arrays one element at a time), the per-format record parsers, parallel tokenization in ordered
// batches, and the shard sink that cuts the token stream into shards and writes index.json.
#include "data/pack.h"

#include <glob.h>
#include <zlib.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <memory>
#include <thread>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/strings.h"
#include "data/chat_template.h"
#include "data/shards.h"
#include "data/tokenizer.h"

namespace bonsai {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// ---- input: bytes, lines, JSON records --------------------------------------------------------

// A file read through zlib, which passes plain files through untouched, so every reader takes
// .gz inputs for free. Counts lines and uncompressed bytes.
class ByteSource {
 public:
  // Lines (and JSON array elements) longer than `max_record` bytes are refused: memory stays bounded
  // even for a file that is not what its format says.
  ByteSource(const std::string& path, uint64_t max_record) : path_(path), buf_(1 << 18), max_record_(max_record) {
    f_ = gzopen(path.c_str(), "rb");
    if (f_ == nullptr) throw Error("cannot open '" + path + "': " + std::strerror(errno));
    gzbuffer(f_, 1 << 18);
    try {
      if (peek() == 0xEF && starts_with_bom()) pos_ += 3;  // a UTF-8 byte-order mark is not text
    } catch (...) {
      gzclose(f_);
      throw;
    }
  }
  ~ByteSource() { gzclose(f_); }
  ByteSource(const ByteSource&) = delete;
  ByteSource& operator=(const ByteSource&) = delete;

  int get() {
    if (pos_ == end_ && !fill()) return -1;
    int c = static_cast<unsigned char>(buf_[pos_++]);
    if (c == '\n') ++line_;
    return c;
  }
  int peek() {
    if (pos_ == end_ && !fill()) return -1;
    return static_cast<unsigned char>(buf_[pos_]);
  }
  void unget(int c) {  // only right after get()
    --pos_;
    if (c == '\n') --line_;
  }
  // The next line without its "\n" (and "\r"); false at the end of the file.
  bool getline(std::string& line) {
    line.clear();
    bool any = false;
    for (;;) {
      if (pos_ == end_ && !fill()) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        return any;
      }
      any = true;
      const char* start = buf_.data() + pos_;
      const void* nl = std::memchr(start, '\n', end_ - pos_);
      size_t n = nl ? static_cast<size_t>(static_cast<const char*>(nl) - start) : end_ - pos_;
      line.append(start, n);
      pos_ += n;
      check_size(line.size());
      if (nl) {
        ++pos_, ++line_;
        if (!line.empty() && line.back() == '\r') line.pop_back();
        return true;
      }
    }
  }
  void check_size(uint64_t n) const {
    if (n <= max_record_) return;
    throw Error(path_ + ":" + std::to_string(line()) + ": a line or record is longer than max_doc_bytes = " +
                    std::to_string(max_record_) + " bytes",
                "check the source's format; raise max_doc_bytes if its records really are this large");
  }
  uint64_t line() const { return line_ + 1; }  // 1-based line of the next byte
  uint64_t bytes() const { return bytes_; }
  const std::string& path() const { return path_; }

 private:
  bool fill() {
    int n = gzread(f_, buf_.data(), static_cast<unsigned>(buf_.size()));
    int err = Z_OK;
    const char* msg = gzerror(f_, &err);
    if (n < 0 || (err != Z_OK && err != Z_STREAM_END)) {
      std::string detail = msg ? msg : "read error";
      if (detail.rfind(path_ + ": ", 0) == 0) detail.erase(0, path_.size() + 2);  // zlib prefixes the path
      throw Error("cannot read '" + path_ + "': " + detail +
                      (err == Z_BUF_ERROR ? " (the gzip stream is truncated)" : ""),
                  "is the file complete? test it with 'gzip -t'");
    }
    pos_ = 0, end_ = static_cast<size_t>(n);
    bytes_ += static_cast<uint64_t>(n);
    return n > 0;
  }
  bool starts_with_bom() {
    if (end_ - pos_ < 3) return false;
    return std::memcmp(buf_.data() + pos_, "\xEF\xBB\xBF", 3) == 0;
  }

  std::string path_;
  gzFile f_ = nullptr;
  std::vector<char> buf_;
  size_t pos_ = 0, end_ = 0;
  uint64_t line_ = 0, bytes_ = 0, max_record_;
};

// Records of a JSON input, one at a time: JSONL (one object per line), or a top-level JSON array
// scanned element by element (never parsed whole). Errors name file:line and the record number.
class RecordReader {
 public:
  RecordReader(const std::string& path, uint64_t max_record) : in_(path, max_record) {
    int c;
    while ((c = in_.get()) != -1 && std::isspace(c)) {}
    if (c == '[') array_ = true;
    else if (c != -1) in_.unget(c);
  }
  // False at the end. Throws on malformed JSON.
  bool next(json& rec) {
    std::string text;
    if (!(array_ ? next_element(text) : next_line(text))) return false;
    ++record_;
    try {
      rec = json::parse(text);
    } catch (const json::parse_error& e) {
      size_t upto = std::min(e.byte > 0 ? e.byte - 1 : 0, text.size());
      uint64_t line = start_line_ + static_cast<uint64_t>(std::count(text.begin(), text.begin() + upto, '\n'));
      // nlohmann's "[json.exception.parse_error.101] parse error at line 1, column 14: " counts
      // within the record; the file line above replaces it.
      std::string msg = e.what();
      auto col = msg.find(", column ");
      auto cut = col == std::string::npos ? msg.find("] ") : msg.find(": ", col);
      if (cut != std::string::npos) msg = msg.substr(cut + 2);
      throw Error(in_.path() + ":" + std::to_string(line) + ": invalid JSON in record " + std::to_string(record_) +
                      ": " + msg,
                  "every record must be valid JSON (JSONL: one object per line)");
    }
    return true;
  }
  // "file:line (record N)" of the record last returned.
  std::string where() const {
    return in_.path() + ":" + std::to_string(start_line_) + " (record " + std::to_string(record_) + ")";
  }
  uint64_t bytes() const { return in_.bytes(); }

 private:
  bool next_line(std::string& text) {
    for (;;) {
      start_line_ = in_.line();
      if (!in_.getline(text)) return false;
      if (text.find_first_not_of(" \t\r") != std::string::npos) return true;
    }
  }
  bool next_element(std::string& text);
  [[noreturn]] void truncated() {
    throw Error(in_.path() + ":" + std::to_string(in_.line()) + ": the JSON array ends before its closing ']'",
                "the file looks truncated");
  }
  int skip_space() {
    int c;
    while ((c = in_.get()) != -1 && std::isspace(c)) {}
    return c;
  }

  ByteSource in_;
  bool array_ = false, closed_ = false;
  uint64_t record_ = 0, start_line_ = 0;
};

// Copies the next array element's text (balanced brackets, strings with escapes) into `text`.
bool RecordReader::next_element(std::string& text) {
  if (closed_) return false;
  text.clear();
  int c = skip_space();
  if (c == ']') return closed_ = true, false;
  if (record_ > 0) {
    if (c != ',') {
      if (c == -1) truncated();
      throw Error(in_.path() + ":" + std::to_string(in_.line()) + ": expected ',' or ']' after record " +
                  std::to_string(record_) + ", found '" + static_cast<char>(c) + "'");
    }
    c = skip_space();
  }
  if (c == -1) truncated();
  start_line_ = in_.line();
  int depth = 0;
  bool in_string = false;
  for (;; c = in_.get()) {
    if (c == -1) truncated();
    in_.check_size(text.size());
    if (in_string) {
      text += static_cast<char>(c);
      if (c == '\\') {
        int d = in_.get();
        if (d == -1) truncated();
        text += static_cast<char>(d);
      } else if (c == '"') {
        in_string = false;
        if (depth == 0) return true;
      }
      continue;
    }
    if (depth == 0 && (c == ',' || c == ']' || std::isspace(c)) && !text.empty()) {
      in_.unget(c);  // the end of a bare scalar element
      return true;
    }
    text += static_cast<char>(c);
    if (c == '"') in_string = true;
    else if (c == '{' || c == '[') ++depth;
    else if ((c == '}' || c == ']') && --depth == 0) return true;
  }
}

// ---- formats: records -> examples -----------------------------------------------------------

struct Message {
  std::string role, content;
};

// One unit before tokenization. pretrain: text; sft: chat; preference: chat (the prompt turns) +
// chosen/rejected (the final assistant replies).
struct Example {
  std::string text;
  std::vector<Message> chat;
  std::string chosen, rejected;
  std::string where;  // for errors found later (chat template)
};

struct Format {
  const char* name;
  const char* kind;
};
const Format kFormats[] = {{"text", "pretrain"},     {"jsonl", "pretrain"},       {"alpaca", "sft"},
                           {"sharegpt", "sft"},      {"messages", "sft"},         {"sharegpt_pairs", "preference"},
                           {"paired", "preference"}, {"hh_rlhf", "preference"}};

std::string keys_of(const json& rec) {
  std::vector<std::string> k;
  for (auto it = rec.begin(); it != rec.end(); ++it) k.push_back(it.key());
  return k.empty() ? "none" : join(k, ", ");
}

// rec[key] as a string. Missing: "" when optional, else an error naming the field and the record.
std::string field_string(const json& rec, const std::string& key, const std::string& where, bool required,
                         const std::string& option = "") {
  auto it = rec.find(key);
  if (it == rec.end() || it->is_null()) {
    if (!required) return "";
    throw Error(where + ": record has no field '" + key + "' (its fields: " + keys_of(rec) + ")",
                option.empty() ? "is the source's format right?" : "set " + option + " in the source to the field's name");
  }
  if (!it->is_string()) {
    throw Error(where + ": field '" + key + "' must be a string, found " + it->type_name());
  }
  return it->get<std::string>();
}

// A ShareGPT speaker ("human", "gpt", ...) or an OpenAI role as user / assistant / system.
std::string chat_role(const std::string& who, const std::string& where, size_t i) {
  if (who == "human" || who == "user") return "user";
  if (who == "gpt" || who == "assistant" || who == "model" || who == "chatgpt") return "assistant";
  if (who == "system") return "system";
  throw Error(where + ": message " + std::to_string(i + 1) + " has role '" + who +
              "', expected one of human/user, gpt/assistant, system");
}

// A list of {from, value} (ShareGPT) or {role, content} (OpenAI) messages.
std::vector<Message> parse_turns(const json& rec, const std::string& key, const std::string& where) {
  auto it = rec.find(key);
  if (it == rec.end()) {
    throw Error(where + ": record has no field '" + key + "' (its fields: " + keys_of(rec) + ")",
                "set messages_field in the source to the field holding the turns");
  }
  if (!it->is_array()) throw Error(where + ": field '" + key + "' must be a list of messages, found " + it->type_name());
  std::vector<Message> out;
  for (size_t i = 0; i < it->size(); ++i) {
    const json& m = (*it)[i];
    if (!m.is_object()) throw Error(where + ": message " + std::to_string(i + 1) + " of '" + key + "' is not an object");
    bool sharegpt = m.contains("from");
    std::string who = field_string(m, sharegpt ? "from" : "role", where + ", message " + std::to_string(i + 1), true);
    std::string text = field_string(m, sharegpt ? "value" : "content", where + ", message " + std::to_string(i + 1), true);
    out.push_back({chat_role(who, where, i), std::move(text)});
  }
  return out;
}

// A preference side given as a message object ({from, value} / {role, content}) or a plain string.
std::string reply_text(const json& rec, const std::string& key, const std::string& where) {
  auto it = rec.find(key);
  if (it != rec.end() && it->is_object()) {
    return field_string(*it, it->contains("value") ? "value" : "content", where + ", field '" + key + "'", true);
  }
  return field_string(rec, key, where, true, key == "chosen" || key == "rejected" ? "" : "chosen_field/rejected_field");
}

// "\n\nHuman: a\n\nAssistant: b..." -> turns.
std::vector<Message> parse_hh_dialogue(const std::string& s, const std::string& where, const std::string& side) {
  static const std::string kHuman = "\n\nHuman:", kAssistant = "\n\nAssistant:";
  std::vector<Message> out;
  size_t pos = s.find(kHuman) == 0 ? 0 : std::string::npos;
  if (pos == std::string::npos) {
    throw Error(where + ": field '" + side + "' does not start with \"\\n\\nHuman:\"",
                "hh_rlhf expects whole Anthropic HH dialogues");
  }
  while (pos != std::string::npos) {
    bool human = s.compare(pos, kHuman.size(), kHuman) == 0;
    size_t start = pos + (human ? kHuman : kAssistant).size();
    size_t nh = s.find(kHuman, start), na = s.find(kAssistant, start);
    size_t next = std::min(nh, na);
    std::string text = s.substr(start, next == std::string::npos ? std::string::npos : next - start);
    if (!text.empty() && text[0] == ' ') text.erase(0, 1);
    out.push_back({human ? "user" : "assistant", std::move(text)});
    pos = next;
  }
  return out;
}

void add_system(std::vector<Message>& chat, const std::string& system) {
  if (!system.empty() && (chat.empty() || chat[0].role != "system")) chat.insert(chat.begin(), {"system", system});
}

// Fills `ex` from `rec`; returns "" or the reason the record is skipped.
std::string parse_record(const PackSource& src, const json& rec, const std::string& where, Example& ex) {
  if (!rec.is_object()) throw Error(where + ": a record must be a JSON object, found " + std::string(rec.type_name()));
  const std::string& f = src.format;
  if (f == "jsonl") {
    ex.text = field_string(rec, src.field, where, true, "field");
    return ex.text.empty() ? "empty document" : "";
  }
  if (f == "alpaca") {
    std::string user = field_string(rec, "instruction", where, true);
    std::string input = field_string(rec, "input", where, false);
    if (!input.empty()) user += "\n\n" + input;
    ex.chat = {{"user", user}, {"assistant", field_string(rec, "output", where, true)}};
    add_system(ex.chat, field_string(rec, "system", where, false));
  } else if (f == "sharegpt" || f == "messages") {
    std::string key = !src.messages_field.empty() ? src.messages_field : f == "sharegpt" ? "conversations" : "messages";
    ex.chat = parse_turns(rec, key, where);
    if (rec.contains("system") && rec["system"].is_string()) add_system(ex.chat, rec["system"].get<std::string>());
    bool any = std::any_of(ex.chat.begin(), ex.chat.end(), [](const Message& m) { return m.role == "assistant"; });
    if (!any) return "chat without an assistant reply";
  } else if (f == "sharegpt_pairs") {
    std::string key = src.messages_field.empty() ? "conversations" : src.messages_field;
    ex.chat = parse_turns(rec, key, where);
    if (rec.contains("system") && rec["system"].is_string()) add_system(ex.chat, rec["system"].get<std::string>());
    ex.chosen = reply_text(rec, src.chosen_field, where);
    ex.rejected = reply_text(rec, src.rejected_field, where);
  } else if (f == "paired") {
    ex.chat = {{"user", field_string(rec, src.prompt_field, where, true, "prompt_field")}};
    ex.chosen = field_string(rec, src.chosen_field, where, true, "chosen_field");
    ex.rejected = field_string(rec, src.rejected_field, where, true, "rejected_field");
  } else if (f == "hh_rlhf") {
    auto chosen = parse_hh_dialogue(field_string(rec, src.chosen_field, where, true, "chosen_field"), where, src.chosen_field);
    auto rejected = parse_hh_dialogue(field_string(rec, src.rejected_field, where, true, "rejected_field"), where, src.rejected_field);
    if (chosen.back().role != "assistant" || rejected.back().role != "assistant") return "dialogue not ending with an assistant turn";
    ex.chosen = chosen.back().content;
    ex.rejected = rejected.back().content;
    chosen.pop_back(), rejected.pop_back();
    bool same = chosen.size() == rejected.size() &&
                std::equal(chosen.begin(), chosen.end(), rejected.begin(),
                           [](const Message& a, const Message& b) { return a.role == b.role && a.content == b.content; });
    if (!same) return "preference pair whose dialogues differ before the final reply";
    ex.chat = std::move(chosen);
  }
  if (pack_format_kind(f) == "preference") {
    if (ex.chat.empty() || ex.chat.back().role != "user") return "preference prompt not ending with a user turn";
  }
  add_system(ex.chat, src.system_prompt);
  return "";
}

// ---- sources -> a stream of examples ----------------------------------------------------------

std::vector<std::string> expand_path(const std::string& pattern, size_t source_no) {
  std::string where = "source " + std::to_string(source_no);
  if (pattern.find_first_of("*?[") == std::string::npos) {
    if (!fs::is_regular_file(pattern)) throw Error(where + ": file '" + pattern + "' does not exist", "paths are relative to the working directory");
    return {pattern};
  }
  glob_t g{};
  int rc = ::glob(pattern.c_str(), 0, nullptr, &g);
  std::vector<std::string> out;
  for (size_t i = 0; rc == 0 && i < g.gl_pathc; ++i) {
    if (fs::is_regular_file(g.gl_pathv[i])) out.emplace_back(g.gl_pathv[i]);
  }
  globfree(&g);
  if (out.empty()) throw Error(where + ": no file matches '" + pattern + "'", "paths are relative to the working directory");
  std::sort(out.begin(), out.end());
  return out;
}

// Walks the sources in order, file by file, and yields examples; counts what it skips.
class ExampleStream {
 public:
  ExampleStream(const std::vector<PackSource>& sources, std::vector<std::vector<std::string>> files,
                int64_t max_doc_bytes, std::map<std::string, uint64_t>* skipped)
      : sources_(sources), files_(std::move(files)), max_doc_bytes_(max_doc_bytes), skipped_(skipped) {}

  bool next(Example& ex);
  uint64_t bytes() const { return done_bytes_ + (records_ ? records_->bytes() : lines_ ? lines_->bytes() : 0); }

 private:
  bool open_next_file();
  bool next_text(Example& ex);
  void close_current();

  const std::vector<PackSource>& sources_;
  std::vector<std::vector<std::string>> files_;
  int64_t max_doc_bytes_;
  std::map<std::string, uint64_t>* skipped_;
  size_t src_ = 0, file_ = 0;
  bool started_ = false;
  std::unique_ptr<RecordReader> records_;
  std::unique_ptr<ByteSource> lines_;
  uint64_t done_bytes_ = 0;
};

void ExampleStream::close_current() {
  done_bytes_ += records_ ? records_->bytes() : lines_ ? lines_->bytes() : 0;
  records_.reset();
  lines_.reset();
}

bool ExampleStream::open_next_file() {
  close_current();
  if (started_) ++file_;
  started_ = true;
  while (src_ < sources_.size() && file_ >= files_[src_].size()) ++src_, file_ = 0;
  if (src_ >= sources_.size()) return false;
  const std::string& path = files_[src_][file_];
  auto cap = static_cast<uint64_t>(max_doc_bytes_);
  if (sources_[src_].format == "text") lines_ = std::make_unique<ByteSource>(path, cap);
  else records_ = std::make_unique<RecordReader>(path, cap);
  return true;
}

// The next document of a text file: a line, a paragraph, or (split: file) the whole file.
bool ExampleStream::next_text(Example& ex) {
  const std::string& split = sources_[src_].split;
  std::string line;
  bool any = false;
  uint64_t first_line = 0;
  for (;;) {
    uint64_t no = lines_->line();
    if (!lines_->getline(line)) break;
    bool blank = line.find_first_not_of(" \t\f\v") == std::string::npos;
    if (split != "file" && blank) {
      if (any) break;  // the end of a paragraph
      continue;        // separators
    }
    if (!any) first_line = no;
    if (any) ex.text += '\n';
    ex.text += line;
    any = true;
    if (static_cast<int64_t>(ex.text.size()) > max_doc_bytes_) {
      throw Error(lines_->path() + ":" + std::to_string(first_line) + ": a document (split: " + split +
                      ") is larger than max_doc_bytes = " + std::to_string(max_doc_bytes_),
                  "use split: paragraph or line, or raise max_doc_bytes");
    }
    if (split == "line") break;
  }
  ex.where = lines_->path() + ":" + std::to_string(first_line);
  return any && ex.text.find_first_not_of(" \t\n\f\v") != std::string::npos;
}

bool ExampleStream::next(Example& ex) {
  for (;;) {
    if (!records_ && !lines_ && !open_next_file()) return false;
    ex = Example();
    if (lines_) {
      bool whole_file = sources_[src_].split == "file";
      bool got = next_text(ex);
      if (whole_file || !got) close_current();
      if (got) return true;
      if (whole_file) (*skipped_)["empty document"] += 1;
      continue;
    }
    json rec;
    if (!records_->next(rec)) {
      close_current();
      continue;
    }
    ex.where = records_->where();
    std::string skip = parse_record(sources_[src_], rec, ex.where, ex);
    if (skip.empty()) return true;
    (*skipped_)[skip] += 1;
  }
}

// ---- chat rendering (data/chat_template.h) ---------------------------------------------------------

const std::vector<std::string> kChatTemplates = {"chatml", "llama3", "llama3.1", "llama3.2", "smollm2"};

// The pack's chat template: a built-in one by name, else the tokenizer's own.
ChatTemplate make_chat_template(const Tokenizer& tok, const std::string& name) {
  if (name.empty()) {
    try {
      return ChatTemplate::for_tokenizer(tok);
    } catch (const Error& e) {
      throw Error(std::string("pack: sft / preference examples are rendered with a chat template: ") + e.what(),
                  "set chat_template: chatml|llama3|llama3.1|llama3.2|smollm2 in the config");
    }
  }
  ChatTemplate t = name == "chatml"     ? ChatTemplate::chatml()
                   : name == "llama3"   ? ChatTemplate::llama3()
                   : name == "llama3.1" ? ChatTemplate::llama31()
                   : name == "llama3.2" ? ChatTemplate::llama32()
                                        : ChatTemplate::smollm2();
  if (tok.bos_id() >= 0 && t.format() != ChatFormat::ChatML) t.bos_token = tok.token_text(tok.bos_id());
  return t;
}

EncodedChat encode_messages(const Tokenizer& tok, const ChatTemplate& tmpl, const std::vector<Message>& chat) {
  std::vector<ChatMessage> msgs;
  msgs.reserve(chat.size());
  for (const auto& m : chat) msgs.push_back({m.role, m.content});
  return encode_chat(tok, tmpl, msgs, /*add_generation_prompt=*/false);
}

// ---- tokenization -------------------------------------------------------------------------------

struct Encoded {
  std::vector<int32_t> ids, rejected;
  std::vector<uint8_t> mask, rejected_mask;
};

// Keeps only the last run of ones: the final assistant reply of a preference chat, so that earlier
// assistant turns of a multi-turn prompt are context, not trained on.
void keep_last_run(std::vector<uint8_t>& mask) {
  size_t end = mask.size();
  while (end > 0 && mask[end - 1] == 0) --end;
  size_t start = end;
  while (start > 0 && mask[start - 1] != 0) --start;
  std::fill(mask.begin(), mask.begin() + static_cast<std::ptrdiff_t>(start), uint8_t{0});
}

class Encoder {
 public:
  Encoder(const Tokenizer& tok, ShardKind kind, bool bos, bool eos, const ChatTemplate* chat)
      : tok_(tok), kind_(kind), bos_(bos), eos_(eos), chat_(chat) {}

  Encoded encode(const Example& ex) const {
    try {
      return encode_unchecked(ex);
    } catch (const Error& e) {
      rethrow_with_context(e, ex.where);
    }
  }

 private:
  Encoded encode_unchecked(const Example& ex) const {
    Encoded out;
    if (kind_ == ShardKind::pretrain) {
      if (bos_) out.ids.push_back(tok_.bos_id());
      std::vector<int32_t> body = tok_.encode(ex.text);
      out.ids.insert(out.ids.end(), body.begin(), body.end());
      if (eos_) out.ids.push_back(tok_.eos_id());
      return out;
    }
    if (kind_ == ShardKind::sft) {
      EncodedChat c = encode_messages(tok_, *chat_, ex.chat);
      out.ids = std::move(c.ids), out.mask = std::move(c.mask);
      return out;
    }
    for (int side = 0; side < 2; ++side) {
      std::vector<Message> chat = ex.chat;
      chat.push_back({"assistant", side == 0 ? ex.chosen : ex.rejected});
      EncodedChat c = encode_messages(tok_, *chat_, chat);
      keep_last_run(c.mask);
      (side == 0 ? out.ids : out.rejected) = std::move(c.ids);
      (side == 0 ? out.mask : out.rejected_mask) = std::move(c.mask);
    }
    return out;
  }

  const Tokenizer& tok_;
  ShardKind kind_;
  bool bos_, eos_;
  const ChatTemplate* chat_;
};

// Encodes a batch on `threads` threads; results stay in input order. The first failing example (in
// order) is re-thrown, so errors do not depend on scheduling either.
void encode_batch(const Encoder& enc, const std::vector<Example>& in, std::vector<Encoded>& out, int threads) {
  out.assign(in.size(), Encoded());
  std::vector<std::exception_ptr> errors(in.size());
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i; (i = next.fetch_add(1)) < in.size();) {
      try {
        out[i] = enc.encode(in[i]);
      } catch (...) {
        errors[i] = std::current_exception();
      }
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

// ---- output: the token stream -> shards + index.json ------------------------------------------

struct ShardEntry {
  std::string file;
  uint64_t docs = 0, tokens = 0;
};

class ShardSink {
 public:
  ShardSink(const PackConfig& cfg, ShardInfo base) : cfg_(cfg), base_(std::move(base)) {}

  void add(const Encoded& e, const std::string& where) {
    if (base_.kind == ShardKind::pretrain) add_stream(e.ids);
    else add_whole(e, where);
    ++docs_;
  }
  void finish() {
    if (writer_) close_shard();
  }
  // After a failure: the pack is incomplete, so none of its shards stays behind.
  void abandon() noexcept {
    writer_.reset();  // removes its temporary file
    std::error_code ec;
    for (const auto& s : shards_) fs::remove(fs::path(cfg_.output) / s.file, ec);
    shards_.clear();
  }
  const std::vector<ShardEntry>& shards() const { return shards_; }
  uint64_t docs() const { return docs_; }
  uint64_t tokens() const {
    uint64_t n = writer_ ? writer_->n_tokens() : 0;
    for (const auto& s : shards_) n += s.tokens;
    return n;
  }

 private:
  void open_shard(bool continues) {
    char name[32];
    std::snprintf(name, sizeof name, "shard-%05zu.h5", shards_.size());
    ShardInfo info = base_;
    info.shard_index = static_cast<int64_t>(shards_.size());
    info.first_doc_continues = continues;
    ShardWriterOptions opt{cfg_.chunk_tokens, static_cast<int>(cfg_.compression_level)};
    writer_ = std::make_unique<ShardWriter>((fs::path(cfg_.output) / name).string(), info, opt);
    current_ = name;
  }
  void close_shard() {
    writer_->commit();
    shards_.push_back({current_, writer_->n_docs(), writer_->n_tokens()});
    writer_.reset();
  }
  // Pretraining: shards hold exactly shard_tokens; a document crossing the boundary continues
  // as the first document of the next shard.
  void add_stream(const std::vector<int32_t>& ids) {
    auto cap = static_cast<uint64_t>(cfg_.shard_tokens);
    size_t off = 0;
    while (off < ids.size()) {
      if (!writer_) open_shard(off > 0);
      size_t take = std::min<uint64_t>(cap - writer_->n_tokens(), ids.size() - off);
      writer_->add_doc(ids.data() + off, take);
      off += take;
      if (writer_->n_tokens() == cap) close_shard();
    }
  }
  // sft / preference: examples stay whole; a shard closes before one that would overflow it.
  void add_whole(const Encoded& e, const std::string& where) {
    uint64_t n = e.ids.size() + e.rejected.size();
    auto cap = static_cast<uint64_t>(cfg_.shard_tokens);
    if (n > cap) {
      throw Error(where + ": the example has " + std::to_string(n) + " tokens, more than shard_tokens = " +
                  std::to_string(cap), "raise shard_tokens");
    }
    if (writer_ && writer_->n_tokens() + n > cap) close_shard();
    if (!writer_) open_shard(false);
    if (base_.kind == ShardKind::sft) writer_->add_doc(e.ids, &e.mask);
    else writer_->add_pair(e.ids, e.mask, e.rejected, e.rejected_mask);
  }

  const PackConfig& cfg_;
  ShardInfo base_;
  std::unique_ptr<ShardWriter> writer_;
  std::string current_;
  std::vector<ShardEntry> shards_;
  uint64_t docs_ = 0;
};

// ---- the pipeline ---------------------------------------------------------------------------------

// Up to ~8 MB of text (or 4096 examples), honouring `limit` (0 = none).
void read_batch(ExampleStream& stream, std::vector<Example>& batch, int64_t limit, uint64_t& taken) {
  batch.clear();
  size_t bytes = 0;
  Example ex;
  while (batch.size() < 4096 && bytes < (8u << 20)) {
    if (limit > 0 && taken >= static_cast<uint64_t>(limit)) return;
    if (!stream.next(ex)) return;
    bytes += ex.text.size() + ex.chosen.size() + ex.rejected.size();
    for (const auto& m : ex.chat) bytes += m.content.size();
    batch.push_back(std::move(ex));
    ++taken;
  }
}

// Runs f, keeping what it throws.
template <class F>
std::exception_ptr capture(F&& f) {
  try {
    f();
  } catch (...) {
    return std::current_exception();
  }
  return nullptr;
}

// Three stages overlap: batch k is tokenized (on `threads` threads) while batch k-1 is written
// (compressed into shards) on another thread and this one reads batch k+1. Errors are re-thrown in
// input order, so which one is reported never depends on timing.
void run_pipeline(ExampleStream& stream, const Encoder& enc, ShardSink& sink, const PackConfig& cfg, int threads,
                  std::chrono::steady_clock::time_point t0) {
  std::vector<Example> cur, next;
  std::vector<Encoded> prev;
  std::vector<std::string> prev_where;
  uint64_t taken = 0;
  auto last_report = t0;
  auto write_prev = [&] {
    for (size_t i = 0; i < prev.size(); ++i) sink.add(prev[i], prev_where[i]);
  };
  read_batch(stream, cur, cfg.limit, taken);
  while (!cur.empty()) {
    std::vector<Encoded> out;
    std::exception_ptr enc_err, write_err, read_err;
    std::thread encoder([&] { enc_err = capture([&] { encode_batch(enc, cur, out, threads); }); });
    std::thread writer([&] { write_err = capture(write_prev); });
    read_err = capture([&] { read_batch(stream, next, cfg.limit, taken); });
    encoder.join();
    writer.join();
    for (const auto& e : {write_err, enc_err, read_err})
      if (e) std::rethrow_exception(e);
    prev = std::move(out);
    prev_where.clear();
    for (const auto& e : cur) prev_where.push_back(e.where);
    std::swap(cur, next);
    auto now = std::chrono::steady_clock::now();
    if (cfg.progress && now - last_report > std::chrono::seconds(5)) {
      double secs = std::chrono::duration<double>(now - t0).count();
      std::fprintf(stderr, "pack: %.1f MB read, %llu documents, %llu tokens, %.2f MB/s\n", stream.bytes() / 1e6,
                   static_cast<unsigned long long>(sink.docs()), static_cast<unsigned long long>(sink.tokens()),
                   stream.bytes() / 1e6 / secs);
      last_report = now;
    }
  }
  write_prev();
}

// ---- configuration ------------------------------------------------------------------------------

const std::vector<std::string> kSourceKeys = {"path",         "format",       "split",          "field",
                                              "messages_field", "prompt_field", "chosen_field", "rejected_field",
                                              "system_prompt"};

std::string* source_slot(PackSource& s, const std::string& key) {
  if (key == "path") return &s.path;
  if (key == "format") return &s.format;
  if (key == "split") return &s.split;
  if (key == "field") return &s.field;
  if (key == "messages_field") return &s.messages_field;
  if (key == "prompt_field") return &s.prompt_field;
  if (key == "chosen_field") return &s.chosen_field;
  if (key == "rejected_field") return &s.rejected_field;
  if (key == "system_prompt") return &s.system_prompt;
  return nullptr;
}

void check_choice(const std::string& value, const std::vector<std::string>& choices, const std::string& what) {
  if (std::find(choices.begin(), choices.end(), value) != choices.end()) return;
  std::string near = nearest(value, choices);
  throw Error(what + " is '" + value + "', expected one of: " + join(choices, ", "),
              near.empty() ? "" : "did you mean '" + near + "'?");
}

// Everything that can be checked before reading a byte; returns each source's files.
std::vector<std::vector<std::string>> validate(const PackConfig& cfg) {
  if (cfg.tokenizer.empty()) throw Error("pack: key 'tokenizer' is required", "set tokenizer: a model directory, tokenizer.json or .gguf");
  if (cfg.output.empty()) throw Error("pack: key 'output' is required", "set output: the directory for the shards");
  check_choice(cfg.kind, {"pretrain", "sft", "preference"}, "pack: key 'kind'");
  check_choice(cfg.add_bos, {"auto", "true", "false"}, "pack: key 'add_bos'");
  if (!cfg.chat_template.empty()) check_choice(cfg.chat_template, kChatTemplates, "pack: key 'chat_template'");
  if (cfg.shard_tokens <= 0) throw Error("pack: shard_tokens must be positive, got " + std::to_string(cfg.shard_tokens));
  if (cfg.compression_level < 0 || cfg.compression_level > 9) {
    throw Error("pack: compression_level must be 0..9, got " + std::to_string(cfg.compression_level));
  }
  if (cfg.chunk_tokens <= 0 || cfg.threads < 0 || cfg.limit < 0 || cfg.max_doc_bytes <= 0) {
    throw Error("pack: chunk_tokens and max_doc_bytes must be positive, threads and limit not negative");
  }
  if (cfg.sources.empty()) throw Error("pack: no sources given", "list the inputs under 'sources'");
  std::vector<std::vector<std::string>> files;
  for (size_t i = 0; i < cfg.sources.size(); ++i) {
    const PackSource& s = cfg.sources[i];
    std::string where = "source " + std::to_string(i + 1) + " ('" + s.path + "')";
    check_choice(s.format, pack_formats(), where + ": format");
    if (pack_format_kind(s.format) != cfg.kind) {
      throw Error(where + ": format '" + s.format + "' makes " + pack_format_kind(s.format) + " data, but kind is '" +
                  cfg.kind + "'", "one pack holds one kind; pack the other sources separately");
    }
    check_choice(s.split, {"file", "paragraph", "line"}, where + ": split");
    files.push_back(expand_path(s.path, i + 1));
  }
  return files;
}

json config_json(const PackConfig& cfg, const std::vector<std::vector<std::string>>& files) {
  json sources = json::array();
  for (size_t i = 0; i < cfg.sources.size(); ++i) {
    const PackSource& s = cfg.sources[i];
    json j = {{"path", s.path}, {"format", s.format}, {"files", files[i]}};
    if (s.format == "text") j["split"] = s.split;
    if (s.format == "jsonl") j["field"] = s.field;
    if (!s.messages_field.empty()) j["messages_field"] = s.messages_field;
    if (s.format == "paired" || s.format == "sharegpt_pairs" || s.format == "hh_rlhf") {
      j["prompt_field"] = s.prompt_field, j["chosen_field"] = s.chosen_field, j["rejected_field"] = s.rejected_field;
    }
    if (!s.system_prompt.empty()) j["system_prompt"] = s.system_prompt;
    sources.push_back(j);
  }
  return {{"tokenizer", cfg.tokenizer},       {"output", cfg.output},
          {"kind", cfg.kind},                 {"sources", sources},
          {"shard_tokens", cfg.shard_tokens}, {"eos_between_docs", cfg.eos_between_docs},
          {"add_bos", cfg.add_bos},           {"chat_template", cfg.chat_template},
          {"limit", cfg.limit},               {"chunk_tokens", cfg.chunk_tokens},
          {"compression_level", cfg.compression_level}};
}

// Creates the output directory; refuses to mix with an earlier pack unless overwrite is set.
void prepare_output(const PackConfig& cfg) {
  std::error_code ec;
  fs::create_directories(cfg.output, ec);
  if (ec || !fs::is_directory(cfg.output)) throw Error("cannot create output directory '" + cfg.output + "': " + ec.message());
  std::vector<fs::path> old;
  for (const auto& e : fs::directory_iterator(cfg.output)) {
    std::string name = e.path().filename().string();
    if (name == "index.json" || (name.rfind("shard-", 0) == 0 && e.path().extension() == ".h5")) old.push_back(e.path());
  }
  if (old.empty()) return;
  if (!cfg.overwrite) {
    throw Error("output '" + cfg.output + "' already holds a packed dataset (" + std::to_string(old.size()) + " files)",
                "choose another output, or set overwrite=true to replace it");
  }
  for (const auto& p : old) fs::remove(p);
}

void write_index(const PackConfig& cfg, const ShardInfo& base, const ShardSink& sink, const PackStats& stats,
                 const json& config) {
  json shards = json::array();
  for (const auto& s : sink.shards()) shards.push_back({{"file", s.file}, {"n_docs", s.docs}, {"n_tokens", s.tokens}});
  json skipped = json::object();
  for (const auto& [why, n] : stats.skipped) skipped[why] = n;
  json index = {{"bonsai_format", kShardFormat},
                {"version", kShardVersion},
                {"kind", cfg.kind},
                {"tokenizer_identity", base.tokenizer_identity},
                {"tokenizer_name", base.tokenizer_name},
                {"tokenizer_spec", base.tokenizer_spec},
                {"vocab_size", base.vocab_size},
                {"bos_id", base.bos_id},
                {"eos_id", base.eos_id},
                {"n_docs", stats.docs},
                {"n_tokens", stats.tokens},
                {"bytes_read", stats.bytes_read},
                {"skipped", skipped},
                {"shards", shards},
                {"config", config},
                {"created_by", cfg.created_by}};
  write_file_atomic((fs::path(cfg.output) / "index.json").string(), index.dump(2) + "\n");
}

}  // namespace

// ---- public API ---------------------------------------------------------------------------------

const std::vector<std::string>& pack_formats() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    for (const auto& f : kFormats) v.emplace_back(f.name);
    return v;
  }();
  return names;
}

std::string pack_format_kind(const std::string& format) {
  for (const auto& f : kFormats)
    if (format == f.name) return f.kind;
  return "";
}

std::vector<PackSource> parse_sources(const YAML::Node& list, const PackSource& defaults, const std::string& where) {
  if (!list || list.IsNull()) return {};
  if (!list.IsSequence()) throw Error(where + ": 'sources' must be a list");
  std::vector<PackSource> out;
  for (size_t i = 0; i < list.size(); ++i) {
    const YAML::Node& n = list[i];
    std::string at = where + ": source " + std::to_string(i + 1);
    PackSource s = defaults;
    if (n.IsScalar()) {
      s.path = n.Scalar();
    } else if (n.IsMap()) {
      for (const auto& kv : n) {
        std::string key = kv.first.Scalar();
        std::string* slot = source_slot(s, key);
        if (slot == nullptr) {
          std::string near = nearest(key, kSourceKeys);
          throw Error(at + ": unknown key '" + key + "'",
                      near.empty() ? "valid keys: " + join(kSourceKeys, ", ") : "did you mean '" + near + "'?");
        }
        if (!kv.second.IsScalar()) throw Error(at + ": key '" + key + "' must be a string");
        *slot = kv.second.Scalar();
      }
    } else {
      throw Error(at + " must be a path or a map (path, format, ...)");
    }
    if (s.path.empty()) throw Error(at + " has no 'path'");
    if (s.format.empty()) throw Error(at + " ('" + s.path + "') has no 'format'", "formats: " + join(pack_formats(), ", "));
    check_choice(s.format, pack_formats(), at + ": format");
    out.push_back(std::move(s));
  }
  return out;
}

std::string PackStats::summary() const {
  char buf[512];
  double mb = static_cast<double>(bytes_read) / 1e6, secs = std::max(seconds, 1e-9);
  std::snprintf(buf, sizeof buf,
                "packed %llu documents, %llu tokens into %llu shard(s) from %.1f MB in %.1f s: %.2f MB/s of input, "
                "%.0f tokens/s",
                static_cast<unsigned long long>(docs), static_cast<unsigned long long>(tokens),
                static_cast<unsigned long long>(shards), mb, seconds, mb / secs, static_cast<double>(tokens) / secs);
  std::string out = buf;
  for (const auto& [why, n] : skipped) out += "; skipped " + std::to_string(n) + " (" + why + ")";
  return out;
}

PackStats pack_dataset(const PackConfig& cfg) {
  auto t0 = std::chrono::steady_clock::now();
  auto files = validate(cfg);
  ShardKind kind = parse_shard_kind(cfg.kind, "pack: key 'kind'");
  Tokenizer tok = Tokenizer::load(cfg.tokenizer);
  bool bos = kind == ShardKind::pretrain && (cfg.add_bos == "true" || (cfg.add_bos == "auto" && tok.add_bos()));
  bool eos = kind == ShardKind::pretrain && cfg.eos_between_docs;
  if (bos && tok.bos_id() < 0) throw Error("pack: add_bos is set but tokenizer '" + cfg.tokenizer + "' has no BOS token", "set add_bos: false");
  if (eos && tok.eos_id() < 0) {
    throw Error("pack: eos_between_docs is set but tokenizer '" + cfg.tokenizer + "' has no EOS token",
                "set eos_between_docs: false");
  }
  std::unique_ptr<ChatTemplate> chat;
  if (kind != ShardKind::pretrain) chat = std::make_unique<ChatTemplate>(make_chat_template(tok, cfg.chat_template));
  prepare_output(cfg);
  json config = config_json(cfg, files);

  ShardInfo base;
  base.kind = kind;
  base.tokenizer_identity = tok.identity();
  base.tokenizer_name = tok.pre_tokenizer_name();
  base.tokenizer_spec = cfg.tokenizer;
  base.vocab_size = tok.vocab_size();
  base.bos_id = tok.bos_id(), base.eos_id = tok.eos_id();
  base.sources_json = config["sources"].dump();
  base.created_by = cfg.created_by;

  PackStats stats;
  ExampleStream stream(cfg.sources, files, cfg.max_doc_bytes, &stats.skipped);
  ShardSink sink(cfg, base);
  Encoder enc(tok, kind, bos, eos, chat.get());
  int threads = cfg.threads > 0 ? static_cast<int>(cfg.threads) : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  try {
    run_pipeline(stream, enc, sink, cfg, threads, t0);
    sink.finish();
    stats.docs = sink.docs(), stats.tokens = sink.tokens(), stats.shards = sink.shards().size();
    stats.bytes_read = stream.bytes();
    if (stats.docs == 0) {
      std::string what = "pack: the sources hold no documents (" + join(files[0], ", ") + (files.size() > 1 ? ", ..." : "") + ")";
      for (const auto& [why, n] : stats.skipped) what += "; skipped " + std::to_string(n) + " (" + why + ")";
      throw Error(what, "check the paths, the format and the field names");
    }
    stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    write_index(cfg, base, sink, stats, config);
  } catch (...) {
    sink.abandon();
    throw;
  }
  return stats;
}

}  // namespace bonsai
