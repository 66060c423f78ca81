// `bonsai data pack`: text, instruction and preference datasets -> tokenized HDF5 shards
// (data/shards.h) + out_dir/index.json. Streaming: inputs are read a line (JSONL, text) or an array
// element (JSON) at a time and shards are written incrementally, so memory stays bounded whatever
// the input size. Tokenization runs on several threads; the output does not depend on how many.
//
// Source formats (PackSource::format) and the kind of data they make:
//   text            pretrain  plain text; `split`: file (one document per file, at most
//                             max_doc_bytes), paragraph (blank-line separated) or line
//   jsonl           pretrain  one JSON object per line (or a JSON array); the document is `field`
//   alpaca          sft       {instruction, input?, output, system?} -> user / assistant
//   sharegpt        sft       {conversations: [{from: human|gpt|system, value}], system?}
//   messages        sft       {messages: [{role: user|assistant|system, content}]}
//   sharegpt_pairs  preference {conversations (the prompt turns), chosen, rejected} where chosen /
//                             rejected are {from: gpt, value} or a string
//   paired          preference {prompt_field, chosen_field, rejected_field} strings, e.g.
//                             question / response_j / response_k
//   hh_rlhf         preference {chosen, rejected}: whole "\n\nHuman: ...\n\nAssistant: ..."
//                             dialogues; the shared prompt is every turn but the final assistant one
// JSON inputs may be JSONL or one JSON array; any input may be gzip-compressed (.gz).
// SFT and preference examples are rendered with the chat template (data/chat_template.h); the loss
// mask covers the assistant turns (preference: only the final response).
// Records that cannot be trained on are skipped and counted (a chat without an assistant reply, a
// preference pair whose two dialogues disagree on the prompt); malformed input is an error naming
// the file, the line and the record.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace bonsai {

struct PackSource {
  std::string path;           // a file or a glob ("data/*.jsonl.gz")
  std::string format;         // see above
  std::string split = "paragraph";  // text: file | paragraph | line
  std::string field = "text";       // jsonl: the text field
  std::string messages_field;       // sharegpt / messages / sharegpt_pairs ("" = conversations / messages)
  std::string prompt_field = "prompt", chosen_field = "chosen", rejected_field = "rejected";
  std::string system_prompt;        // sft / preference: a system message put before every chat
};

struct PackConfig {
  std::string tokenizer;            // anything Tokenizer::load takes
  std::string output;               // the output directory
  std::string kind = "pretrain";    // pretrain | sft | preference
  std::vector<PackSource> sources;
  int64_t shard_tokens = 100'000'000;  // most tokens per shard (pretrain shards are filled exactly)
  bool eos_between_docs = true;        // pretrain: EOS after every document
  std::string add_bos = "auto";        // pretrain: BOS before every document: auto (the tokenizer's
                                       // add_bos flag) | true | false
  std::string chat_template;           // "" = the tokenizer's own; or a built-in: chatml, llama3,
                                       // llama3.1, llama3.2 (dated today, as HF does), smollm2
  int64_t threads = 0;                 // tokenizer threads; 0 = all cores
  int64_t limit = 0;                   // stop after this many documents/examples (0 = all)
  int64_t max_doc_bytes = 64 << 20;    // text split=file: larger files are refused (memory bound)
  int64_t chunk_tokens = 1 << 14;      // HDF5 chunk, in tokens (see ShardWriterOptions)
  int64_t compression_level = 1;       // deflate 0..9 (see ShardWriterOptions)
  bool overwrite = false;              // replace shards already in `output`
  bool progress = false;               // print progress to stderr every few seconds
  std::string created_by;              // recorded in every shard and in index.json
};

struct PackStats {
  uint64_t docs = 0, tokens = 0, shards = 0;
  uint64_t bytes_read = 0;                 // uncompressed input bytes
  std::map<std::string, uint64_t> skipped;  // reason -> count
  double seconds = 0;
  std::string summary() const;  // one line: counts, MB/s, tokens/s
};

// Packs `cfg` (validated first: every error names the key or source). Throws bonsai::Error.
PackStats pack_dataset(const PackConfig& cfg);

// The source list of a YAML config: a sequence whose entries are either maps (path, format and the
// PackSource options) or strings (a path, taking every option from `defaults`). Unknown keys and
// unknown format names are errors with a "did you mean". `where` names the config for messages.
std::vector<PackSource> parse_sources(const YAML::Node& list, const PackSource& defaults, const std::string& where);

// The format names above, and which kind each makes.
const std::vector<std::string>& pack_formats();
std::string pack_format_kind(const std::string& format);

}  // namespace bonsai
