// Opening a listening TCP socket for the HTTP servers (the tiers' status servers and the
// gateway): address parsed, SO_REUSEADDR so a restarted process gets its port back at once.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <cstdint>
#include <string>
#include <string_view>

#include "tessera/common/status.h"

namespace tessera::net {

// Opens, binds and listens. INVALID_ARGUMENT for a host that is not an IP address,
// UNAVAILABLE when the port cannot be had; `who` starts the message.
[[nodiscard]] Status listen(boost::asio::ip::tcp::acceptor& acceptor, const std::string& host, uint16_t port,
                            std::string_view who);

}  // namespace tessera::net
