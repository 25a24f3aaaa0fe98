// tessera-bench-tokenizer: encode throughput of tessera::tokenizer on a corpus file, the
// C++ half of scripts/bench/tokenizer (which runs HF `tokenizers` on the same file).
//
//   tessera-bench-tokenizer (--gguf FILE | --json FILE) --corpus FILE [--threads N] [--seconds S]
//
// The corpus is a JSON array of documents. Prints one JSON line: MB/s, tokens, and an
// FNV-1a hash of all ids so the script can check both sides produced the same tokens.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "gateway/tokenizer/tokenizer.h"
#include "worker/loader/gguf_file.h"

namespace {

using tessera::tokenizer::EncodeOptions;
using tessera::tokenizer::SpecialTokenParsing;
using tessera::tokenizer::SpecialTokens;
using tessera::tokenizer::TokenId;
using tessera::tokenizer::Tokenizer;

int usage() {
  std::cerr << "usage: tessera-bench-tokenizer (--gguf FILE | --json FILE) --corpus FILE [--threads N] [--seconds S]\n";
  return 2;
}

uint64_t fnv1a(const std::vector<std::vector<TokenId>>& all) {
  uint64_t h = 1469598103934665603ull;
  for (const auto& ids : all) {
    for (TokenId id : ids) {
      h ^= static_cast<uint32_t>(id);
      h *= 1099511628211ull;
    }
    h ^= 0xFFFFFFFFu;  // document boundary
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace

int main(int argc, char** argv) {
  std::string gguf_path, json_path, corpus_path;
  int num_threads = 1;
  double min_seconds = 3.0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (arg == "--gguf") gguf_path = next();
    else if (arg == "--json") json_path = next();
    else if (arg == "--corpus") corpus_path = next();
    else if (arg == "--threads") num_threads = std::max(1, std::stoi(next()));
    else if (arg == "--seconds") min_seconds = std::stod(next());
    else return usage();
  }
  if (corpus_path.empty() || gguf_path.empty() == json_path.empty()) return usage();

  tessera::Result<Tokenizer> tokenizer = tessera::invalid_argument("no tokenizer");
  const auto load_start = std::chrono::steady_clock::now();
  if (!gguf_path.empty()) {
    auto gguf = tessera::loader::GgufFile::open(gguf_path);
    if (!gguf.is_ok()) {
      std::cerr << gguf.status().to_string() << "\n";
      return 1;
    }
    tokenizer = Tokenizer::from_gguf(*gguf);
  } else {
    tokenizer = Tokenizer::from_tokenizer_json_file(json_path);
  }
  if (!tokenizer.is_ok()) {
    std::cerr << tokenizer.status().to_string() << "\n";
    return 1;
  }
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();

  std::ifstream in(corpus_path, std::ios::binary);
  if (!in) {
    std::cerr << "cannot open " << corpus_path << "\n";
    return 1;
  }
  const auto docs = nlohmann::json::parse(std::string(std::istreambuf_iterator<char>(in), {})).get<std::vector<std::string>>();
  size_t num_bytes = 0;
  for (const auto& d : docs) num_bytes += d.size();

  // Plain ids, as HF's add_special_tokens=False on the other side.
  const EncodeOptions options{SpecialTokens::kNone, SpecialTokenParsing::kParse};
  std::vector<std::vector<TokenId>> ids(docs.size());
  // One untimed pass, as on the HF side: both tokenizers cache words.
  for (size_t i = 0; i < docs.size(); ++i) ids[i] = tokenizer->encode(docs[i], options).value();

  size_t num_passes = 0;
  const auto start = std::chrono::steady_clock::now();
  double elapsed = 0;
  while (elapsed < min_seconds || num_passes < 2) {
    std::atomic<size_t> next_doc{0};
    auto worker = [&]() {
      for (size_t i = next_doc++; i < docs.size(); i = next_doc++) {
        auto r = tokenizer->encode(docs[i], options);
        if (r.is_ok()) ids[i] = std::move(r).value();
      }
    };
    std::vector<std::thread> threads;
    for (int t = 1; t < num_threads; ++t) threads.emplace_back(worker);
    worker();
    for (auto& t : threads) t.join();
    ++num_passes;
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  size_t num_tokens = 0;
  for (const auto& v : ids) num_tokens += v.size();
  char hash[32];
  std::snprintf(hash, sizeof(hash), "%016llx", static_cast<unsigned long long>(fnv1a(ids)));
  nlohmann::json out = {{"impl", "tessera"},
                        {"threads", num_threads},
                        {"load_s", load_s},
                        {"num_docs", docs.size()},
                        {"num_bytes", num_bytes},
                        {"num_tokens", num_tokens},
                        {"mb_per_s", static_cast<double>(num_bytes) * static_cast<double>(num_passes) / elapsed / 1e6},
                        {"ids_fnv1a", hash}};
  std::cout << out.dump() << std::endl;
  return 0;
}
