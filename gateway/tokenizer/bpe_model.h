// The BPE merge loop. A word's symbols form a linked list; candidate merges sit in a
// binary heap ordered by (priority, position), so a word of n symbols costs O(n log n)
// rather than the O(n^2) of rescanning for the best pair after every merge. Results for
// short words are cached.
#pragma once

#include <cstdint>
#include <array>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "gateway/tokenizer/tokenizer_spec.h"
#include "tessera/common/status.h"

namespace tessera::tokenizer {

// Heterogeneous lookup so that a std::string_view finds a std::string key.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using TokenIndex = std::unordered_map<std::string, TokenId, StringHash, std::equal_to<>>;

// Thread-safe: the tables are immutable after create(); the cache has its own lock.
class BpeModel {
 public:
  [[nodiscard]] static Result<std::unique_ptr<BpeModel>> create(const TokenizerSpec& spec);

  // Appends the ids of one pre-tokenized piece. For byte-level models `piece` is the raw
  // UTF-8 (the byte mapping is folded into the tables); for SentencePiece models it is the
  // normalized text ("▁" for spaces).
  void encode_piece(std::string_view piece, std::vector<TokenId>& out) const;

  // The vocabulary as spelled in the spec, keyed by token string.
  const TokenIndex& token_index() const { return token_index_; }

  // What the word cache holds now, in the bytes it is charged (for tests and metrics).
  size_t cache_size_bytes() const;
  static constexpr size_t max_cache_size_bytes() { return kNumCacheShards * kMaxBytesPerShard; }

 private:
  struct Symbol {
    TokenId id;
    uint32_t begin;  // byte span in the piece (unk fusing extends it)
    uint32_t end;
    int32_t prev;
    int32_t next;
    bool alive;
  };
  struct Candidate {
    float priority;  // lower merges first
    int32_t pos;
    TokenId merged;
  };

  BpeModel() = default;
  void initial_symbols(std::string_view piece, std::vector<Symbol>& symbols) const;
  bool best_merge(const std::vector<Symbol>& symbols, int32_t left, Candidate& out) const;
  void merge(std::string_view piece, std::vector<TokenId>& out) const;
  void encode_word(std::string_view word, std::vector<TokenId>& out) const;

  static uint64_t pair_key(TokenId a, TokenId b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  ModelKind kind_ = ModelKind::kByteLevelBpe;
  bool ignore_merges_ = false;
  bool byte_fallback_ = false;
  bool fuse_unk_ = false;
  TokenId unk_id_ = -1;
  bool split_at_metaspace_ = false;  // SentencePiece: merge runs between word starts separately

  TokenIndex token_index_;  // spelling in the spec -> id
  // Byte-level: raw bytes of a token -> id, for ignore_merges.
  TokenIndex raw_index_;
  std::array<TokenId, 256> byte_token_{};      // byte-level: the token of each single byte
  std::array<TokenId, 256> fallback_token_{};  // SentencePiece: <0xNN>, -1 when absent
  struct MergeTarget {
    float priority;  // rank, or -score of the merged token; lower merges first
    TokenId merged;
  };
  std::unordered_map<uint64_t, MergeTarget> merges_;  // (left id, right id) -> merge

  // Word cache, sharded so that threads encoding at once rarely share a lock. Bounded in
  // entries and in bytes: a full shard is cleared wholesale, which keeps common words hot
  // without LRU bookkeeping on the hot path. The byte bound matters for hostile input:
  // under the entry bound alone, unique 256-byte punctuation words grew the heap by
  // 110 MB (up to ~180 MB at one token per byte); the byte bound keeps the cache at
  // 16 MiB. Real text (short words, ~125 bytes charged each) meets both bounds at about
  // the same size, so its hit rate is unchanged.
  static constexpr size_t kMaxCachedPieceBytes = 256;
  static constexpr size_t kNumCacheShards = 16;
  static constexpr size_t kMaxEntriesPerShard = (1 << 17) / kNumCacheShards;
  static constexpr size_t kMaxBytesPerShard = size_t{1} << 20;
  // Charged per entry on top of the key and ids: the hash node with its std::string and
  // std::vector, its bucket slot and two allocator headers (estimated for libstdc++).
  static constexpr size_t kCacheEntryOverheadBytes = 112;
  struct CacheShard {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<TokenId>, StringHash, std::equal_to<>> words;
    size_t num_bytes = 0;  // charged for `words`, as above
  };
  CacheShard& shard_of(std::string_view word) const {
    // Cheap and good enough to spread words; the map hashes the whole word anyway.
    const size_t h = word.size() * 31 + static_cast<unsigned char>(word.front()) * 7 + static_cast<unsigned char>(word.back());
    return cache_[h % kNumCacheShards];
  }
  mutable std::array<CacheShard, kNumCacheShards> cache_;
};

}  // namespace tessera::tokenizer
