// A small HTTP/1.1 server for the operational endpoints every tier serves on its own port:
// `/metrics` (Prometheus text), `/health`, `/ready` (DESIGN.md: "/metrics is never behind
// the API key"). Not the gateway's API server: GET and HEAD of exact paths only, bodies
// refused, bounded connections, every read and write under a deadline, so a slow or hostile
// client can neither block a scrape nor grow memory.
//
// One thread of its own runs every connection; handlers run on it and must be thread-safe
// with respect to what they read (metrics are lock-free; health callbacks read atomics).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "tessera/common/status.h"

namespace tessera::http {

struct Response {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

// A plain-text response ("ok\n", "loading\n") for the health endpoints.
inline Response text_response(int status, std::string body) {
  return {status, "text/plain; charset=utf-8", std::move(body)};
}

using Handler = std::function<Response()>;

struct StatusServerOptions {
  std::string host = "0.0.0.0";
  uint16_t port = 0;  // 0: a free port (see StatusServer::port())
  std::chrono::milliseconds timeout{5000};  // to read a request, and to write a response
  int max_connections = 64;  // more are accepted and closed at once
  [[nodiscard]] Status validate() const;
};

class StatusServer {
 public:
  // Binds (UNAVAILABLE when the address is taken) and starts serving `routes`, exact
  // paths such as "/metrics". Unknown paths get 404, other methods 405.
  [[nodiscard]] static Result<std::unique_ptr<StatusServer>> start(const StatusServerOptions& options,
                                                                   std::map<std::string, Handler> routes);
  ~StatusServer();  // stop()
  StatusServer(const StatusServer&) = delete;
  StatusServer& operator=(const StatusServer&) = delete;

  uint16_t port() const;
  // Closes the listener and every connection, and joins the thread. Idempotent.
  void stop();

 private:
  struct Impl;
  explicit StatusServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera::http
