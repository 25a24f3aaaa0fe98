#include "worker/service/step_trace.h"

#include <cerrno>
#include <cinttypes>
#include <cstring>

namespace tessera::worker {

Result<std::unique_ptr<StepTrace>> StepTrace::open(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (!f) return invalid_argument("worker.step_trace_path: cannot open " + path + ": " + std::strerror(errno));
  return std::unique_ptr<StepTrace>(new StepTrace(f));
}

StepTrace::~StepTrace() { std::fclose(file_); }

std::string StepTrace::line(uint64_t step_id, const engine::StepInput& input, double start_s, double seconds,
                            bool ok) {
  uint64_t decode_rows = 0, tokens = 0, context = 0, sampled = 0;
  double attended = 0;  // can pass 2^53 only for contexts no model has
  for (const engine::ScheduledSlice& s : input.scheduled) {
    const uint64_t n = s.num_tokens, start = s.start_position;
    tokens += n;
    context += start + n;
    attended += static_cast<double>(n * start + n * (n + 1) / 2);
    sampled += s.sample;
    decode_rows += n == 1 && s.sample;
  }
  char buf[320];
  std::snprintf(buf, sizeof(buf),
                "{\"step\":%" PRIu64 ",\"t\":%.6f,\"seconds\":%.6f,\"ok\":%s,\"slices\":%zu,\"decode_rows\":%" PRIu64
                ",\"tokens\":%" PRIu64 ",\"context\":%" PRIu64 ",\"attended\":%.0f,\"sampled\":%" PRIu64 "}",
                step_id, start_s, seconds, ok ? "true" : "false", input.scheduled.size(), decode_rows, tokens, context,
                attended, sampled);
  return buf;
}

void StepTrace::record(uint64_t step_id, const engine::StepInput& input, Clock::time_point start,
                       Clock::time_point end, bool ok) {
  const auto secs = [](Clock::duration d) { return std::chrono::duration<double>(d).count(); };
  const std::string l = line(step_id, input, secs(start - opened_), secs(end - start), ok);
  std::fprintf(file_, "%s\n", l.c_str());
  std::fflush(file_);
}

}  // namespace tessera::worker
