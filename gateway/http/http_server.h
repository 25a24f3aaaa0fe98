// The gateway's HTTP/1.1 server (Boost.Beast): keep-alive connections, many of them on a
// few threads, bounded requests (header and body limits answered with 431/413), deadlines on
// every read and write, responses whole or streamed (chunked transfer encoding, for SSE).
//
// One exchange per request. The handler gets it on the connection's strand and must not
// block there; it answers later from any thread. A client that goes away while its
// exchange is open (its socket reads EOF or fails, or a write times out) is reported once
// through on_client_gone(), so the handler can abort the work upstream.
//
// Threads: `num_threads` threads run the io_context; each connection is a strand, so the
// handler, writes and the disconnect watch of one connection never run concurrently.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tessera/common/status.h"

namespace tessera::gateway::http {

struct Request {
  std::string method;  // "GET", "POST", ...
  std::string path;    // the target without its query
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased
  // The first header of that (lower-case) name, or "".
  std::string_view header(std::string_view lower_name) const;
};

using Headers = std::vector<std::pair<std::string, std::string>>;

struct Response {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  Headers headers;  // extra headers (Retry-After, ...)
};

class Connection;

// One request and its answer: either respond() once, or start_stream(), write()s and
// end_stream(). Every method may be called from any thread; calls after the client went
// away are dropped.
class Exchange {
 public:
  Exchange(std::shared_ptr<Connection> connection, Request request);
  const Request& request() const { return request_; }

  void respond(Response response);
  void start_stream(int status, std::string content_type, Headers headers = {});
  // One chunk of the stream. `written(ok)` runs on the connection's strand once the bytes
  // reached the socket (ok) or can never get there (false); callers use it to pace reads.
  void write(std::string data, std::function<void(bool ok)> written = {});
  void end_stream();

  // Runs `f` once (on the strand) if the client disconnects before the exchange ends; at
  // once if it is already gone. Set it before starting upstream work.
  void on_client_gone(std::function<void()> f);

 private:
  std::shared_ptr<Connection> connection_;
  Request request_;
};

using Handler = std::function<void(std::shared_ptr<Exchange>)>;

struct ServerOptions {
  std::string host = "0.0.0.0";
  uint16_t port = 0;  // 0: a free port (see HttpServer::port())
  int num_threads = 2;
  uint64_t max_body_bytes = 8ull << 20;  // larger: 413
  uint32_t max_header_bytes = 16 * 1024;  // larger: 431
  std::chrono::milliseconds read_timeout{30000};  // to receive one whole request
  std::chrono::milliseconds idle_timeout{60000};  // keep-alive connection with no request
  std::chrono::milliseconds write_timeout{60000};  // one write stuck on a client that reads nothing
  int max_connections = 10000;  // beyond: accepted and closed at once
  [[nodiscard]] Status validate() const;
};

class HttpServer {
 public:
  // Binds (UNAVAILABLE when the address is taken) and serves every request with `handler`.
  [[nodiscard]] static Result<std::unique_ptr<HttpServer>> start(const ServerOptions& options, Handler handler);
  ~HttpServer();  // stop()
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  uint16_t port() const;
  int num_connections() const;
  // Stops accepting and waits until every answer begun has been written out (a drain's
  // last step, before stop()); false at the timeout.
  bool wait_quiet(std::chrono::milliseconds timeout);
  // Closes the listener and every connection and joins the threads. Idempotent.
  void stop();

 private:
  struct Impl;
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera::gateway::http
