// What one template may cost. Templates come from model files (a downloaded GGUF may be
// hostile) and their inputs from API clients, so every way to recurse, loop or grow ends in
// a clear error instead of a stack overflow, an endless render or exhausted memory.
// transformers' sandboxed Jinja bounds only range() (100000 items); these bounds sit far above
// anything a real chat template needs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace tessera::chat_template {

// Parser: nested parentheses, blocks and operators chained into one expression. The syntax
// tree is built, walked and freed recursively, so its depth is what bounds the stack: at
// these limits a load or render needs under 512 KB of it (several times more under
// sanitizers). Jinja itself gives up near 100 nested parentheses or blocks.
inline constexpr int kMaxNestingDepth = 128;
// Evaluator: expression and statement recursion, macro calls included.
inline constexpr int kMaxRenderDepth = 512;
// Lists and dicts nested in one another, from JSON input or built by a template (Python's
// json.dumps gives up near 1000).
inline constexpr int kMaxValueDepth = 512;
// Any one string a render builds, the prompt included.
inline constexpr size_t kMaxStringBytes = size_t{128} << 20;
// range(): transformers renders in Jinja's sandbox, whose MAX_RANGE this is.
inline constexpr int64_t kMaxRangeItems = 100'000;
// Any one list a render builds.
inline constexpr size_t kMaxListItems = size_t{1} << 20;
// One per expression node and statement, more per loop iteration and macro call, plus one per
// item (or 64 bytes) that an operation scans. 100k messages through llama31 take 4M; a hostile
// render stops after a few seconds of CPU.
inline constexpr int64_t kMaxRenderSteps = 100'000'000;
// Bytes of strings built over a whole render, so quadratic growth (s = s ~ x in a loop) ends.
inline constexpr int64_t kMaxBuiltBytes = int64_t{2} << 30;

// The work one render has done. One per render, owned by the rendering thread; builtins reach
// it through current() so deep helpers (`in`, join, sort) can charge what they scan.
class RenderBudget {
 public:
  RenderBudget();
  ~RenderBudget();
  RenderBudget(const RenderBudget&) = delete;
  RenderBudget& operator=(const RenderBudget&) = delete;

  // The budget of the render running on this thread; null outside a render.
  static RenderBudget* current();

  void charge_steps(int64_t n);
  void charge_bytes(size_t n);

 private:
  RenderBudget* previous_;
  int64_t num_steps_ = 0;
  int64_t num_built_bytes_ = 0;
};

// Charge the current render, if any (Value operations also run outside renders, in tests).
inline void charge_steps(int64_t n) {
  if (RenderBudget* b = RenderBudget::current()) b->charge_steps(n);
}
inline void charge_bytes(size_t n) {
  if (RenderBudget* b = RenderBudget::current()) b->charge_bytes(n);
}

// Throws the limit error when a string of `size` bytes would be too large; call before
// allocating it.
void check_string_size(size_t size);
void check_list_size(size_t num_items);
// out += piece, refusing to grow out past kMaxStringBytes.
inline void append_checked(std::string& out, std::string_view piece) {
  check_string_size(out.size() + piece.size());
  out += piece;
}

}  // namespace tessera::chat_template
