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
  explicit ByteSource(const std::string& path) : path_(path), buf_(1 << 18) {
    f_ = gzopen(path.c_str(), "rb");
    if (f_ == nullptr) throw Error("cannot open '" + path + "': " + std::strerror(errno));
    gzbuffer(f_, 1 << 18);
    if (peek() == 0xEF && starts_with_bom()) pos_ += 3;  // a UTF-8 byte-order mark is not text
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
    for (;;) {
      if (pos_ == end_ && !fill()) return !line.empty() || pending_cr_line();
      const char* start = buf_.data() + pos_;
      const void* nl = std::memchr(start, '\n', end_ - pos_);
      size_t n = nl ? static_cast<const char*>(nl) - start : end_ - pos_;
      line.append(start, n);
      pos_ += n;
      if (nl) {
        ++pos_, ++line_;
        if (!line.empty() && line.back() == '\r') line.pop_back();
        return true;
      }
    }
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
      throw Error("cannot read '" + path_ + "': " + (msg ? msg : "read error") +
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
  bool pending_cr_line() { return false; }

  std::string path_;
  gzFile f_ = nullptr;
  std::vector<char> buf_;
  size_t pos_ = 0, end_ = 0;
  uint64_t line_ = 0, bytes_ = 0;
};

// Records of a JSON input, one at a time: JSONL (one object per line), or a top-level JSON array
// scanned element by element (never parsed whole). Errors name file:line and the record number.
class RecordReader {
 public:
  explicit RecordReader(const std::string& path) : in_(path) {
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
      uint64_t line = start_line_ + std::count(text.begin(), text.begin() + std::min(e.byte, text.size()), '\n');
      if (e.byte > 0 && e.byte <= text.size() && text[e.byte - 1] == '\n') --line;
      std::string msg = e.what();
      auto cut = msg.find("] ");
      throw Error(in_.path() + ":" + std::to_string(line) + ": invalid JSON in record " + std::to_string(record_) +
                      ": " + (cut == std::string::npos ? msg : msg.substr(cut + 2)),
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
    while (in_.getline(text)) {
      start_line_ = in_.line() - 1;
      if (text.find_first_not_of(" \t\r") != std::string::npos) return true;
    }
    return false;
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
  start_line_ = in_.line() - (c == '\n' ? 1 : 0);
  int depth = 0;
  bool in_string = false;
  for (;; c = in_.get()) {
    if (c == -1) truncated();
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
  if (sources_[src_].format == "text") lines_ = std::make_unique<ByteSource>(path);
  else records_ = std::make_unique<RecordReader>(path);
  return true;
}

bool ExampleStream::next_text(Example& ex) {
  const std::string& split = sources_[src_].split;
  std::string line;
  ex.text.clear();
  uint64_t first_line = lines_->line();
  while (lines_->getline(line)) {
    bool blank = line.find_first_not_of(" \t\r\f\v") == std::string::npos;
    if (split == "line") {
      if (blank) continue;
      ex.text = std::move(line);
      ex.where = lines_->path() + ":" + std::to_string(lines_->line() - 1);
      return true;
    }
    if (split == "paragraph" && blank) {
      if (ex.text.empty()) { first_line = lines_->line(); continue; }
      break;
    }
    if (!ex.text.empty() || split == "file") ex.text += '\n';
    if (ex.text.size() == 1 && split == "file" && first_line == 1 && line.empty() && ex.text == "\n") {}
    ex.text += line;
    if (static_cast<int64_t>(ex.text.size()) > max_doc_bytes_) {
      throw Error(lines_->path() + ":" + std::to_string(first_line) + ": a document (split: " + split + ") is larger than max_doc_bytes = " +
                      std::to_string(max_doc_bytes_), "use split: paragraph or line, or raise max_doc_bytes");
    }
  }
  if (split == "file" && !ex.text.empty()) ex.text.erase(0, 1);  // the '\n' put before the first line
  ex.where = lines_->path() + ":" + std::to_string(first_line);
  return !ex.text.empty();
}

bool ExampleStream::next(Example& ex) {
  for (;;) {
    if (!records_ && !lines_ && !open_next_file()) return false;
    ex = Example();
    if (lines_) {
      if (next_text(ex)) return true;
      if (sources_[src_].split == "file") (*skipped_)["empty document"] += 1;
      open_next_file() || (close_current(), false);
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

}  // namespace
}  // namespace bonsai
