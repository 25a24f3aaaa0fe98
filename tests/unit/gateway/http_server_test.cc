// gateway/http/http_server: keep-alive, the body and header limits (413, 431), streamed
// chunked responses paced by their write callbacks, HTTP/1.0 streams, a client that hangs
// up mid-exchange reported once, slow clients dropped after the read timeout, and the
// connection cap.
#include "gateway/http/http_server.h"

#include <catch2/catch.hpp>

#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <condition_variable>
#include <future>
#include <mutex>
#include <thread>

#include "http_test_client.h"

using namespace tessera::gateway;
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;

namespace {

using Client = tessera::testing::HttpTestClient;

std::unique_ptr<http::HttpServer> start(http::Handler handler, http::ServerOptions options = {}) {
  options.host = "127.0.0.1";
  options.port = 0;
  auto server = http::HttpServer::start(options, std::move(handler));
  REQUIRE(server.is_ok());
  return std::move(*server);
}

// Echoes the method, path and body length; answers at once.
void echo(std::shared_ptr<http::Exchange> ex) {
  const auto& r = ex->request();
  ex->respond({200, "text/plain", r.method + " " + r.path + " " + std::to_string(r.body.size()), {{"X-Test", "1"}}});
}

}  // namespace

TEST_CASE("a keep-alive connection serves several requests in turn", "[gateway][http]") {
  auto server = start(echo);
  Client c(server->port());
  c.send(bhttp::verb::post, "/v1/x?query=1", "hello");
  auto r1 = c.read();
  CHECK(r1.result_int() == 200);
  CHECK(r1.body() == "POST /v1/x 5");
  CHECK(r1[bhttp::field::content_type] == "text/plain");
  CHECK(r1["X-Test"] == "1");
  CHECK(r1.keep_alive());
  c.send(bhttp::verb::get, "/health");
  CHECK(c.read().body() == "GET /health 0");
}

TEST_CASE("a body over the limit gets 413 in OpenAI's error shape and the connection closes", "[gateway][http]") {
  http::ServerOptions o;
  o.max_body_bytes = 1024;
  auto server = start(echo, o);
  Client c(server->port());
  c.send(bhttp::verb::post, "/v1/completions", std::string(4096, 'x'));
  auto r = c.read();
  CHECK(r.result_int() == 413);
  CHECK(r.body().find("\"error\"") != std::string::npos);
  CHECK(r.body().find("1024") != std::string::npos);
  CHECK(c.closed_by_server());
}

TEST_CASE("headers over the limit get 431", "[gateway][http]") {
  http::ServerOptions o;
  o.max_header_bytes = 2048;
  auto server = start(echo, o);
  Client c(server->port());
  bhttp::request<bhttp::string_body> req{bhttp::verb::get, "/", 11};
  req.set("X-Big", std::string(8192, 'a'));
  bhttp::write(c.stream, req);
  CHECK(c.read().result_int() == 431);
}

TEST_CASE("a malformed request gets 400 and the connection closes", "[gateway][http]") {
  auto server = start(echo);
  Client c(server->port());
  const std::string garbage = "NOT HTTP AT ALL\r\n\r\n";
  asio::write(c.stream, asio::buffer(garbage));
  CHECK(c.read().result_int() == 400);
  CHECK(c.closed_by_server());
}

TEST_CASE("a streamed response arrives as chunks in order with each write confirmed", "[gateway][http]") {
  std::atomic<int> confirmed{0};
  auto server = start([&](std::shared_ptr<http::Exchange> ex) {
    // From another thread, as a generation job would.
    std::thread([ex, &confirmed] {
      ex->start_stream(200, "text/event-stream");
      for (int i = 0; i < 5; ++i) {
        ex->write("data: " + std::to_string(i) + "\n\n", [&confirmed](bool ok) {
          if (ok) ++confirmed;
        });
      }
      ex->end_stream();
    }).detach();
  });
  Client c(server->port());
  c.send(bhttp::verb::post, "/stream", "{}");
  auto r = c.read();
  CHECK(r.result_int() == 200);
  CHECK(r[bhttp::field::transfer_encoding] == "chunked");
  CHECK(r.body() == "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\n");
  CHECK(confirmed.load() == 5);
  // The connection stays usable after a stream.
  c.send(bhttp::verb::post, "/stream", "{}");
  CHECK(c.read().body().size() == r.body().size());
}

TEST_CASE("an HTTP/1.0 stream is sent unframed and ends with the connection", "[gateway][http]") {
  auto server = start([](std::shared_ptr<http::Exchange> ex) {
    ex->start_stream(200, "text/event-stream");
    ex->write("data: a\n\n");
    ex->end_stream();
  });
  Client c(server->port());
  c.send(bhttp::verb::post, "/s", "{}", 10);
  auto r = c.read();
  CHECK(r.body() == "data: a\n\n");
  CHECK(r[bhttp::field::transfer_encoding] == "");
}

TEST_CASE("a client that hangs up mid-exchange is reported once and later writes are refused", "[gateway][http]") {
  std::promise<void> gone;
  std::shared_ptr<http::Exchange> held;
  std::mutex m;
  std::promise<void> got_request;
  auto server = start([&](std::shared_ptr<http::Exchange> ex) {
    {
      std::lock_guard lock(m);
      held = ex;
    }
    ex->on_client_gone([&gone] { gone.set_value(); });
    ex->start_stream(200, "text/event-stream");
    ex->write("data: first\n\n");
    got_request.set_value();
  });
  {
    Client c(server->port());
    c.send(bhttp::verb::post, "/s", "{}");
    REQUIRE(got_request.get_future().wait_for(std::chrono::seconds(5)) == std::future_status::ready);
  }  // the client closes its socket
  REQUIRE(gone.get_future().wait_for(std::chrono::seconds(5)) == std::future_status::ready);
  std::promise<bool> written;
  {
    std::lock_guard lock(m);
    held->write("data: late\n\n", [&written](bool ok) { written.set_value(ok); });
  }
  auto f = written.get_future();
  REQUIRE(f.wait_for(std::chrono::seconds(5)) == std::future_status::ready);
  CHECK_FALSE(f.get());
}

TEST_CASE("a client that never finishes its request is dropped after the read timeout", "[gateway][http]") {
  http::ServerOptions o;
  o.read_timeout = std::chrono::milliseconds(300);
  auto server = start(echo, o);
  Client slow(server->port());
  const std::string partial = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{";
  asio::write(slow.stream, asio::buffer(partial));
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(slow.closed_by_server());
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3));
  // Others are served meanwhile and after.
  Client other(server->port());
  other.send(bhttp::verb::get, "/x");
  CHECK(other.read().result_int() == 200);
}

TEST_CASE("connections beyond the cap are closed at once", "[gateway][http]") {
  http::ServerOptions o;
  o.max_connections = 2;
  auto server = start(echo, o);
  Client a(server->port());
  Client b(server->port());
  a.send(bhttp::verb::get, "/a");
  CHECK(a.read().result_int() == 200);
  b.send(bhttp::verb::get, "/b");
  CHECK(b.read().result_int() == 200);
  Client c(server->port());
  CHECK(c.closed_by_server());
  CHECK(server->num_connections() == 2);
}

TEST_CASE("a handler that throws gets a 500 in OpenAI's error shape", "[gateway][http]") {
  auto server = start([](std::shared_ptr<http::Exchange>) { throw std::runtime_error("boom"); });
  Client c(server->port());
  c.send(bhttp::verb::get, "/x");
  auto r = c.read();
  CHECK(r.result_int() == 500);
  CHECK(r.body().find("boom") != std::string::npos);
}

TEST_CASE("a client that expects 100-continue gets the go-ahead before it sends its body", "[gateway][http]") {
  auto server = start(echo);
  Client c(server->port());
  const std::string head =
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n";
  asio::write(c.stream, asio::buffer(head));
  bhttp::response_parser<bhttp::empty_body> interim;
  bhttp::read_header(c.stream, c.buffer, interim);
  CHECK(interim.get().result_int() == 100);
  asio::write(c.stream, asio::buffer(std::string("hello")));
  auto r = c.read();
  CHECK(r.result_int() == 200);
  CHECK(r.body() == "POST /v1/completions 5");
}
