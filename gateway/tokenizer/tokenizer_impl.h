// Tokenizer's internals, shared by tokenizer.cc and incremental_decoder.cc.
#pragma once

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "gateway/tokenizer/bpe_model.h"
#include "gateway/tokenizer/pre_tokenizer.h"
#include "gateway/tokenizer/tokenizer.h"

namespace tessera::tokenizer {

struct Tokenizer::Impl {
  TokenizerSpec spec;
  std::unique_ptr<BpeModel> model;
  PreTokenizer pre_tokenizer;

  TokenIndex added_index;  // content -> index into spec.added_tokens
  // For each first byte, the distinct lengths of added tokens starting with it, longest
  // first, so matching probes a hash map a few times at most per candidate position.
  std::array<std::vector<uint32_t>, 256> added_lengths;

  std::vector<uint8_t> special;             // per id
  std::vector<std::string> decoded_piece;   // per id: bytes (byte-level) or text ("▁" -> " ")
  std::vector<int16_t> fallback_byte;       // per id: NN for <0xNN> under byte fallback, else -1

  // Appends to out the text that becomes final once id is known; `held` and
  // `num_spaces_to_strip` carry state across calls (see IncrementalDecoder).
  void feed(TokenId id, const DecodeOptions& options, std::string& held, int& num_spaces_to_strip,
            std::string& out) const;
  void flush(std::string& held, int& num_spaces_to_strip, std::string& out) const;
};

}  // namespace tessera::tokenizer
