// Built-in chat template renderers (see chat_template.h). Each mirrors its Jinja source as HF runs
// it: the Llama templates trim message contents (Jinja's |trim is Python's str.strip) and JSON-encode
// tool results; ChatML keeps contents verbatim.
#include "data/chat_template.h"

#include <cstdio>
#include <ctime>

#include "core/error.h"

namespace bonsai {
namespace {

// Decodes the code point at s[i] (well-formed or not: a bad byte reads as itself) and its length.
uint32_t code_point_at(const std::string& s, size_t i, size_t& len) {
  auto c = static_cast<unsigned char>(s[i]);
  len = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
  if (i + len > s.size()) len = 1;
  if (len == 1) return c;
  uint32_t cp = c & (0x7F >> len);
  for (size_t k = 1; k < len; ++k) {
    auto b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xC0) != 0x80) {
      len = 1;
      return c;
    }
    cp = (cp << 6) | (b & 0x3F);
  }
  return cp;
}

// Python's str.isspace(): Unicode White_Space plus the information separators U+001C..U+001F.
bool python_space(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
         cp == 0x3000;
}

std::string today_date() {
  std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char buf[32];
  std::strftime(buf, sizeof buf, "%d %b %Y", &local);
  return buf;
}

bool contains(const std::string& s, const char* needle) { return s.find(needle) != std::string::npos; }

// Unescapes a Jinja string literal's body (\n, \t, \', \", \\).
std::string jinja_unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\' || i + 1 == s.size()) {
      out += s[i];
      continue;
    }
    char n = s[++i];
    out += n == 'n' ? '\n' : n == 't' ? '\t' : n == 'r' ? '\r' : n;
  }
  return out;
}

// The literal default system prompt of a ChatML template: the text between a "<|im_start|>system"
// newline and "<|im_end|>" that is plain text (not an expression such as messages[0]['content']).
std::string chatml_default_system(const std::string& jinja) {
  const std::string start = "<|im_start|>system";
  for (size_t pos = jinja.find(start); pos != std::string::npos; pos = jinja.find(start, pos + 1)) {
    size_t body = pos + start.size();
    if (jinja.compare(body, 2, "\\n") == 0) body += 2;
    else if (jinja.compare(body, 1, "\n") == 0) body += 1;
    else continue;
    size_t end = jinja.find("<|im_end|>", body);
    if (end == std::string::npos) continue;
    std::string text = jinja.substr(body, end - body);
    if (text.find_first_of("'\"{}+") == std::string::npos) return jinja_unescape(text);
  }
  return "";
}

// The `date_string = "..."` default a Llama 3.1 template sets.
std::string llama_default_date(const std::string& jinja) {
  size_t k = jinja.find("set date_string = \"");
  if (k == std::string::npos) return "26 Jul 2024";
  k += 19;
  size_t end = jinja.find('"', k);
  return end == std::string::npos ? "26 Jul 2024" : jinja.substr(k, end - k);
}

void add(std::vector<ChatSegment>& out, std::string text, bool assistant = false) {
  if (!out.empty() && out.back().assistant == assistant) out.back().text += text;
  else out.push_back(ChatSegment{std::move(text), assistant});
}

}  // namespace

std::string python_strip(const std::string& s) {
  size_t b = 0, len = 0;
  while (b < s.size() && python_space(code_point_at(s, b, len))) b += len;
  size_t e = b, i = b;
  while (i < s.size()) {  // e = end of the last non-space character
    uint32_t cp = code_point_at(s, i, len);
    i += len;
    if (!python_space(cp)) e = i;
  }
  return s.substr(b, e - b);
}

std::string json_dumps_string(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

// ---- construction and recognition --------------------------------------------------------------

ChatTemplate ChatTemplate::llama3() { return ChatTemplate(ChatFormat::Llama3, "llama3"); }

ChatTemplate ChatTemplate::llama31() { return ChatTemplate(ChatFormat::Llama31, "llama3.1"); }

ChatTemplate ChatTemplate::llama32() {
  ChatTemplate t(ChatFormat::Llama31, "llama3.2");
  t.date_is_today_ = true;
  return t;
}

ChatTemplate ChatTemplate::chatml(std::string default_system) {
  ChatTemplate t(ChatFormat::ChatML, "chatml");
  t.default_system = std::move(default_system);
  return t;
}

ChatTemplate ChatTemplate::smollm2() {
  ChatTemplate t = chatml("You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  t.name_ = "smollm2";
  return t;
}

ChatTemplate ChatTemplate::from_jinja(const std::string& jinja) {
  if (contains(jinja, "<|start_header_id|>") && contains(jinja, "<|eot_id|>")) {
    if (!contains(jinja, "Cutting Knowledge Date")) return llama3();
    ChatTemplate t = contains(jinja, "strftime_now") ? llama32() : llama31();
    t.default_date_ = llama_default_date(jinja);
    return t;
  }
  if (contains(jinja, "<|im_start|>") && contains(jinja, "<|im_end|>")) {
    ChatTemplate t = chatml(chatml_default_system(jinja));
    if (t.default_system == smollm2().default_system) t.name_ = "smollm2";
    return t;
  }
  std::string start = jinja.substr(0, 120);
  for (char& c : start)
    if (c == '\n') c = ' ';
  throw Error("chat template not recognized: '" + start + (jinja.size() > 120 ? "...'" : "'"),
              "bonsai renders Llama 3 (<|start_header_id|>) and ChatML (<|im_start|>) templates; "
              "give a model that uses one of them");
}

ChatTemplate ChatTemplate::for_tokenizer(const Tokenizer& tok) {
  ChatTemplate t = [&] {
    if (!tok.chat_template().empty()) return from_jinja(tok.chat_template());
    if (tok.token_id("<|start_header_id|>") >= 0) return llama31();
    if (tok.token_id("<|im_start|>") >= 0) return chatml();
    throw Error("tokenizer '" + tok.source() + "' has no chat template and no chat special tokens",
                "chat formatting needs a model with a chat template (Llama 3 Instruct, SmolLM2-Instruct)");
  }();
  if (tok.bos_id() >= 0 && t.format() != ChatFormat::ChatML) t.bos_token = tok.token_text(tok.bos_id());
  return t;
}

std::string ChatTemplate::end_of_turn() const { return format_ == ChatFormat::ChatML ? "<|im_end|>" : "<|eot_id|>"; }

// ---- rendering --------------------------------------------------------------------------------

namespace {

void render_llama_message(std::vector<ChatSegment>& out, const ChatMessage& m, bool tool_roles) {
  if (tool_roles && (m.role == "tool" || m.role == "ipython")) {  // 3.1+: tool results are JSON-encoded
    add(out, "<|start_header_id|>ipython<|end_header_id|>\n\n" + json_dumps_string(m.content) + "<|eot_id|>");
    return;
  }
  add(out, "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n");
  std::string body = python_strip(m.content) + "<|eot_id|>";
  add(out, body, m.role == "assistant");
}

}  // namespace

std::vector<ChatSegment> ChatTemplate::render_segments(const std::vector<ChatMessage>& messages,
                                                       bool add_generation_prompt) const {
  std::vector<ChatSegment> out;
  if (format_ == ChatFormat::ChatML) {
    for (size_t i = 0; i < messages.size(); ++i) {
      const ChatMessage& m = messages[i];
      if (i == 0 && m.role != "system" && !default_system.empty())
        add(out, "<|im_start|>system\n" + default_system + "<|im_end|>\n");
      add(out, "<|im_start|>" + m.role + "\n");
      add(out, m.content + "<|im_end|>", m.role == "assistant");
      add(out, "\n");
    }
    if (add_generation_prompt) add(out, "<|im_start|>assistant\n");
    return out;
  }
  if (format_ == ChatFormat::Llama3) {
    if (!messages.empty()) add(out, bos_token);  // the template prepends it to the first message
    for (const auto& m : messages) render_llama_message(out, m, false);
  } else {
    if (messages.empty()) throw Error("cannot render an empty chat with the " + name_ + " template (it reads messages[0])");
    size_t first = messages[0].role == "system" ? 1 : 0;
    std::string date = !date_string.empty() ? date_string : date_is_today_ ? today_date() : default_date_;
    add(out, bos_token + "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: " +
                 date + "\n\n" + (first ? python_strip(messages[0].content) : std::string()) + "<|eot_id|>");
    for (size_t i = first; i < messages.size(); ++i) render_llama_message(out, messages[i], true);
  }
  if (add_generation_prompt) add(out, "<|start_header_id|>assistant<|end_header_id|>\n\n");
  return out;
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const {
  std::string text;
  for (const auto& s : render_segments(messages, add_generation_prompt)) text += s.text;
  return text;
}

// ---- encoding -----------------------------------------------------------------------------------

EncodedChat encode_chat(const Tokenizer& tok, const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt) {
  std::vector<ChatSegment> segments = tmpl.render_segments(messages, add_generation_prompt);
  std::string text;
  std::vector<std::pair<size_t, size_t>> spans;  // assistant byte ranges
  for (const auto& s : segments) {
    if (s.assistant) spans.emplace_back(text.size(), text.size() + s.text.size());
    text += s.text;
  }
  EncodedChat out;
  std::vector<size_t> starts;
  out.ids = tok.encode_with_offsets(text, /*parse_special=*/true, starts);
  out.mask.assign(out.ids.size(), 0);
  size_t span = 0;
  for (size_t i = 0; i < out.ids.size(); ++i) {
    size_t b = starts[i], e = i + 1 < starts.size() ? starts[i + 1] : text.size();
    while (span < spans.size() && spans[span].second <= b) ++span;
    if (span < spans.size() && spans[span].first < e && b < spans[span].second) out.mask[i] = 1;
  }
  return out;
}

}  // namespace bonsai
