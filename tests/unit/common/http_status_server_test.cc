// common/http_status_server: the operational endpoints answer GET/HEAD on exact paths,
// refuse everything else with the right status, keep connections alive, and a client that
// sends nothing is dropped after the timeout without blocking anyone else.
#include "tessera/common/http_status_server.h"

#include <catch2/catch.hpp>

#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "http_test_client.h"

using namespace tessera;
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;

namespace {

using Client = tessera::testing::HttpTestClient;

}  // namespace

TEST_CASE("status server routes GET and HEAD, refuses the rest, keeps connections alive", "[http]") {
  std::atomic<bool> ready{false};
  auto server = http::StatusServer::start(
      {"127.0.0.1", 0, std::chrono::milliseconds(2000), 8},
      {{"/metrics", [] { return http::Response{200, "text/plain; version=0.0.4", "tessera_up 1\n"}; }},
       {"/ready", [&] { return ready ? http::Response{200, "text/plain", "ready\n"} : http::Response{503, "text/plain", "loading\n"}; }}});
  REQUIRE(server.is_ok());
  REQUIRE((*server)->port() != 0);
  Client c((*server)->port());
  auto r = c.request(bhttp::verb::get, "/metrics");
  REQUIRE(r.result_int() == 200);
  REQUIRE(r.body() == "tessera_up 1\n");
  REQUIRE(r[bhttp::field::content_type] == "text/plain; version=0.0.4");
  // Same connection: the state behind a handler is read at each request.
  REQUIRE(c.request(bhttp::verb::get, "/ready").result_int() == 503);
  ready = true;
  REQUIRE(c.request(bhttp::verb::get, "/ready?verbose=1").result_int() == 200);
  auto head = c.request(bhttp::verb::head, "/metrics");
  REQUIRE(head.result_int() == 200);
  REQUIRE(head.body().empty());
  REQUIRE(c.request(bhttp::verb::get, "/nope").result_int() == 404);
  REQUIRE(c.request(bhttp::verb::post, "/metrics").result_int() == 405);
}

TEST_CASE("a silent client is dropped after the timeout and blocks no one", "[http]") {
  auto server = http::StatusServer::start({"127.0.0.1", 0, std::chrono::milliseconds(300), 8},
                                          {{"/health", [] { return http::Response{200, "text/plain", "ok\n"}; }}});
  REQUIRE(server.is_ok());
  asio::io_context io;
  tcp::socket silent(io);
  silent.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), (*server)->port()));
  // Another client is served meanwhile.
  Client c((*server)->port());
  REQUIRE(c.request(bhttp::verb::get, "/health").result_int() == 200);
  // The silent one is closed by the server: reading sees end of stream.
  char byte;
  beast::error_code ec;
  silent.read_some(asio::buffer(&byte, 1), ec);
  REQUIRE(ec);
}

TEST_CASE("a taken port is a clear error, and stop() is idempotent", "[http]") {
  auto first = http::StatusServer::start({"127.0.0.1", 0, std::chrono::milliseconds(1000), 4}, {});
  REQUIRE(first.is_ok());
  auto second = http::StatusServer::start({"127.0.0.1", (*first)->port(), std::chrono::milliseconds(1000), 4}, {});
  REQUIRE(second.status().code() == StatusCode::kUnavailable);
  (*first)->stop();
  (*first)->stop();
}
