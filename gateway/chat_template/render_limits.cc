#include "gateway/chat_template/render_limits.h"

#include <algorithm>

#include "gateway/chat_template/template_error.h"

namespace tessera::chat_template {
namespace {

// One render runs start to finish on one thread, so the budget it charges is per thread.
thread_local RenderBudget* t_current_budget = nullptr;

}  // namespace

RenderBudget::RenderBudget() : previous_(t_current_budget) { t_current_budget = this; }
RenderBudget::~RenderBudget() { t_current_budget = previous_; }

RenderBudget* RenderBudget::current() { return t_current_budget; }

void RenderBudget::charge_steps(int64_t n) {
  num_steps_ += n;
  if (num_steps_ > kMaxRenderSteps) {
    throw_limit_error("render took more than " + std::to_string(kMaxRenderSteps) +
                      " evaluation steps (a runaway loop?)");
  }
}

void RenderBudget::charge_bytes(size_t n) {
  num_built_bytes_ += static_cast<int64_t>(std::min<size_t>(n, kMaxStringBytes));
  if (num_built_bytes_ > kMaxBuiltBytes) {
    throw_limit_error("render built more than " + std::to_string(kMaxBuiltBytes) + " bytes of strings");
  }
}

void check_string_size(size_t size) {
  if (size > kMaxStringBytes) {
    throw_limit_error("string of " + std::to_string(size) + " bytes exceeds the limit of " +
                      std::to_string(kMaxStringBytes));
  }
}

void check_list_size(size_t num_items) {
  if (num_items > kMaxListItems) {
    throw_limit_error("list of " + std::to_string(num_items) + " items exceeds the limit of " +
                      std::to_string(kMaxListItems));
  }
}

}  // namespace tessera::chat_template
