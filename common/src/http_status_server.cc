#include "tessera/common/http_status_server.h"
#include "tessera/common/tcp_listener.h"

#include <atomic>
#include <optional>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <thread>

namespace tessera::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;

namespace {

constexpr size_t kMaxHeaderBytes = 8 * 1024;

using Routes = std::map<std::string, Handler>;

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, const Routes& routes, std::chrono::milliseconds timeout, std::atomic<int>& active)
      : stream_(std::move(socket)), routes_(routes), timeout_(timeout), active_(active) {
    ++active_;
  }
  ~Session() { --active_; }

  void read() {
    parser_.emplace();
    parser_->header_limit(kMaxHeaderBytes);
    parser_->body_limit(0);  // these endpoints take no body
    stream_.expires_after(timeout_);
    bhttp::async_read(stream_, buffer_, *parser_,
                      [self = shared_from_this()](beast::error_code ec, size_t) { self->on_read(ec); });
  }

 private:
  void on_read(beast::error_code ec) {
    if (ec) return close();  // timeout, disconnect, malformed or oversized request
    const auto& req = parser_->get();
    Response r;
    const std::string path(req.target().substr(0, req.target().find('?')));
    if (req.method() != bhttp::verb::get && req.method() != bhttp::verb::head) {
      r = {405, "text/plain; charset=utf-8", "method not allowed\n"};
    } else if (auto it = routes_.find(path); it == routes_.end()) {
      r = {404, "text/plain; charset=utf-8", "not found\n"};
    } else {
      try {
        r = it->second();
      } catch (const std::exception& e) {
        r = {500, "text/plain; charset=utf-8", std::string("handler failed: ") + e.what() + "\n"};
      }
    }
    response_.emplace();
    response_->version(req.version());
    response_->result(static_cast<unsigned>(r.status));
    response_->set(bhttp::field::content_type, r.content_type);
    response_->set(bhttp::field::cache_control, "no-store");
    response_->keep_alive(req.keep_alive());
    if (req.method() == bhttp::verb::head) {
      response_->content_length(r.body.size());
    } else {
      response_->body() = std::move(r.body);
      response_->prepare_payload();
    }
    stream_.expires_after(timeout_);
    bhttp::async_write(stream_, *response_, [self = shared_from_this()](beast::error_code wec, size_t) {
      if (wec || !self->response_->keep_alive()) return self->close();
      self->read();
    });
  }

  void close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_{kMaxHeaderBytes};
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  std::optional<bhttp::response<bhttp::string_body>> response_;
  const Routes& routes_;
  std::chrono::milliseconds timeout_;
  std::atomic<int>& active_;
};

}  // namespace

struct StatusServer::Impl {
  // Declaration order is destruction order reversed: sessions die with `io` and still use
  // `routes` and `active`, so those are declared before it.
  StatusServerOptions options;
  Routes routes;
  std::atomic<int> active{0};
  asio::io_context io{1};
  tcp::acceptor acceptor{io};
  std::thread thread;
  uint16_t port = 0;

  void accept() {
    acceptor.async_accept([this](beast::error_code ec, tcp::socket socket) {
      if (ec == asio::error::operation_aborted) return;  // stopping
      if (!ec) {
        if (active.load() >= options.max_connections) {
          beast::error_code ignored;
          socket.close(ignored);
        } else {
          std::make_shared<Session>(std::move(socket), routes, options.timeout, active)->read();
        }
      }
      accept();
    });
  }
};

Status StatusServerOptions::validate() const {
  if (timeout.count() <= 0) return invalid_argument("http status server: timeout must be positive");
  if (max_connections < 1) return invalid_argument("http status server: max_connections must be at least 1");
  return Status::ok();
}

StatusServer::StatusServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

StatusServer::~StatusServer() { stop(); }

uint16_t StatusServer::port() const { return impl_->port; }

Result<std::unique_ptr<StatusServer>> StatusServer::start(const StatusServerOptions& options,
                                                          std::map<std::string, Handler> routes) {
  TESSERA_RETURN_IF_ERROR(options.validate());
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->routes = std::move(routes);
  TESSERA_RETURN_IF_ERROR(net::listen(impl->acceptor, options.host, options.port, "http status server"));
  impl->port = impl->acceptor.local_endpoint().port();
  impl->accept();
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->io.run(); });
  return std::unique_ptr<StatusServer>(new StatusServer(std::move(impl)));
}

void StatusServer::stop() {
  if (!impl_ || !impl_->thread.joinable()) return;
  asio::post(impl_->io, [impl = impl_.get()] {
    beast::error_code ignored;
    impl->acceptor.close(ignored);
    impl->io.stop();  // sessions' pending operations are dropped with the context
  });
  impl_->thread.join();
}

}  // namespace tessera::http
