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

// PCRE2's default interpreter heap limit is 20 GB; a split regex on hostile text must not
// get near that. It only binds without JIT (the interpreter keeps backtrack frames on the
// heap); the shipped patterns have no repeated groups and stay far below it, while user
// patterns with nested repeats fail with RESOURCE_EXHAUSTED instead of taking the host's
// memory.
constexpr uint32_t kHeapLimitKib = 64 * 1024;

// JIT code keeps one backtrack frame per iteration of a repeated group, e.g. about 24
// bytes per character for `(?:\p{L}|\p{N})+`, so its default 32 KiB stack (on the machine
// stack) overflows after ~1300 characters. A match that overflows it is retried once on a
// stack of up to this size, made for that split() call only (mmap'd, so only the pages a
// match touches cost memory), which covers pieces of ~650k such characters.
constexpr size_t kLargeJitStackBytes = size_t{16} << 20;

struct ThreadMatchState {
  ThreadMatchState()
      : data(pcre2_match_data_create(kNumOvectorPairs, nullptr)), context(pcre2_match_context_create(nullptr)) {
    pcre2_set_heap_limit(context, kHeapLimitKib);
  }
  ~ThreadMatchState() {
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
  ThreadMatchState(const ThreadMatchState&) = delete;
  ThreadMatchState& operator=(const ThreadMatchState&) = delete;
  pcre2_match_data* data;
  pcre2_match_context* context;  // the JIT's default stack; heap limit for the interpreter
};

ThreadMatchState& thread_match_state() {
  thread_local ThreadMatchState state;
  return state;
}

// A match context with a large JIT stack, for the rare match that needs one; freed with
// the split() call that made it, so no thread keeps megabytes after one hostile request.
class LargeStackContext {
 public:
  LargeStackContext() = default;
  ~LargeStackContext() {
    if (context_ != nullptr) pcre2_match_context_free(context_);
    if (stack_ != nullptr) pcre2_jit_stack_free(stack_);
  }
  LargeStackContext(const LargeStackContext&) = delete;
  LargeStackContext& operator=(const LargeStackContext&) = delete;

  // nullptr when the stack cannot be had (then the JIT's error stands).
  pcre2_match_context* get() {
    if (made_) return context_;
    made_ = true;
    stack_ = pcre2_jit_stack_create(32 * 1024, kLargeJitStackBytes, nullptr);
    if (stack_ == nullptr) return nullptr;
    context_ = pcre2_match_context_create(nullptr);
    if (context_ == nullptr) return nullptr;
    pcre2_set_heap_limit(context_, kHeapLimitKib);
    pcre2_jit_stack_assign(context_, nullptr, stack_);
    return context_;
  }

 private:
  bool made_ = false;
  pcre2_jit_stack* stack_ = nullptr;
  pcre2_match_context* context_ = nullptr;
};

std::string pcre2_message(int error_code) {
  PCRE2_UCHAR message[256];
  if (pcre2_get_error_message(error_code, message, sizeof(message)) < 0) return "error " + std::to_string(error_code);
  return reinterpret_cast<const char*>(message);
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

// Fails only when utf8proc does (out of memory): the text must not go on un-normalized.
Status nfc_in_place(std::string& s) {
  if (is_ascii(s)) return Status::ok();  // ASCII is always NFC
  utf8proc_uint8_t* result = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()), static_cast<utf8proc_ssize_t>(s.size()),
                   &result, static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0 || result == nullptr) {
    std::free(result);
    return resource_exhausted("NFC normalization of " + std::to_string(s.size()) + " bytes failed: " +
                              utf8proc_errmsg(n < 0 ? n : UTF8PROC_ERROR_NOMEM));
  }
  s.assign(reinterpret_cast<const char*>(result), static_cast<size_t>(n));
  std::free(result);
  return Status::ok();
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
  regex->pattern_ = pattern;
  return std::shared_ptr<const SplitRegex>(std::move(regex));
}

SplitRegex::~SplitRegex() { pcre2_code_free(as_code(code_)); }

Status SplitRegex::split(std::string_view text, size_t base, std::vector<std::pair<size_t, size_t>>& out) const {
  ThreadMatchState& state = thread_match_state();
  LargeStackContext large_stack;
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const size_t first_piece = out.size();
  size_t start = 0;  // where the next search begins
  size_t emitted = 0;  // end of the last piece handed out
  while (start < text.size()) {
    // The input was validated once up front; re-checking UTF-8 on every call would make
    // splitting quadratic.
    int rc = pcre2_match(as_code(code_), subject, text.size(), start, PCRE2_NO_UTF_CHECK, state.data, state.context);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
      if (pcre2_match_context* context = large_stack.get(); context != nullptr) {
        rc = pcre2_match(as_code(code_), subject, text.size(), start, PCRE2_NO_UTF_CHECK, state.data, context);
      }
    }
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      // Every other error (match, heap or JIT stack limit) means PCRE2 gave up, not that
      // nothing matches: treating it as the end would silently merge the rest into one piece.
      out.resize(first_piece);
      return resource_exhausted("pre-tokenizer regex gave up searching from byte " + std::to_string(base + start) + " of a " +
                                std::to_string(text.size()) + "-byte piece (" + pcre2_message(rc) +
                                "); the input is too long or repetitive for the pattern '" + pattern_ + "'");
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(state.data);
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
  return Status::ok();
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

Status PreTokenizer::run(std::string_view segment, bool at_text_start, std::string& normalized,
                         std::vector<std::pair<size_t, size_t>>& pieces) const {
  normalized.assign(segment);
  for (const NormalizerStep& step : normalizer_) {
    switch (step.kind) {
      case NormalizerStep::Kind::kNfc: TESSERA_RETURN_IF_ERROR(nfc_in_place(normalized)); break;
      case NormalizerStep::Kind::kPrepend:
        if (!normalized.empty()) normalized.insert(0, step.content);
        break;
      case NormalizerStep::Kind::kReplace: replace_all(normalized, step.pattern, step.content); break;
    }
  }
  pieces.clear();
  if (normalized.empty()) return Status::ok();
  pieces.emplace_back(0, normalized.size());
  std::vector<std::pair<size_t, size_t>> next;
  for (const Step& step : steps_) {
    next.clear();
    if (step.spec.kind == PreTokenizerStep::Kind::kSplitRegex) {
      for (const auto& [b, e] : pieces) {
        TESSERA_RETURN_IF_ERROR(step.regex->split(std::string_view(normalized).substr(b, e - b), b, next));
      }
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
  return Status::ok();
}

}  // namespace tessera::tokenizer
