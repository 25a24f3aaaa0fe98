// tessera-gateway: the OpenAI-compatible HTTP front door. Loads the model's tokenizer and
// chat template (model.path), spreads requests over the router replicas of gateway.routers,
// and serves the API, /health, /ready and /metrics on gateway.host:gateway.port.
// SIGTERM/SIGINT drain it: /ready turns 503, new requests get 503, in-flight ones get
// gateway.drain_timeout_s to finish (then they are cancelled), and it exits 0.

#include <cstdio>

#include "gateway/api_service.h"
#include "gateway/http/http_server.h"
#include "gateway/model_files.h"
#include "gateway/router_pool.h"
#include "tessera/common/cli.h"
#include "tessera/common/config.h"
#include "tessera/common/files.h"
#include "tessera/common/metrics.h"
#include "worker/loader/gguf_file.h"

namespace {

constexpr const char* kProgram = "tessera-gateway";
constexpr const char* kHelp =
    "Usage: tessera-gateway [--config FILE] [--set KEY=VALUE]...\n"
    "\n"
    "The OpenAI-compatible HTTP front door: validates and tokenizes requests, streams token ids\n"
    "to a router (gateway.routers) and detokenizes the replies. Serves /v1/completions,\n"
    "/v1/chat/completions, /v1/models, /v1/tokenize, /v1/detokenize, /generate,\n"
    "/generate_stream, /health, /ready and /metrics on gateway.host:gateway.port (docs/API.md).\n"
    "SIGTERM/SIGINT drain it (gateway.drain_timeout_s), then it exits.\n"
    "\n"
    "Options:\n"
    "  -c, --config FILE   YAML configuration (docs/CONFIGURATION.md); default: built-in defaults\n"
    "      --set KEY=VALUE override one key, e.g. --set gateway.port=8000\n"
    "  -h, --help          show this help and exit\n"
    "      --version       print the version and exit\n";

// The tokenizer and chat template of the model at `path`; `template_path`, when set, is a
// Jinja file that replaces the model's own template (model.chat_template_path).
tessera::Result<tessera::gateway::ModelText> load_model_text(const std::string& path, const std::string& template_path) {
  using namespace tessera;
  auto where = model_files::locate_model(path);
  if (!where) return where.status();
  std::optional<loader::GgufFile> gguf;
  if (where->format == model_files::ModelFormat::kGguf) {
    auto file = loader::GgufFile::open(where->path);
    if (!file) return file.status();
    gguf.emplace(std::move(*file));
  }
  auto tok = model_files::load_tokenizer(*where, gguf ? &*gguf : nullptr);
  if (!tok) return tok.status().with_context("tokenizer of " + path);
  if (!template_path.empty()) {
    auto source = read_file(template_path, "chat template");
    if (!source) return source.status();
    auto tmpl = chat_template::ChatTemplate::from_string(*source);
    if (!tmpl) return tmpl.status().with_context(template_path);
    return gateway::ModelText{std::move(*tok), std::move(*tmpl)};
  }
  auto tmpl = model_files::load_chat_template(*where, gguf ? &*gguf : nullptr);
  if (!tmpl) return tmpl.status().with_context("chat template of " + path);
  return gateway::ModelText{std::move(*tok), std::move(*tmpl)};
}

int serve(const tessera::Config& config) {
  using namespace tessera;
  const cli::StopSignals signals;

  auto path = resolve_model_path(config.model);
  if (!path) return cli::fail(kProgram, path.status());
  // The tokenizer comes from the model unless model.tokenizer_path names another source.
  const std::string tokenizer_source = config.model.tokenizer_path.empty() ? *path : config.model.tokenizer_path;
  auto text = load_model_text(tokenizer_source, config.model.chat_template_path);
  if (!text) return cli::fail(kProgram, text.status());
  const bool has_template = text->chat_template.has_value();

  gateway::RouterPoolOptions po;
  po.addresses = config.gateway.routers;
  if (Status s = po.validate(); !s.is_ok()) return cli::fail(kProgram, s);
  gateway::RouterPool pool(po);

  metrics::Registry registry({{"tier", "gateway"}});
  gateway::ApiOptions ao;
  ao.api_keys = config.gateway.api_keys;
  ao.max_concurrent_requests = config.gateway.max_concurrent_requests;
  ao.request_timeout = std::chrono::seconds(config.gateway.request_timeout_s);
  ao.served_name = served_model_name(config.model, *path);
  ao.max_model_len_tokens = config.model.max_model_len_tokens;
  gateway::ApiService api(ao, std::move(*text), pool, registry);

  gateway::http::ServerOptions so;
  so.host = config.gateway.host;
  so.port = static_cast<uint16_t>(config.gateway.port);
  so.num_threads = static_cast<int>(config.gateway.num_threads);
  so.max_body_bytes = config.gateway.max_body_bytes;
  auto server = gateway::http::HttpServer::start(so, [&api](std::shared_ptr<gateway::http::Exchange> ex) { api.handle(ex); });
  if (!server) return cli::fail(kProgram, server.status());
  std::fprintf(stderr, "%s: serving model '%s' (%s chat template) on http://%s:%u; routers:", kProgram,
               ao.served_name.c_str(), has_template ? "with" : "no", config.gateway.host.c_str(), (*server)->port());
  for (const auto& r : config.gateway.routers) std::fprintf(stderr, " %s", r.c_str());
  std::fprintf(stderr, "\n");

  signals.wait();
  std::fprintf(stderr, "%s: draining %lld in-flight requests (up to %u s)\n", kProgram,
               static_cast<long long>(api.num_in_flight()), config.gateway.drain_timeout_s);
  api.stop_admitting();
  bool drained = api.wait_idle(std::chrono::seconds(config.gateway.drain_timeout_s));
  if (!drained) {
    api.cancel_all();
    drained = api.wait_idle(std::chrono::seconds(5));
  }
  const bool flushed = (*server)->wait_quiet(std::chrono::seconds(5));  // the last bytes of every answer
  std::fprintf(stderr, "%s: %s%s; stopping\n", kProgram, drained ? "drained" : "drain timed out",
               flushed ? "" : " (some answers were still being written)");
  (*server)->stop();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const auto args = tessera::cli::args_of(argc, argv);
  if (auto code = tessera::cli::handle_help_and_version(args, kProgram, kHelp)) return *code;
  auto config = tessera::cli::load_tier_config(args, kProgram);
  if (const int* code = std::get_if<int>(&config)) return *code;
  return serve(std::get<tessera::Config>(config));
}
