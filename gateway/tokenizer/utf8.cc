#include "gateway/tokenizer/utf8.h"

namespace tessera::tokenizer::utf8 {
namespace {

// Allowed range of the second byte after a lead byte (Unicode Table 3-7); later
// continuation bytes are always 0x80..0xBF.
struct SecondByteRange {
  unsigned char lo;
  unsigned char hi;
};

SecondByteRange second_byte_range(unsigned char lead) {
  switch (lead) {
    case 0xE0: return {0xA0, 0xBF};
    case 0xED: return {0x80, 0x9F};
    case 0xF0: return {0x90, 0xBF};
    case 0xF4: return {0x80, 0x8F};
    default: return {0x80, 0xBF};
  }
}

// Length of the well-formed prefix of the sequence starting at bytes[pos], and whether it
// is the complete sequence.
struct Probe {
  size_t length;
  bool complete;
};

Probe probe(std::string_view bytes, size_t pos) {
  const auto lead = static_cast<unsigned char>(bytes[pos]);
  const size_t need = sequence_length(lead);
  if (lead < 0x80) return {1, true};
  if (need == 1) return {0, false};  // not a lead byte
  size_t len = 1;
  while (len < need && pos + len < bytes.size()) {
    const auto b = static_cast<unsigned char>(bytes[pos + len]);
    const SecondByteRange range = len == 1 ? second_byte_range(lead) : SecondByteRange{0x80, 0xBF};
    if (b < range.lo || b > range.hi) return {len, false};
    ++len;
  }
  return {len, len == need};
}

}  // namespace

size_t valid_prefix_length(std::string_view bytes) {
  size_t pos = 0;
  while (pos < bytes.size()) {
    if (static_cast<unsigned char>(bytes[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const Probe p = probe(bytes, pos);
    if (!p.complete) return pos;
    pos += p.length;
  }
  return pos;
}

bool is_valid(std::string_view bytes) { return valid_prefix_length(bytes) == bytes.size(); }

void append_lossy(std::string_view bytes, std::string& out) {
  size_t pos = 0;
  while (pos < bytes.size()) {
    size_t run = pos;
    while (run < bytes.size() && static_cast<unsigned char>(bytes[run]) < 0x80) ++run;
    out.append(bytes.substr(pos, run - pos));
    pos = run;
    if (pos >= bytes.size()) break;
    const Probe p = probe(bytes, pos);
    if (p.complete) {
      out.append(bytes.substr(pos, p.length));
      pos += p.length;
    } else {
      out.append(kReplacementChar);
      pos += p.length == 0 ? 1 : p.length;
    }
  }
}

size_t incomplete_tail_length(std::string_view bytes) {
  const size_t n = bytes.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const auto b = static_cast<unsigned char>(bytes[n - back]);
    if ((b & 0xC0) == 0x80) continue;  // continuation: keep looking for the lead
    if (b < 0x80 || sequence_length(b) == 1) return 0;
    const Probe p = probe(bytes, n - back);
    return (!p.complete && p.length == back) ? back : 0;
  }
  return 0;
}

void append_code_point(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

uint32_t next_code_point(std::string_view bytes, size_t& pos) {
  const auto lead = static_cast<unsigned char>(bytes[pos]);
  const size_t len = sequence_length(lead);
  uint32_t cp = len == 1 ? lead : (lead & (0xFF >> (len + 1)));
  for (size_t i = 1; i < len; ++i) cp = (cp << 6) | (static_cast<unsigned char>(bytes[pos + i]) & 0x3F);
  pos += len;
  return cp;
}

}  // namespace tessera::tokenizer::utf8
