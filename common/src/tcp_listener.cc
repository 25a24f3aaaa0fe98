#include "tessera/common/tcp_listener.h"

#include <boost/asio.hpp>

namespace tessera::net {

Status listen(boost::asio::ip::tcp::acceptor& acceptor, const std::string& host, uint16_t port, std::string_view who) {
  namespace asio = boost::asio;
  boost::system::error_code ec;
  const auto address = asio::ip::make_address(host, ec);
  if (ec) return invalid_argument(std::string(who) + ": bad host '" + host + "': " + ec.message());
  const asio::ip::tcp::endpoint endpoint(address, port);
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return unavailable(std::string(who) + ": cannot listen on " + host + ":" + std::to_string(port) + ": " + ec.message());
  return Status::ok();
}

}  // namespace tessera::net
