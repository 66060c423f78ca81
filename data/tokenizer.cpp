// Byte-level BPE: the encode pipeline (special tokens -> UTF-8 runs -> regex pieces -> cached BPE
// merges), decode, streaming decode, the identity hash, and Tokenizer::load's dispatch on the spec.
//
// Malformed UTF-8 in the input is kept, not replaced: each stretch of bytes that is not well-formed
// UTF-8 becomes a piece of its own and is encoded with the byte tokens (merged where the vocabulary
// has such byte strings), so decode(encode(x)) == x for every byte string. HF and llama.cpp
// substitute U+FFFD instead; for well-formed input the two agree exactly.
#include "data/tokenizer.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "data/tokenizer_impl.h"
#include "model/registry.h"

namespace bonsai {
namespace fs = std::filesystem;
using tok::TokenKind;

namespace {

// ---- per-thread word cache --------------------------------------------------------------------

// Piece -> ids, per tokenizer and thread: natural text repeats its words, and the merge loop is
// the costly part. Thread-local, so concurrent encode() calls share nothing and take no lock.
struct WordCache {
  uint64_t owner = 0;
  tok::FlatStringMap<std::pair<uint32_t, uint32_t>> map;  // piece -> (offset, count) in ids
  std::vector<int32_t> ids;
  void reset(uint64_t serial) {
    owner = serial;
    map.clear();
    ids.clear();
  }
};

constexpr size_t kCacheMaxPiece = 128;      // longer pieces are rare and rarely repeat
constexpr size_t kCacheMaxEntries = 1 << 17;  // ~8 MB per tokenizer and thread at most
constexpr size_t kCacheSlots = 4;           // tokenizers used alternately on one thread

WordCache& cache_for(uint64_t serial) {
  thread_local std::array<WordCache, kCacheSlots> caches;
  thread_local size_t next_victim = 0;
  for (auto& c : caches)
    if (c.owner == serial) return c;
  WordCache& c = caches[next_victim++ % kCacheSlots];
  c.reset(serial);
  return c;
}

std::atomic<uint64_t> g_next_serial{1};

// The merge loop's working arrays, reused across calls on a thread.
struct BpeScratch {
  struct Item {
    int32_t rank, pos, left, right, merged;
  };
  std::vector<int32_t> ids, prev, next;
  std::vector<Item> heap;
};

}  // namespace

// ---- Impl: derived tables and identity ---------------------------------------------------------

void Tokenizer::Impl::finish() {
  size_t n = text.size();
  bytes.assign(n, std::string());
  text_to_id.reserve(n);
  bytes_to_id.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    if (kind[i] == TokenKind::Missing) continue;
    if (kind[i] != TokenKind::Normal || !tok::byte_level_decode(text[i], bytes[i])) bytes[i] = text[i];
    text_to_id.insert(text[i], static_cast<int32_t>(i));
    if (kind[i] == TokenKind::Normal) bytes_to_id.insert(bytes[i], static_cast<int32_t>(i));
  }
  // Some vocabularies lack a few byte tokens (SmolLM2 has none for 0x04 or 0xF1, StarCoder none
  // for 0xC0): those bytes are dropped when encoding, as llama.cpp does. A vocabulary without the
  // printable ASCII bytes is not byte-level at all.
  for (int b = 0; b < 256; ++b) {
    const int32_t* id = bytes_to_id.find(std::string_view(reinterpret_cast<const char*>(&b), 1));
    byte_token[b] = id == nullptr ? -1 : *id;
    if (id == nullptr && b > 0x20 && b < 0x7F)
      throw Error("tokenizer '" + source + "': the vocabulary has no token for '" + std::string(1, static_cast<char>(b)) +
                      "', so it is not a byte-level BPE vocabulary",
                  "bonsai reads byte-level BPE vocabularies (GPT-2, Llama 3, SmolLM, StarCoder)");
  }
  for (size_t i = 0; i < n; ++i) {
    if (kind[i] != TokenKind::Special && kind[i] != TokenKind::Added) continue;
    tok::SpecialMatcher::Token t{text[i], static_cast<int32_t>(i)};
    if (i < strip.size()) {
      t.lstrip = (strip[i] & 1) != 0;
      t.rstrip = (strip[i] & 2) != 0;
    }
    special_all.add(t);
    if (kind[i] == TokenKind::Added) special_user.add(t);
  }
  pre_name = pre_name.empty() ? tok::pre_tokenizer_name_for(pre->patterns()) : pre_name;
  // Canonical content: everything that decides encode/decode results, nothing about the file.
  std::string canon = "bonsai-tokenizer-v1\npre";
  for (const auto& p : pre->patterns()) canon += "\x1f" + p;
  canon += "\nignore_merges " + std::to_string(ignore_merges) + "\nvocab " + std::to_string(n) + "\n";
  for (size_t i = 0; i < n; ++i) {
    canon += static_cast<char>('0' + static_cast<int>(kind[i]));
    if (i < strip.size() && strip[i] != 0) canon += "s" + std::to_string(strip[i]);
    canon += std::to_string(text[i].size()) + ":" + text[i];
  }
  if (ranks_are_ids) {
    canon += "\nmerges by-rank";
  } else {
    canon += "\nmerges " + std::to_string(merge_list.size()) + "\n";
    for (const auto& [a, b] : merge_list) canon += std::to_string(a) + " " + std::to_string(b) + "\n";
  }
  identity = tok::sha256_hex(canon);
  serial = g_next_serial.fetch_add(1);
}

// ---- encoding ---------------------------------------------------------------------------------

void Tokenizer::Impl::bpe(std::string_view piece, std::vector<int32_t>& out, std::vector<size_t>* starts,
                          size_t base) const {
  thread_local BpeScratch sc;
  using Item = BpeScratch::Item;
  const int32_t n = static_cast<int32_t>(piece.size());
  sc.ids.resize(n);
  sc.prev.resize(n);
  sc.next.resize(n);
  sc.heap.clear();
  // Min-heap on (rank, position): the lowest rank merges first, the leftmost among equals, which
  // is what HF, tiktoken and llama.cpp all do. A symbol's index is its first byte's offset.
  auto later = [](const Item& a, const Item& b) { return a.rank > b.rank || (a.rank == b.rank && a.pos > b.pos); };
  auto push = [&](int32_t left_pos, int32_t right_pos) {
    int32_t l = sc.ids[left_pos], r = sc.ids[right_pos];
    if (l < 0 || r < 0) return;  // a byte with no token never merges
    const tok::MergeTable::Entry* e = merges.find(l, r);
    if (e == nullptr) return;
    sc.heap.push_back(Item{e->rank, left_pos, l, r, e->id});
    std::push_heap(sc.heap.begin(), sc.heap.end(), later);
  };
  for (int32_t i = 0; i < n; ++i) {
    sc.ids[i] = byte_token[static_cast<unsigned char>(piece[i])];
    sc.prev[i] = i - 1;
    sc.next[i] = i + 1 < n ? i + 1 : -1;
  }
  for (int32_t i = 0; i + 1 < n; ++i) push(i, i + 1);
  while (!sc.heap.empty()) {
    std::pop_heap(sc.heap.begin(), sc.heap.end(), later);
    Item it = sc.heap.back();
    sc.heap.pop_back();
    // Stale entries: either side has merged since. Tokens only grow, so matching ids suffice.
    int32_t r = sc.next[it.pos];
    if (sc.ids[it.pos] != it.left || r < 0 || sc.ids[r] != it.right) continue;
    sc.ids[it.pos] = it.merged;
    sc.ids[r] = -1;  // dead: its stale heap entries must fail the check above
    sc.next[it.pos] = sc.next[r];
    if (sc.next[r] >= 0) sc.prev[sc.next[r]] = it.pos;
    if (sc.prev[it.pos] >= 0) push(sc.prev[it.pos], it.pos);
    if (sc.next[it.pos] >= 0) push(it.pos, sc.next[it.pos]);
  }
  for (int32_t i = 0; i >= 0; i = sc.next[i]) {
    if (sc.ids[i] < 0) continue;
    out.push_back(sc.ids[i]);
    if (starts != nullptr) starts->push_back(base + static_cast<size_t>(i));
  }
}

void Tokenizer::Impl::encode_piece(std::string_view piece, std::vector<int32_t>& out, std::vector<size_t>* starts,
                                   size_t base) const {
  if (piece.size() == 1) {
    int32_t id = byte_token[static_cast<unsigned char>(piece[0])];
    if (id < 0) return;
    out.push_back(id);
    if (starts != nullptr) starts->push_back(base);
    return;
  }
  if (ignore_merges) {
    if (const int32_t* id = bytes_to_id.find(piece)) {
      out.push_back(*id);
      if (starts != nullptr) starts->push_back(base);
      return;
    }
  }
  if (starts != nullptr || piece.size() > kCacheMaxPiece) {
    bpe(piece, out, starts, base);
    return;
  }
  WordCache& c = cache_for(serial);
  uint64_t h = tok::hash_sv(piece);
  if (const auto* hit = c.map.find(piece, h)) {
    out.insert(out.end(), c.ids.begin() + hit->first, c.ids.begin() + hit->first + hit->second);
    return;
  }
  size_t before = out.size();
  bpe(piece, out, nullptr, 0);
  if (c.map.size() >= kCacheMaxEntries) c.reset(serial);
  c.map.insert(piece, h, {static_cast<uint32_t>(c.ids.size()), static_cast<uint32_t>(out.size() - before)});
  c.ids.insert(c.ids.end(), out.begin() + before, out.end());
}

void Tokenizer::Impl::encode_plain(std::string_view text, std::vector<int32_t>& out, std::vector<size_t>* starts,
                                   size_t base) const {
  const char* s = text.data();
  size_t n = text.size();
  auto emit = [&](size_t b, size_t e) { encode_piece(std::string_view(s + b, e - b), out, starts, base + b); };
  for (size_t i = 0; i < n;) {
    size_t valid = tok::utf8_valid_prefix(s + i, n - i);
    if (valid > 0) {
      pre->split(s + i, valid, [&](size_t b, size_t e) { emit(i + b, i + e); });
      i += valid;
      continue;
    }
    size_t j = i + 1;
    while (j < n && tok::utf8_seq_len(reinterpret_cast<const unsigned char*>(s + j), n - j) == 0) ++j;
    emit(i, j);
    i = j;
  }
}

namespace {

void encode_with(const Tokenizer::Impl& im, std::string_view text, bool parse_special, std::vector<int32_t>& out,
                 std::vector<size_t>* starts) {
  const tok::SpecialMatcher& m = parse_special ? im.special_all : im.special_user;
  size_t pos = 0, b = 0, e = 0;
  int32_t id = -1;
  while (!m.empty() && m.find(text, pos, b, e, id)) {
    im.encode_plain(text.substr(pos, b - pos), out, starts, pos);
    out.push_back(id);
    if (starts != nullptr) starts->push_back(b);
    pos = e;
  }
  im.encode_plain(text.substr(pos), out, starts, pos);
}

}  // namespace

// ---- public API -------------------------------------------------------------------------------

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool parse_special) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  encode_with(*impl_, text, parse_special, out, nullptr);
  return out;
}

std::vector<int32_t> Tokenizer::encode_with_offsets(std::string_view text, bool parse_special,
                                                    std::vector<size_t>& starts) const {
  std::vector<int32_t> out;
  starts.clear();
  encode_with(*impl_, text, parse_special, out, &starts);
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::string out;
  for (int32_t id : ids) {
    const std::string& b = token_bytes(id);
    if (skip_special && impl_->kind[id] == TokenKind::Special) continue;
    out += b;
  }
  return out;
}

const std::string& Tokenizer::token_bytes(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= impl_->text.size())
    throw Error("token id " + std::to_string(id) + " is out of range: tokenizer '" + impl_->source + "' has ids 0.." +
                std::to_string(impl_->text.size() - 1));
  if (impl_->kind[id] == TokenKind::Missing)
    throw Error("token id " + std::to_string(id) + " has no token in tokenizer '" + impl_->source + "'");
  return impl_->bytes[id];
}

int64_t Tokenizer::vocab_size() const { return static_cast<int64_t>(impl_->text.size()); }
int32_t Tokenizer::bos_id() const { return impl_->bos; }
int32_t Tokenizer::eos_id() const { return impl_->eos; }
bool Tokenizer::add_bos() const { return impl_->add_bos; }

std::string Tokenizer::token_text(int32_t id) const {
  token_bytes(id);  // range check
  return impl_->text[id];
}

int32_t Tokenizer::token_id(const std::string& token_text) const {
  const int32_t* id = impl_->text_to_id.find(token_text);
  return id == nullptr ? -1 : *id;
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->kind.size() && impl_->kind[id] == TokenKind::Special;
}

std::string Tokenizer::identity() const { return impl_->identity; }
std::string Tokenizer::pre_tokenizer_name() const { return impl_->pre_name; }
std::string Tokenizer::chat_template() const { return impl_->chat_template; }
const std::string& Tokenizer::source() const { return impl_->source; }

// ---- load: which loader for which spec --------------------------------------------------------

namespace {

bool starts_with_gguf_magic(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  char magic[4] = {};
  return f.read(magic, 4) && std::memcmp(magic, "GGUF", 4) == 0;
}

std::unique_ptr<Tokenizer::Impl> load_directory(const fs::path& dir) {
  std::error_code ec;
  if (fs::exists(dir / "tokenizer.json", ec)) return tok::load_hf_json((dir / "tokenizer.json").string());
  if (fs::exists(dir / "vocab.json", ec) && fs::exists(dir / "merges.txt", ec))
    return tok::load_vocab_merges((dir / "vocab.json").string(), (dir / "merges.txt").string());
  if (fs::exists(dir / "tokenizer.model", ec)) return tok::load_tiktoken((dir / "tokenizer.model").string());
  throw Error("tokenizer directory '" + dir.string() + "' has no tokenizer.json, vocab.json + merges.txt, or tokenizer.model",
              "give the tokenizer file itself (tokenizer.json, a .gguf, a tiktoken ranks file)");
}

std::unique_ptr<Tokenizer::Impl> load_file(const fs::path& p) {
  std::string name = p.filename().string();
  if (p.extension() == ".gguf" || starts_with_gguf_magic(p)) return tok::load_gguf(p.string());
  const std::string suffix = "vocab.json";  // vocab.json, gpt2_vocab.json, gpt2-vocab.json ...
  if (name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
    fs::path merges = p.parent_path() / (name.substr(0, name.size() - suffix.size()) + "merges.txt");
    if (!fs::exists(merges))
      throw Error("tokenizer '" + p.string() + "' is a vocab.json, but '" + merges.string() + "' is missing",
                  "a GPT-2 style tokenizer needs vocab.json and merges.txt side by side");
    return tok::load_vocab_merges(p.string(), merges.string());
  }
  if (p.extension() == ".json") return tok::load_hf_json(p.string());
  return tok::load_tiktoken(p.string());
}

}  // namespace

Tokenizer Tokenizer::load(const std::string& spec) {
  if (spec.empty()) throw Error("no tokenizer given", "give a tokenizer.json, model directory, .gguf or tiktoken file");
  std::error_code ec;
  std::string path = spec;
  if (!fs::exists(spec, ec)) {
    try {
      path = resolve_model(spec);  // a known short name ("smollm2-135m-instruct")
    } catch (const Error& e) {
      throw Error("tokenizer '" + spec + "': no such file or directory, nor a known model name",
                  e.hint() + " (a tokenizer is a tokenizer.json, a model directory, a .gguf, a tiktoken ranks file, "
                             "or vocab.json + merges.txt)");
    }
  }
  std::unique_ptr<Impl> impl = fs::is_directory(path, ec) ? load_directory(path) : load_file(path);
  return Tokenizer(std::move(impl));
}

// ---- streaming decode -------------------------------------------------------------------------

StreamDecoder::StreamDecoder(const Tokenizer& tok, bool skip_special) : tok_(tok), skip_special_(skip_special) {}

std::string StreamDecoder::push(int32_t id) {
  const std::string& b = tok_.token_bytes(id);
  if (!(skip_special_ && tok_.is_special(id))) pending_ += b;
  // Hold back a trailing lead byte and its continuation bytes while the sequence is incomplete;
  // anything else (complete text, or bytes that can never complete) goes out now.
  size_t n = pending_.size(), keep = 0;
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    auto c = static_cast<unsigned char>(pending_[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: look further back
    size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    if (c >= 0xC2 && c <= 0xF4 && need > back) keep = back;
    break;
  }
  std::string out = pending_.substr(0, n - keep);
  pending_.erase(0, n - keep);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace bonsai
