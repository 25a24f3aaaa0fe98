#include "launcher/http_get.h"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace tessera::launcher {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;

Result<HttpReply> http_get(const std::string& host, uint16_t port, const std::string& target,
                           std::chrono::milliseconds timeout) {
  // Asynchronous operations run to completion here, because only they honour the
  // stream's deadline (a blocking read would wait forever on a server that hangs).
  asio::io_context io;
  beast::tcp_stream stream(io);
  beast::flat_buffer buffer;
  bhttp::request<bhttp::empty_body> request{bhttp::verb::get, target, 11};
  request.set(bhttp::field::host, host + ":" + std::to_string(port));
  request.set(bhttp::field::connection, "close");
  bhttp::response_parser<bhttp::string_body> parser;
  parser.body_limit(1 << 20);
  beast::error_code result;
  boost::system::error_code address_error;
  const auto address = asio::ip::make_address(host, address_error);
  if (address_error) return invalid_argument("http_get: '" + host + "' is not an IP address");

  stream.expires_after(timeout);
  stream.async_connect(tcp::endpoint(address, port), [&](beast::error_code ec) {
    if (ec) {
      result = ec;
      return;
    }
    bhttp::async_write(stream, request, [&](beast::error_code wec, size_t) {
      if (wec) {
        result = wec;
        return;
      }
      bhttp::async_read(stream, buffer, parser, [&](beast::error_code rec, size_t) { result = rec; });
    });
  });
  io.run();
  const std::string where = host + ":" + std::to_string(port) + target;
  if (result == beast::error::timeout) return deadline_exceeded("GET " + where + ": no reply in time");
  if (result) return unavailable("GET " + where + ": " + result.message());
  return HttpReply{static_cast<int>(parser.get().result_int()), std::move(parser.get().body())};
}

}  // namespace tessera::launcher
