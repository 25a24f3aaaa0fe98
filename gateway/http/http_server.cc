#include "gateway/http/http_server.h"

#include "gateway/openai/request.h"  // ApiError: what the server answers by itself is in OpenAI's shape too
#include "tessera/common/tcp_listener.h"

#include <algorithm>
#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cctype>
#include <cerrno>
#include <sys/socket.h>
#include <deque>
#include <optional>
#include <thread>

namespace tessera::gateway::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;

std::string_view Request::header(std::string_view lower_name) const {
  for (const auto& [name, value] : headers) {
    if (name == lower_name) return value;
  }
  return {};
}

Status ServerOptions::validate() const {
  if (num_threads < 1) return invalid_argument("http server: num_threads must be at least 1");
  if (max_connections < 1) return invalid_argument("http server: max_connections must be at least 1");
  if (max_header_bytes < 1024) return invalid_argument("http server: max_header_bytes must be at least 1024");
  return Status::ok();
}

namespace {

std::string status_line(int status) {
  const auto reason = bhttp::obsolete_reason(bhttp::int_to_status(static_cast<unsigned>(status)));
  return "HTTP/1.1 " + std::to_string(status) + " " + std::string(reason) + "\r\n";
}

}  // namespace

// One client connection. Everything below runs on the connection's strand.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(tcp::socket socket, const ServerOptions& options, const Handler& handler, std::atomic<int>& active,
             std::atomic<int>& open_exchanges)
      : stream_(std::move(socket)), options_(options), handler_(handler), active_(active), open_exchanges_(open_exchanges) {
    ++active_;
  }
  ~Connection() {
    set_open(false);
    --active_;
  }

  template <typename F>
  void post(F f) {
    asio::post(stream_.get_executor(), std::move(f));
  }

  void read_request() {
    parser_.emplace();
    parser_->header_limit(options_.max_header_bytes);
    parser_->body_limit(options_.max_body_bytes);
    stream_.expires_after(num_requests_ == 0 ? options_.read_timeout : options_.idle_timeout);
    bhttp::async_read_header(stream_, buffer_, *parser_,
                             [self = shared_from_this()](beast::error_code ec, size_t) { self->on_header(ec); });
  }

  void respond(Response r) {
    if (gone_ || ended_ || head_sent_) return;
    ended_ = true;
    head_sent_ = true;
    std::string out = status_line(r.status);
    out += "Content-Type: " + r.content_type + "\r\n";
    out += "Content-Length: " + std::to_string(r.body.size()) + "\r\n";
    append_common_headers(out, r.headers);
    out += "\r\n";
    if (method_ != bhttp::verb::head) out += r.body;
    enqueue(std::move(out), {});
  }

  void start_stream(int status, const std::string& content_type, const Headers& headers) {
    if (gone_ || ended_ || head_sent_) return;
    head_sent_ = true;
    chunked_ = version_ >= 11;
    if (!chunked_) keep_alive_ = false;  // HTTP/1.0: the stream ends when the connection does
    std::string out = status_line(status);
    out += "Content-Type: " + content_type + "\r\n";
    out += "Cache-Control: no-cache\r\n";
    if (chunked_) out += "Transfer-Encoding: chunked\r\n";
    append_common_headers(out, headers);
    out += "\r\n";
    enqueue(std::move(out), {});
  }

  void write(std::string data, std::function<void(bool)> written) {
    if (gone_ || ended_ || !head_sent_) {
      if (written) written(false);
      return;
    }
    if (data.empty()) {
      if (written) written(true);
      return;
    }
    if (chunked_) {
      char size[32];
      std::snprintf(size, sizeof size, "%zx\r\n", data.size());
      data = size + data + "\r\n";
    }
    enqueue(std::move(data), std::move(written));
  }

  void end_stream() {
    if (gone_ || ended_ || !head_sent_) return;
    ended_ = true;
    enqueue(chunked_ ? "0\r\n\r\n" : "", {});
  }

  void on_client_gone(std::function<void()> f) {
    if (gone_) {
      f();
      return;
    }
    if (in_exchange_) gone_callback_ = std::move(f);
  }

 private:
  // The header is in. A client that asked `Expect: 100-continue` (curl does for bodies over
  // 1 KiB) waits for a go-ahead before it sends the body; the body gets the read timeout.
  void on_header(beast::error_code ec) {
    if (ec) return on_read(ec);
    stream_.expires_after(options_.read_timeout);
    auto read_body = [self = shared_from_this()] {
      bhttp::async_read(self->stream_, self->buffer_, *self->parser_,
                        [self](beast::error_code e, size_t) { self->on_read(e); });
    };
    const auto& req = parser_->get();
    if (req.version() >= 11 && beast::iequals(req[bhttp::field::expect], "100-continue") && !parser_->is_done()) {
      static const std::string kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      asio::async_write(stream_, asio::buffer(kContinue),
                        [self = shared_from_this(), read_body](beast::error_code e, size_t) {
                          if (e) return self->close();
                          read_body();
                        });
      return;
    }
    read_body();
  }

  void on_read(beast::error_code ec) {
    if (ec == bhttp::error::body_limit) {
      return refuse(413, "the request body exceeds " + std::to_string(options_.max_body_bytes) + " bytes",
                    "request_too_large");
    }
    if (ec == bhttp::error::header_limit) {
      return refuse(431, "the request headers exceed " + std::to_string(options_.max_header_bytes) + " bytes",
                    "headers_too_large");
    }
    if (ec == bhttp::error::end_of_stream || ec == beast::error::timeout || ec == asio::error::eof ||
        ec == asio::error::connection_reset || ec == asio::error::operation_aborted || ec == asio::error::bad_descriptor) {
      return close();
    }
    if (ec) return refuse(400, "malformed HTTP request: " + ec.message(), "bad_request");
    ++num_requests_;
    auto& req = parser_->get();
    Request request;
    request.method = std::string(req.method_string());
    const std::string_view target(req.target().data(), req.target().size());
    request.path = std::string(target.substr(0, target.find('?')));
    for (const auto& field : req) {
      std::string name(field.name_string());
      std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
      request.headers.emplace_back(std::move(name), std::string(field.value()));
    }
    request.body = std::move(req.body());
    begin_exchange(req.version(), req.keep_alive(), req.method());
    watch_for_disconnect();
    auto exchange = std::make_shared<Exchange>(shared_from_this(), std::move(request));
    try {
      handler_(exchange);
    } catch (const std::exception& e) {
      respond({500, "application/json",
               ApiError{500, "internal_error", std::string("internal error: ") + e.what(), "", ""}.to_json(), {}});
    }
  }

  void begin_exchange(unsigned version, bool keep_alive, bhttp::verb method) {
    stream_.expires_never();  // a request may wait long for its first token
    version_ = version;
    keep_alive_ = keep_alive;
    method_ = method;
    in_exchange_ = true;
    set_open(true);
    ended_ = head_sent_ = chunked_ = gone_ = false;
  }

  // Counts the exchanges whose answer is not yet written out (HttpServer::wait_quiet).
  void set_open(bool open) {
    if (open == counted_open_) return;
    counted_open_ = open;
    open ? ++open_exchanges_ : --open_exchanges_;
  }

  // An answer to a request that could not be read whole; the connection closes after it.
  void refuse(int status, const std::string& message, const std::string& code) {
    begin_exchange(11, false, bhttp::verb::unknown);
    respond({status, "application/json", ApiError{status, "invalid_request_error", message, "", code}.to_json(), {}});
  }

  void append_common_headers(std::string& out, const Headers& headers) const {
    out += "Server: tessera\r\n";
    if (!keep_alive_) out += "Connection: close\r\n";
    for (const auto& [name, value] : headers) out += name + ": " + value + "\r\n";
  }

  // While the handler works, a read-readiness wait notices a client that hangs up. A peek
  // tells the cases apart: 0 bytes is EOF (gone), an error other than "would block" is gone
  // too, bytes are a pipelined request (the watch ends; they are read after this exchange),
  // and nothing to read yet means the wake-up was spurious (watch again). A wait left over
  // from an earlier exchange on this connection is recognized by its serial and ignored.
  void watch_for_disconnect() {
    const uint64_t serial = num_requests_;
    stream_.socket().async_wait(tcp::socket::wait_read, [self = shared_from_this(), serial](beast::error_code ec) {
      if (ec == asio::error::operation_aborted || !self->in_exchange_ || self->num_requests_ != serial) return;
      if (ec) return self->client_gone();
      char byte;
      const ssize_t n = ::recv(self->stream_.socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
      if (n > 0) return;  // a pipelined request
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return self->watch_for_disconnect();
      self->client_gone();
    });
  }

  void client_gone() {
    if (gone_) return;
    gone_ = true;
    auto callback = std::move(gone_callback_);
    gone_callback_ = {};
    auto pending = std::move(out_);
    out_.clear();
    for (auto& [data, written] : pending) {
      if (written) written(false);
    }
    if (callback) callback();
    close();
  }

  void enqueue(std::string data, std::function<void(bool)> written) {
    out_.emplace_back(std::move(data), std::move(written));
    if (!writing_) write_front();
  }

  void write_front() {
    if (out_.empty()) {
      if (ended_ && in_exchange_) finish_exchange();
      return;
    }
    writing_ = true;
    stream_.expires_after(options_.write_timeout);
    asio::async_write(stream_, asio::buffer(out_.front().first),
                      [self = shared_from_this()](beast::error_code ec, size_t) { self->on_write(ec); });
  }

  void on_write(beast::error_code ec) {
    writing_ = false;
    stream_.expires_never();
    if (gone_) return;
    if (ec) return client_gone();
    auto written = std::move(out_.front().second);
    out_.pop_front();
    if (written) written(true);
    write_front();
  }

  void finish_exchange() {
    in_exchange_ = false;
    set_open(false);
    gone_callback_ = {};
    if (!keep_alive_) return close();
    beast::error_code ignored;
    stream_.socket().cancel(ignored);  // the disconnect watch
    read_request();
  }

  void close() {
    set_open(false);
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.socket().close(ignored);
  }

  beast::tcp_stream stream_;
  const ServerOptions& options_;
  const Handler& handler_;
  std::atomic<int>& active_;
  std::atomic<int>& open_exchanges_;
  bool counted_open_ = false;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  uint64_t num_requests_ = 0;
  unsigned version_ = 11;
  bhttp::verb method_ = bhttp::verb::unknown;
  bool keep_alive_ = true;
  bool in_exchange_ = false;
  bool head_sent_ = false;
  bool ended_ = false;
  bool chunked_ = false;
  bool gone_ = false;
  bool writing_ = false;
  std::deque<std::pair<std::string, std::function<void(bool)>>> out_;
  std::function<void()> gone_callback_;
};

Exchange::Exchange(std::shared_ptr<Connection> connection, Request request)
    : connection_(std::move(connection)), request_(std::move(request)) {}

void Exchange::respond(Response response) {
  connection_->post([c = connection_, r = std::move(response)]() mutable { c->respond(std::move(r)); });
}

void Exchange::start_stream(int status, std::string content_type, Headers headers) {
  connection_->post([c = connection_, status, t = std::move(content_type), h = std::move(headers)] {
    c->start_stream(status, t, h);
  });
}

void Exchange::write(std::string data, std::function<void(bool)> written) {
  connection_->post([c = connection_, d = std::move(data), w = std::move(written)]() mutable {
    c->write(std::move(d), std::move(w));
  });
}

void Exchange::end_stream() {
  connection_->post([c = connection_] { c->end_stream(); });
}

void Exchange::on_client_gone(std::function<void()> f) {
  connection_->post([c = connection_, f = std::move(f)]() mutable { c->on_client_gone(std::move(f)); });
}

struct HttpServer::Impl {
  // Connections still queued in the io_context when it is destroyed refer to the handler
  // and the counters: those are declared before it, so they outlive it.
  ServerOptions options;
  Handler handler;
  std::atomic<int> active{0};
  std::atomic<int> open_exchanges{0};
  asio::io_context ioc;
  tcp::acceptor acceptor{ioc};
  std::vector<std::thread> threads;
  std::atomic<bool> stopped{false};
  uint16_t port = 0;

  void accept() {
    acceptor.async_accept(asio::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) {
      if (ec == asio::error::operation_aborted || !acceptor.is_open()) return;
      if (!ec) {
        if (active.load() >= options.max_connections) {
          beast::error_code ignored;
          socket.close(ignored);
        } else {
          beast::error_code ignored;
          socket.set_option(tcp::no_delay(true), ignored);  // SSE chunks are small and latency-bound
          std::make_shared<Connection>(std::move(socket), options, handler, active, open_exchanges)->read_request();
        }
      }
      accept();
    });
  }
};

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpServer::~HttpServer() { stop(); }

Result<std::unique_ptr<HttpServer>> HttpServer::start(const ServerOptions& options, Handler handler) {
  TESSERA_RETURN_IF_ERROR(options.validate());
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->handler = std::move(handler);
  TESSERA_RETURN_IF_ERROR(net::listen(impl->acceptor, options.host, options.port, "gateway"));
  impl->port = impl->acceptor.local_endpoint().port();
  impl->accept();
  for (int i = 0; i < options.num_threads; ++i) {
    impl->threads.emplace_back([ioc = &impl->ioc] { ioc->run(); });
  }
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

uint16_t HttpServer::port() const { return impl_->port; }

int HttpServer::num_connections() const { return impl_->active.load(); }

bool HttpServer::wait_quiet(std::chrono::milliseconds timeout) {
  asio::post(impl_->ioc, [impl = impl_.get()] {
    beast::error_code ignored;
    impl->acceptor.close(ignored);
  });
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (impl_->open_exchanges.load() > 0) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

void HttpServer::stop() {
  if (impl_->stopped.exchange(true)) return;
  asio::post(impl_->ioc, [this] {
    beast::error_code ignored;
    impl_->acceptor.close(ignored);
  });
  impl_->ioc.stop();
  for (auto& t : impl_->threads) t.join();
}

}  // namespace tessera::gateway::http
