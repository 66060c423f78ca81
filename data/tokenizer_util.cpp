// Tokenizer building blocks with no tokenizer logic of their own: GPT-2's byte<->unicode map,
// UTF-8 checks, a fast 64-bit hash and SHA-256 (for Tokenizer::identity), the BPE merge table, and
// the special-token matcher.
#include <algorithm>
#include <cstring>

#include "data/tokenizer_impl.h"

namespace bonsai::tok {

// ---- GPT-2 byte map ---------------------------------------------------------------------------

namespace {

// Bytes that stand for themselves (printable Latin-1); the other 68 map to U+0100.. in byte order.
bool is_self_byte(int b) { return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); }

struct ByteMap {
  std::array<std::string, 256> to_unicode;
  std::array<int16_t, 256 + 68> from_cp;  // code point -> byte, -1 when none
  ByteMap() {
    from_cp.fill(-1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      uint32_t cp = is_self_byte(b) ? static_cast<uint32_t>(b) : static_cast<uint32_t>(256 + extra++);
      append_utf8(to_unicode[b], cp);
      from_cp[cp] = static_cast<int16_t>(b);
    }
  }
};

const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

// Decodes one well-formed sequence (caller checked it with utf8_seq_len).
uint32_t decode_seq(const unsigned char* s, size_t len) {
  switch (len) {
    case 1: return s[0];
    case 2: return ((s[0] & 0x1Fu) << 6) | (s[1] & 0x3Fu);
    case 3: return ((s[0] & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
    default: return ((s[0] & 0x07u) << 18) | ((s[1] & 0x3Fu) << 12) | ((s[2] & 0x3Fu) << 6) | (s[3] & 0x3Fu);
  }
}

}  // namespace

const std::array<std::string, 256>& byte_to_unicode() { return byte_map().to_unicode; }

std::string byte_level_encode(std::string_view bytes) {
  const auto& m = byte_map().to_unicode;
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) out += m[c];
  return out;
}

bool byte_level_decode(std::string_view s, std::string& out) {
  const auto& from = byte_map().from_cp;
  out.clear();
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t n = s.size();
  for (size_t i = 0; i < n;) {
    size_t len = utf8_seq_len(p + i, n - i);
    if (len == 0) return false;
    uint32_t cp = decode_seq(p + i, len);
    if (cp >= from.size() || from[cp] < 0) return false;
    out += static_cast<char>(from[cp]);
    i += len;
  }
  return true;
}

// ---- UTF-8 ------------------------------------------------------------------------------------

size_t utf8_seq_len(const unsigned char* s, size_t n) {
  unsigned char c = s[0];
  if (c < 0x80) return 1;
  auto cont = [&](size_t i) { return i < n && (s[i] & 0xC0) == 0x80; };
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (n < 2) return 0;
    unsigned char lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;  // no overlongs, no surrogates
    return (s[1] >= lo && s[1] <= hi && cont(2)) ? 3 : 0;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (n < 2) return 0;
    unsigned char lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;  // <= U+10FFFF
    return (s[1] >= lo && s[1] <= hi && cont(2) && cont(3)) ? 4 : 0;
  }
  return 0;
}

size_t utf8_valid_prefix(const char* s, size_t n) {
  const auto* p = reinterpret_cast<const unsigned char*>(s);
  size_t i = 0;
  while (i < n) {
    // ASCII runs dominate most text: check eight bytes at a time.
    while (i + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    size_t len = utf8_seq_len(p + i, n - i);
    if (len == 0) break;
    i += len;
  }
  return i;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// ---- hashing ----------------------------------------------------------------------------------

uint64_t hash_bytes(const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xC2B2AE3D27D4EB4Full);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ (w * 0x87C37B91114253D5ull)) * 0x4CF5AD432745937Full;
    h ^= h >> 29;
  }
  uint64_t tail = 0;
  for (size_t k = 0; i + k < n; ++k) tail |= static_cast<uint64_t>(p[i + k]) << (8 * k);
  h = (h ^ (tail * 0x87C37B91114253D5ull)) * 0x4CF5AD432745937Full;
  h ^= h >> 32;
  h *= 0xFF51AFD7ED558CCDull;
  h ^= h >> 29;
  return h;
}

namespace {

constexpr uint32_t kSha256K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

inline uint32_t rotr(uint32_t x, int r) { return (x >> r) | (x << (32 - r)); }

void sha256_block(uint32_t h[8], const unsigned char* b) {
  uint32_t w[64];
  for (int i = 0; i < 16; ++i)
    w[i] = (uint32_t{b[4 * i]} << 24) | (uint32_t{b[4 * i + 1]} << 16) | (uint32_t{b[4 * i + 2]} << 8) | b[4 * i + 3];
  for (int i = 16; i < 64; ++i) {
    uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
    uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  uint32_t a = h[0], bb = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
  for (int i = 0; i < 64; ++i) {
    uint32_t t1 = hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + kSha256K[i] + w[i];
    uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & bb) ^ (a & c) ^ (bb & c));
    hh = g;
    g = f;
    f = e;
    e = d + t1;
    d = c;
    c = bb;
    bb = a;
    a = t1 + t2;
  }
  h[0] += a, h[1] += bb, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += hh;
}

}  // namespace

std::string sha256_hex(std::string_view data) {
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  size_t n = data.size(), i = 0;
  for (; i + 64 <= n; i += 64) sha256_block(h, p + i);
  unsigned char last[128] = {};
  size_t rest = n - i;
  std::memcpy(last, p + i, rest);
  last[rest] = 0x80;
  size_t total = rest + 1 + 8 <= 64 ? 64 : 128;
  uint64_t bits = static_cast<uint64_t>(n) * 8;
  for (int k = 0; k < 8; ++k) last[total - 1 - k] = static_cast<unsigned char>(bits >> (8 * k));
  for (size_t k = 0; k < total; k += 64) sha256_block(h, last + k);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (uint32_t v : h)
    for (int s = 28; s >= 0; s -= 4) out += hex[(v >> s) & 0xF];
  return out;
}

// ---- merge table ------------------------------------------------------------------------------

void MergeTable::reserve(size_t n) {
  size_t cap = 16;
  while (cap < n * 2) cap *= 2;
  if (cap > keys_.size()) rehash(cap);
}

void MergeTable::rehash(size_t cap) {
  std::vector<uint64_t> old_keys;
  std::vector<Entry> old_vals;
  old_keys.swap(keys_);
  old_vals.swap(vals_);
  keys_.assign(cap, kEmpty);
  vals_.assign(cap, Entry{0, 0});
  mask_ = cap - 1;
  for (size_t i = 0; i < old_keys.size(); ++i) {
    if (old_keys[i] == kEmpty) continue;
    size_t j = mix(old_keys[i]) & mask_;
    while (keys_[j] != kEmpty) j = (j + 1) & mask_;
    keys_[j] = old_keys[i];
    vals_[j] = old_vals[i];
  }
}

void MergeTable::insert(int32_t left, int32_t right, int32_t rank, int32_t id) {
  if ((count_ + 1) * 2 > keys_.size()) rehash(std::max<size_t>(16, keys_.size() * 2));
  uint64_t key = pack(left, right);
  size_t i = mix(key) & mask_;
  for (; keys_[i] != kEmpty; i = (i + 1) & mask_) {
    if (keys_[i] == key) {
      if (rank < vals_[i].rank) vals_[i] = Entry{rank, id};
      return;
    }
  }
  keys_[i] = key;
  vals_[i] = Entry{rank, id};
  ++count_;
}

// ---- special tokens ---------------------------------------------------------------------------

namespace {

// Unicode White_Space (what HF's AddedToken lstrip/rstrip strip: Rust's char::is_whitespace).
bool is_white_space(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
         cp == 0x3000;
}

// Whitespace length ending at s[end) / starting at s[begin), never crossing `limit`.
size_t white_space_before(std::string_view s, size_t end, size_t limit) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t i = end;
  while (i > limit) {
    size_t start = i - 1;
    while (start > limit && (p[start] & 0xC0) == 0x80 && i - start < 4) --start;
    size_t len = utf8_seq_len(p + start, i - start);
    if (len != i - start || !is_white_space(decode_seq(p + start, len))) break;
    i = start;
  }
  return end - i;
}

size_t white_space_after(std::string_view s, size_t begin) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t i = begin;
  while (i < s.size()) {
    size_t len = utf8_seq_len(p + i, s.size() - i);
    if (len == 0 || !is_white_space(decode_seq(p + i, len))) break;
    i += len;
  }
  return i - begin;
}

}  // namespace

void SpecialMatcher::add(Token t) {
  if (t.text.empty() || index_.find(t.text) != nullptr) return;
  index_.insert(t.text, static_cast<int32_t>(tokens_.size()));
  first_[static_cast<unsigned char>(t.text[0])] = true;
  if (std::find(lengths_.begin(), lengths_.end(), t.text.size()) == lengths_.end()) {
    lengths_.push_back(t.text.size());
    std::sort(lengths_.begin(), lengths_.end(), std::greater<size_t>());
  }
  tokens_.push_back(std::move(t));
}

bool SpecialMatcher::find(std::string_view s, size_t from, size_t& begin, size_t& end, int32_t& id) const {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  for (size_t i = from; i < s.size(); ++i) {
    if (!first_[p[i]]) continue;
    for (size_t len : lengths_) {
      if (i + len > s.size()) continue;
      const int32_t* k = index_.find(s.substr(i, len));
      if (k == nullptr) continue;
      const Token& t = tokens_[*k];
      begin = i - (t.lstrip ? white_space_before(s, i, from) : 0);
      end = i + len + (t.rstrip ? white_space_after(s, i + len) : 0);
      id = t.id;
      return true;
    }
  }
  return false;
}

}  // namespace bonsai::tok
