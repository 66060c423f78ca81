// Chat templates without a Jinja engine: built-in renderers that reproduce, byte for byte, what
// Hugging Face's apply_chat_template produces with the models' own Jinja templates (Llama 3.0,
// Llama 3.1 / 3.2 / 3.3, and ChatML as SmolLM2 uses it), recognition of which built-in a model's
// template string is, and chat -> (ids, loss mask) encoding for SFT / DPO.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace bonsai {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant"; Llama 3.1+ also "tool" / "ipython"
  std::string content;
};

enum class ChatFormat {
  Llama3,   // Meta-Llama-3-*-Instruct: BOS, then one header + trimmed content + <|eot_id|> per message
  Llama31,  // Llama 3.1 / 3.2 / 3.3: also a system header with "Cutting Knowledge Date" and "Today Date"
  ChatML,   // <|im_start|>role\ncontent<|im_end|>\n (SmolLM2: with a default system prompt)
};

// A piece of rendered text; `assistant` marks model output (an assistant message's content and its
// end-of-turn token), which is what SFT / DPO losses train on.
struct ChatSegment {
  std::string text;
  bool assistant = false;
};

class ChatTemplate {
 public:
  static ChatTemplate llama3();
  // Llama 3.1 ("Today Date" defaults to "26 Jul 2024", as its template says).
  static ChatTemplate llama31();
  // Llama 3.2 / 3.3: "Today Date" defaults to today's local date ("%d %b %Y"), which is what HF's
  // strftime_now gives those templates; set date_string for reproducible output.
  static ChatTemplate llama32();
  // ChatML; `default_system` (may be empty) is injected when the first message is not a system one.
  static ChatTemplate chatml(std::string default_system = "");
  static ChatTemplate smollm2();  // ChatML with SmolLM2's default system prompt

  // Which built-in renders a model's Jinja template (tokenizer.chat_template / chat_template in
  // tokenizer_config.json): recognized by its markers (<|start_header_id|> + "Cutting Knowledge Date"
  // or not, <|im_start|>), with defaults (date, system prompt) read from the template text. Throws
  // bonsai::Error naming the template's start for anything else.
  static ChatTemplate from_jinja(const std::string& jinja);
  // The tokenizer's own template; when it has none (a tiktoken file), chosen by its special tokens
  // (<|start_header_id|> -> Llama 3.1, <|im_start|> -> ChatML). bos_token is taken from the tokenizer.
  static ChatTemplate for_tokenizer(const Tokenizer& tok);

  // The exact text the model's Jinja template renders. Throws bonsai::Error for an empty chat in the
  // Llama 3.1+ format (its template fails on one too).
  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;
  // The same text, cut where assistant output starts and ends.
  std::vector<ChatSegment> render_segments(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;

  ChatFormat format() const { return format_; }
  const std::string& name() const { return name_; }  // "llama3", "llama3.1", "llama3.2", "chatml", "smollm2"
  // The text that ends an assistant turn: "<|eot_id|>" or "<|im_end|>".
  std::string end_of_turn() const;

  std::string bos_token = "<|begin_of_text|>";  // what {{ bos_token }} renders (Llama formats)
  std::string date_string;     // Llama 3.1+: "Today Date"; empty = the template's default
  std::string default_system;  // ChatML: injected system prompt ("" = none)

 private:
  ChatTemplate(ChatFormat f, std::string name) : format_(f), name_(std::move(name)) {}
  bool date_is_today_ = false;  // Llama 3.2+: an empty date_string means today
  std::string default_date_ = "26 Jul 2024";
  ChatFormat format_;
  std::string name_;
};

struct EncodedChat {
  std::vector<int32_t> ids;
  std::vector<uint8_t> mask;  // 1 = assistant output (content and end-of-turn token), 0 = prompt
};

// Renders the chat and encodes the whole text at once with special-token parsing, exactly as
// apply_chat_template(tokenize=True) does; the template already contains the BOS text where the
// model wants it, so no BOS is added. A token is masked 1 when any of its bytes lies in assistant
// output. Note: special-token strings inside message contents are parsed as special tokens too.
EncodedChat encode_chat(const Tokenizer& tok, const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt);

// Python's str.strip() (Jinja's |trim): removes Unicode whitespace (White_Space and U+001C..U+001F).
std::string python_strip(const std::string& s);
// Python's json.dumps(s, ensure_ascii=False) of a string (HF's |tojson on a string).
std::string json_dumps_string(const std::string& s);

}  // namespace bonsai
