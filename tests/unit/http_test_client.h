// A blocking HTTP/1.1 client on one loopback connection, for the tests of the HTTP servers
// (common's status server, the gateway's API server).
#pragma once

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cstdint>
#include <string>

namespace tessera::testing {

struct HttpTestClient {
  using Response = boost::beast::http::response<boost::beast::http::string_body>;

  boost::asio::io_context io;
  boost::beast::tcp_stream stream{io};
  boost::beast::flat_buffer buffer;

  explicit HttpTestClient(uint16_t port) {
    stream.connect(boost::asio::ip::tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), port));
    stream.expires_after(std::chrono::seconds(10));
  }
  void send(boost::beast::http::verb verb, const std::string& target, std::string body = "", unsigned version = 11) {
    boost::beast::http::request<boost::beast::http::string_body> req{verb, target, version};
    req.set(boost::beast::http::field::host, "localhost");
    req.keep_alive(true);
    req.body() = std::move(body);
    req.prepare_payload();
    boost::beast::http::write(stream, req);
  }
  Response read(bool head = false) {
    boost::beast::http::response_parser<boost::beast::http::string_body> parser;
    parser.body_limit(64 << 20);
    parser.skip(head);
    boost::beast::http::read(stream, buffer, parser);
    return parser.release();
  }
  Response request(boost::beast::http::verb verb, const std::string& target) {
    send(verb, target);
    return read(verb == boost::beast::http::verb::head);
  }
  // True when the server closed the connection (a read gets EOF or a reset).
  bool closed_by_server() {
    boost::beast::error_code ec;
    char byte;
    stream.expires_after(std::chrono::seconds(5));
    stream.read_some(boost::asio::buffer(&byte, 1), ec);
    return ec == boost::asio::error::eof || ec == boost::asio::error::connection_reset;
  }
};

}  // namespace tessera::testing
