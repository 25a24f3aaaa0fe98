#include "gateway/tokenizer/pre_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <cstdlib>

namespace tessera::tokenizer {
namespace {

pcre2_code* as_code(void* p) { return static_cast<pcre2_code*>(p); }

// Match data is per call state; one block per thread, reused by every pattern, keeps the
// hot loop free of allocations. Only the whole match (pair 0) is read: should a pattern
// have more groups than fit, pcre2_match returns 0 but still fills pair 0.
constexpr uint32_t kNumOvectorPairs = 16;

pcre2_match_data* thread_match_data() {
  struct Holder {
    Holder() : data(pcre2_match_data_create(kNumOvectorPairs, nullptr)) {}
    ~Holder() { pcre2_match_data_free(data); }
    Holder(const Holder&) = delete;
    Holder& operator=(const Holder&) = delete;
    pcre2_match_data* data;
  };
  thread_local Holder holder;
  return holder.data;
}

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  if (from.empty()) return;
  std::string out;
  size_t pos = 0;
  while (true) {
    const size_t hit = s.find(from, pos);
    if (hit == std::string::npos) break;
    out.append(s, pos, hit - pos);
    out.append(to);
    pos = hit + from.size();
  }
  if (pos == 0) return;
  out.append(s, pos, std::string::npos);
  s = std::move(out);
}

bool is_ascii(std::string_view s) {
  for (char c : s) {
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  }
  return true;
}

void nfc_in_place(std::string& s) {
  if (is_ascii(s)) return;  // ASCII is always NFC
  utf8proc_uint8_t* result = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()), static_cast<utf8proc_ssize_t>(s.size()),
                   &result, static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n >= 0 && result != nullptr) s.assign(reinterpret_cast<const char*>(result), static_cast<size_t>(n));
  std::free(result);
}

}  // namespace

Result<std::shared_ptr<const SplitRegex>> SplitRegex::compile(const std::string& pattern) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  // UCP makes \s, \d, \w and [[:classes:]] Unicode-aware, as in Oniguruma, which HF uses.
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error_code, message, sizeof(message));
    return invalid_argument("pre-tokenizer regex '" + pattern + "' does not compile at offset " +
                            std::to_string(error_offset) + ": " + reinterpret_cast<const char*>(message));
  }
  // Without JIT (e.g. SELinux forbids executable memory) the interpreter still gives the
  // same matches, only slower.
  (void)pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  auto regex = std::shared_ptr<SplitRegex>(new SplitRegex());
  regex->code_ = code;
  return std::shared_ptr<const SplitRegex>(std::move(regex));
}

SplitRegex::~SplitRegex() { pcre2_code_free(as_code(code_)); }

void SplitRegex::split(std::string_view text, size_t base, std::vector<std::pair<size_t, size_t>>& out) const {
  pcre2_match_data* md = thread_match_data();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t start = 0;  // where the next search begins
  size_t emitted = 0;  // end of the last piece handed out
  while (start < text.size()) {
    // The input was validated once up front; re-checking UTF-8 on every call would make
    // splitting quadratic.
    const int rc = pcre2_match(as_code(code_), subject, text.size(), start, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc < 0) break;
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const size_t mb = ov[0];
    const size_t me = ov[1];
    if (me == mb) {  // an empty match splits nothing; step over one character
      start = mb + 1;
      while (start < text.size() && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) ++start;
      continue;
    }
    if (mb > emitted) out.emplace_back(base + emitted, base + mb);
    out.emplace_back(base + mb, base + me);
    emitted = me;
    start = me;
  }
  if (emitted < text.size()) out.emplace_back(base + emitted, base + text.size());
}

Result<PreTokenizer> PreTokenizer::create(const std::vector<NormalizerStep>& normalizer,
                                          const std::vector<PreTokenizerStep>& pre_tokenizer) {
  PreTokenizer p;
  p.normalizer_ = normalizer;
  for (const PreTokenizerStep& spec : pre_tokenizer) {
    Step step{spec, nullptr};
    if (spec.kind == PreTokenizerStep::Kind::kSplitRegex) {
      auto regex = SplitRegex::compile(spec.regex);
      if (!regex.is_ok()) return regex.status();
      step.regex = std::move(regex).value();
    } else if (spec.replacement.empty()) {
      return invalid_argument("Metaspace pre-tokenizer with an empty replacement");
    }
    p.steps_.push_back(std::move(step));
  }
  return p;
}

void PreTokenizer::run(std::string_view segment, bool at_text_start, std::string& normalized,
                       std::vector<std::pair<size_t, size_t>>& pieces) const {
  normalized.assign(segment);
  for (const NormalizerStep& step : normalizer_) {
    switch (step.kind) {
      case NormalizerStep::Kind::kNfc: nfc_in_place(normalized); break;
      case NormalizerStep::Kind::kPrepend:
        if (!normalized.empty()) normalized.insert(0, step.content);
        break;
      case NormalizerStep::Kind::kReplace: replace_all(normalized, step.pattern, step.content); break;
    }
  }
  pieces.clear();
  if (normalized.empty()) return;
  pieces.emplace_back(0, normalized.size());
  std::vector<std::pair<size_t, size_t>> next;
  for (const Step& step : steps_) {
    next.clear();
    if (step.spec.kind == PreTokenizerStep::Kind::kSplitRegex) {
      for (const auto& [b, e] : pieces) step.regex->split(std::string_view(normalized).substr(b, e - b), b, next);
    } else {
      // Metaspace rewrites the text, so it only makes sense as the first step: offsets of
      // earlier pieces would not survive the rewrite.
      const std::string& r = step.spec.replacement;
      replace_all(normalized, " ", r);
      const bool prepend = step.spec.prepend_scheme == PrependScheme::kAlways ||
                           (step.spec.prepend_scheme == PrependScheme::kFirst && at_text_start);
      if (prepend && normalized.compare(0, r.size(), r) != 0) normalized.insert(0, r);
      if (!step.spec.split) {
        next.emplace_back(0, normalized.size());
      } else {
        size_t begin = 0;
        for (size_t hit = normalized.find(r, 1); hit != std::string::npos; hit = normalized.find(r, hit + r.size())) {
          next.emplace_back(begin, hit);
          begin = hit;
        }
        next.emplace_back(begin, normalized.size());
      }
    }
    pieces.swap(next);
  }
}

}  // namespace tessera::tokenizer
