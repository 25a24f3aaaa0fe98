// `tessera tokenize` / `tessera detokenize`: text ⇄ token ids with a model's tokenizer,
// exactly as the gateway will produce them.
#include <charconv>
#include <cstdio>
#include <iostream>
#include <iterator>
#include <string>

#include <nlohmann/json.hpp>

#include "launcher/commands.h"
#include "gateway/model_files.h"
#include "tessera/common/cli.h"

namespace tessera::launcher {
using namespace tessera::model_files;  // locate_model, load_tokenizer, load_chat_template
namespace {

struct TokenizerArgs {
  std::string model = "default";
  std::vector<std::string> positional;
  bool json = false;
  bool add_special = false;   // tokenize: add BOS/EOS as the post-processor says
  bool special_as_text = false;  // tokenize: special tokens in the text stay text
  bool skip_special = false;  // detokenize
  std::string error;
};

TokenizerArgs parse_args(const Args& args, bool detokenize) {
  TokenizerArgs a;
  for (std::size_t i = 1; i < args.size(); ++i) {
    const std::string& s = args[i];
    if (s == "--model" || s == "-m") {
      if (i + 1 >= args.size()) {
        a.error = s + " needs a value";
        return a;
      }
      a.model = args[++i];
    } else if (s.starts_with("--model=")) {
      a.model = s.substr(8);
    } else if (s == "--json") {
      a.json = true;
    } else if (!detokenize && s == "--add-special") {
      a.add_special = true;
    } else if (!detokenize && s == "--special-as-text") {
      a.special_as_text = true;
    } else if (detokenize && s == "--skip-special") {
      a.skip_special = true;
    } else if (s.starts_with("-") && s != "-") {
      a.error = "unknown option '" + s + "'";
      return a;
    } else {
      a.positional.push_back(s);
    }
  }
  return a;
}

struct LoadedTokenizer {
  std::optional<loader::GgufFile> gguf;  // keeps the vocabulary's backing file open
  std::optional<tokenizer::Tokenizer> tokenizer;
};

Result<LoadedTokenizer> open_tokenizer(const std::string& model) {
  auto where = locate_model(model);
  if (!where.is_ok()) return where.status();
  LoadedTokenizer out;
  if (where->format == ModelFormat::kGguf) {
    auto file = loader::GgufFile::open(where->path);
    if (!file.is_ok()) return file.status();
    out.gguf.emplace(std::move(*file));
  }
  auto t = load_tokenizer(*where, out.gguf ? &*out.gguf : nullptr);
  if (!t.is_ok()) return t.status();
  out.tokenizer.emplace(std::move(*t));
  return out;
}

std::string read_stdin() { return {std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>()}; }

}  // namespace

int run_tokenize(const Args& args) {
  TokenizerArgs a = parse_args(args, false);
  if (!a.error.empty()) return cli::usage_error(kProgram, "tokenize: " + a.error);
  if (a.positional.size() > 1) return cli::usage_error(kProgram, "tokenize takes one text argument (quote it, or use - for stdin)");
  std::string text = a.positional.empty() || a.positional[0] == "-" ? read_stdin() : a.positional[0];
  auto loaded = open_tokenizer(a.model);
  if (!loaded.is_ok()) return cli::fail("tessera tokenize", loaded.status());
  tokenizer::EncodeOptions opts;
  opts.add_special_tokens = a.add_special ? tokenizer::SpecialTokens::kAdd : tokenizer::SpecialTokens::kNone;
  opts.parse_special = a.special_as_text ? tokenizer::SpecialTokenParsing::kAsText : tokenizer::SpecialTokenParsing::kParse;
  auto ids = loaded->tokenizer->encode(text, opts);
  if (!ids.is_ok()) return cli::fail("tessera tokenize", ids.status());
  if (a.json) {
    nlohmann::json out;
    out["ids"] = *ids;
    nlohmann::json tokens = nlohmann::json::array();
    for (auto id : *ids) tokens.push_back(std::string(loaded->tokenizer->id_to_token(id).value_or("")));
    out["tokens"] = tokens;
    std::printf("%s\n", out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    std::string line;
    for (auto id : *ids) line += (line.empty() ? "" : " ") + std::to_string(id);
    std::printf("%s\n", line.c_str());
  }
  return 0;
}

int run_detokenize(const Args& args) {
  TokenizerArgs a = parse_args(args, true);
  if (!a.error.empty()) return cli::usage_error(kProgram, "detokenize: " + a.error);
  std::vector<std::string> words = a.positional;
  if (words.empty() || (words.size() == 1 && words[0] == "-")) {
    words.clear();
    std::string all = read_stdin(), word;
    for (char c : all + " ") {
      if (c == ' ' || c == '\n' || c == '\t' || c == ',') {
        if (!word.empty()) words.push_back(word);
        word.clear();
      } else {
        word += c;
      }
    }
  }
  std::vector<tokenizer::TokenId> ids;
  for (const auto& w : words) {
    tokenizer::TokenId id = 0;
    auto [end, ec] = std::from_chars(w.data(), w.data() + w.size(), id);
    if (ec != std::errc() || end != w.data() + w.size()) {
      return cli::usage_error(kProgram, "detokenize: '" + w + "' is not a token id");
    }
    ids.push_back(id);
  }
  auto loaded = open_tokenizer(a.model);
  if (!loaded.is_ok()) return cli::fail("tessera detokenize", loaded.status());
  tokenizer::DecodeOptions opts;
  opts.special_tokens = a.skip_special ? tokenizer::SpecialTokenOutput::kSkip : tokenizer::SpecialTokenOutput::kKeep;
  auto text = loaded->tokenizer->decode(ids, opts);
  if (!text.is_ok()) return cli::fail("tessera detokenize", text.status());
  if (a.json) {
    std::printf("%s\n", nlohmann::json{{"text", *text}}.dump().c_str());
  } else {
    std::fwrite(text->data(), 1, text->size(), stdout);
    std::printf("\n");
  }
  return 0;
}

}  // namespace tessera::launcher
