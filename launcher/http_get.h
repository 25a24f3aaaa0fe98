// A blocking HTTP/1.1 GET with a deadline, for `tessera serve`'s readiness probes of its
// own children on 127.0.0.1. Not a general client: no TLS, no redirects, bodies up to 1 MiB.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "tessera/common/status.h"

namespace tessera::launcher {

struct HttpReply {
  int status = 0;
  std::string body;
};

// UNAVAILABLE when nothing answers (refused, reset, malformed reply), DEADLINE_EXCEEDED
// when it takes longer than `timeout` in all.
[[nodiscard]] Result<HttpReply> http_get(const std::string& host, uint16_t port, const std::string& target,
                                         std::chrono::milliseconds timeout);

}  // namespace tessera::launcher
