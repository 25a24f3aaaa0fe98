#include "gateway/tokenizer/bpe_model.h"

#include <algorithm>
#include <cstdio>
#include <queue>

#include "gateway/tokenizer/byte_level.h"
#include "gateway/tokenizer/utf8.h"

namespace tessera::tokenizer {
namespace {

constexpr const char* kMetaspace = "\xE2\x96\x81";  // "▁"

}  // namespace

Result<std::unique_ptr<BpeModel>> BpeModel::create(const TokenizerSpec& spec) {
  auto m = std::unique_ptr<BpeModel>(new BpeModel());
  m->kind_ = spec.model_kind;
  m->ignore_merges_ = spec.ignore_merges;
  m->byte_fallback_ = spec.byte_fallback;
  m->fuse_unk_ = spec.fuse_unk;
  m->unk_id_ = spec.unk_id;
  m->token_index_.reserve(spec.vocab.size());
  for (size_t id = 0; id < spec.vocab.size(); ++id) {
    // On duplicate spellings the lowest id wins, as in llama.cpp's token_to_id map.
    m->token_index_.emplace(spec.vocab[id], static_cast<TokenId>(id));
  }

  const ByteLevelMap& byte_map = ByteLevelMap::instance();
  m->byte_token_.fill(-1);
  m->fallback_token_.fill(-1);
  if (spec.model_kind == ModelKind::kByteLevelBpe) {
    for (int b = 0; b < 256; ++b) {
      auto it = m->token_index_.find(byte_map.encode(static_cast<unsigned char>(b)));
      // Some vocabularies (SmolLM2) lack a few control bytes; those become unk, as in HF.
      if (it != m->token_index_.end()) m->byte_token_[static_cast<size_t>(b)] = it->second;
    }
    if (spec.ignore_merges) {
      m->raw_index_.reserve(spec.vocab.size());
      for (size_t id = 0; id < spec.vocab.size(); ++id) {
        if (auto raw = byte_map.decode(spec.vocab[id])) m->raw_index_.emplace(std::move(*raw), static_cast<TokenId>(id));
      }
    }
  } else {
    char name[8];
    for (int b = 0; b < 256; ++b) {
      std::snprintf(name, sizeof(name), "<0x%02X>", b);
      auto it = m->token_index_.find(std::string_view(name));
      if (it != m->token_index_.end()) m->fallback_token_[static_cast<size_t>(b)] = it->second;
    }
  }

  if (spec.merge_order == MergeOrder::kMergeRanks) {
    m->merges_.reserve(spec.merges.size());
    for (size_t rank = 0; rank < spec.merges.size(); ++rank) {
      const auto& [left, right] = spec.merges[rank];
      auto l = m->token_index_.find(left);
      auto r = m->token_index_.find(right);
      auto merged = m->token_index_.find(left + right);
      if (l == m->token_index_.end() || r == m->token_index_.end() || merged == m->token_index_.end()) {
        return invalid_argument("merge " + std::to_string(rank) + " ('" + left + "' '" + right +
                                "') uses a token missing from the vocabulary");
      }
      // A repeated pair keeps its first (best) rank. Ranks below 2^24 are exact as floats.
      m->merges_.emplace(pair_key(l->second, r->second), MergeTarget{static_cast<float>(rank), merged->second});
    }
  } else {
    // SentencePiece merges the adjacent pair whose concatenation is the best-scoring token.
    // Enumerating every token's two-part splits up front turns that text lookup into the
    // same id-pair lookup the rank order uses.
    auto type_of = [&spec](size_t id) { return id < spec.token_types.size() ? spec.token_types[id] : TokenType::kNormal; };
    // Control, unknown and byte pieces never take part in a merge, on either side.
    auto mergeable = [&](size_t id) {
      const TokenType t = type_of(id);
      return t != TokenType::kControl && t != TokenType::kUnknown && t != TokenType::kByte &&
             static_cast<TokenId>(id) != spec.unk_id;
    };
    for (size_t id = 0; id < spec.vocab.size(); ++id) {
      const std::string& text = spec.vocab[id];
      if (!mergeable(id) || m->token_index_.find(text)->second != static_cast<TokenId>(id)) continue;
      size_t cut = utf8::sequence_length(static_cast<unsigned char>(text[0]));
      for (; cut < text.size(); cut += utf8::sequence_length(static_cast<unsigned char>(text[cut]))) {
        auto l = m->token_index_.find(std::string_view(text).substr(0, cut));
        auto r = m->token_index_.find(std::string_view(text).substr(cut));
        if (l == m->token_index_.end() || r == m->token_index_.end()) continue;
        if (!mergeable(static_cast<size_t>(l->second)) || !mergeable(static_cast<size_t>(r->second))) continue;
        m->merges_.emplace(pair_key(l->second, r->second), MergeTarget{-spec.scores[id], static_cast<TokenId>(id)});
      }
    }
  }

  // SentencePiece words are whole segments, often thousands of characters: too long to
  // cache and slow to merge as one. When no merge result holds "▁" after another
  // character (true of vocabularies trained with split_by_whitespace, such as Llama 2's),
  // no merge can cross the start of a "▁" that follows another character, so each run
  // from there on can be merged on its own and cached, with identical results.
  if (spec.model_kind == ModelKind::kSentencePieceBpe && m->token_index_.count(kMetaspace) != 0) {
    bool splittable = true;
    for (const auto& [pair, target] : m->merges_) {
      const std::string& text = spec.vocab[static_cast<size_t>(target.merged)];
      for (size_t hit = text.find(kMetaspace, 1); hit != std::string::npos; hit = text.find(kMetaspace, hit + 1)) {
        if (hit < 3 || text.compare(hit - 3, 3, kMetaspace) != 0) splittable = false;
      }
      if (!splittable) break;
    }
    m->split_at_metaspace_ = splittable;
  }
  return m;
}

void BpeModel::initial_symbols(std::string_view piece, std::vector<Symbol>& symbols) const {
  auto push = [&symbols](TokenId id, size_t begin, size_t end) {
    const auto n = static_cast<int32_t>(symbols.size());
    symbols.push_back(Symbol{id, static_cast<uint32_t>(begin), static_cast<uint32_t>(end), n - 1, n + 1, true});
  };
  auto push_unknown = [&](size_t begin, size_t end) {
    if (unk_id_ < 0) return;  // HF drops what it cannot spell when there is no unk token
    if (fuse_unk_ && !symbols.empty() && symbols.back().id == unk_id_) {
      symbols.back().end = static_cast<uint32_t>(end);
    } else {
      push(unk_id_, begin, end);
    }
  };
  if (kind_ == ModelKind::kByteLevelBpe) {
    for (size_t i = 0; i < piece.size(); ++i) {
      const TokenId id = byte_token_[static_cast<unsigned char>(piece[i])];
      if (id >= 0) {
        push(id, i, i + 1);
      } else {
        push_unknown(i, i + 1);
      }
    }
  } else {
    size_t pos = 0;
    while (pos < piece.size()) {
      const size_t len = utf8::sequence_length(static_cast<unsigned char>(piece[pos]));
      const std::string_view ch = piece.substr(pos, len);
      auto it = token_index_.find(ch);
      if (it != token_index_.end()) {
        push(it->second, pos, pos + len);
      } else {
        bool all_bytes = byte_fallback_;
        for (size_t i = 0; all_bytes && i < len; ++i) all_bytes = fallback_token_[static_cast<unsigned char>(ch[i])] >= 0;
        if (all_bytes) {
          // Byte pieces have no merges (their pairs are never in the table).
          for (size_t i = 0; i < len; ++i) push(fallback_token_[static_cast<unsigned char>(ch[i])], pos + i, pos + i);
        } else {
          push_unknown(pos, pos + len);
        }
      }
      pos += len;
    }
  }
  if (!symbols.empty()) symbols.back().next = -1;
}

bool BpeModel::best_merge(const std::vector<Symbol>& symbols, int32_t left, Candidate& out) const {
  const Symbol& l = symbols[static_cast<size_t>(left)];
  if (l.next < 0) return false;
  const Symbol& r = symbols[static_cast<size_t>(l.next)];
  auto it = merges_.find(pair_key(l.id, r.id));
  if (it == merges_.end()) return false;
  out = Candidate{it->second.priority, left, it->second.merged};
  return true;
}

void BpeModel::merge(std::string_view piece, std::vector<TokenId>& out) const {
  std::vector<Symbol> symbols;
  symbols.reserve(piece.size());
  initial_symbols(piece, symbols);

  auto worse = [](const Candidate& a, const Candidate& b) {
    return a.priority != b.priority ? a.priority > b.priority : a.pos > b.pos;
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(worse)> queue(worse);
  Candidate c{};
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) {
    if (best_merge(symbols, i, c)) queue.push(c);
  }
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& l = symbols[static_cast<size_t>(top.pos)];
    // Stale entries: the left symbol was absorbed, or its pair changed since the push.
    if (!l.alive || l.next < 0) continue;
    Candidate now{};
    if (!best_merge(symbols, top.pos, now) || now.merged != top.merged) continue;
    Symbol& r = symbols[static_cast<size_t>(l.next)];
    l.id = top.merged;
    l.end = r.end;
    l.next = r.next;
    r.alive = false;
    if (l.next >= 0) symbols[static_cast<size_t>(l.next)].prev = top.pos;
    if (l.prev >= 0 && best_merge(symbols, l.prev, c)) queue.push(c);
    if (best_merge(symbols, top.pos, c)) queue.push(c);
  }
  for (int32_t i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[static_cast<size_t>(i)].next) {
    out.push_back(symbols[static_cast<size_t>(i)].id);
  }
}

void BpeModel::encode_piece(std::string_view piece, std::vector<TokenId>& out) const {
  if (piece.empty()) return;
  if (ignore_merges_) {
    const TokenIndex& index = kind_ == ModelKind::kByteLevelBpe ? raw_index_ : token_index_;
    auto it = index.find(piece);
    if (it != index.end()) {
      out.push_back(it->second);
      return;
    }
  }
  if (!split_at_metaspace_) {
    encode_word(piece, out);
    return;
  }
  const std::string_view marker(kMetaspace);
  size_t begin = 0;
  for (size_t hit = piece.find(marker, 1); hit != std::string_view::npos; hit = piece.find(marker, hit + marker.size())) {
    if (hit >= begin + marker.size() && piece.substr(hit - marker.size(), marker.size()) == marker) continue;
    if (hit == begin) continue;
    encode_word(piece.substr(begin, hit - begin), out);
    begin = hit;
  }
  encode_word(piece.substr(begin), out);
}

void BpeModel::encode_word(std::string_view word, std::vector<TokenId>& out) const {
  if (word.size() > kMaxCachedPieceBytes) {
    merge(word, out);
    return;
  }
  CacheShard& shard = shard_of(word);
  {
    std::lock_guard lock(shard.mutex);
    auto it = shard.words.find(word);
    if (it != shard.words.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = out.size();
  merge(word, out);
  const size_t num_ids = out.size() - first;
  const size_t cost = kCacheEntryOverheadBytes + word.size() + num_ids * sizeof(TokenId);
  std::lock_guard lock(shard.mutex);
  if (shard.words.size() >= kMaxEntriesPerShard || shard.num_bytes + cost > kMaxBytesPerShard) {
    shard.words.clear();
    shard.num_bytes = 0;
  }
  // Another thread may have cached the word meanwhile; charge only a real insertion.
  if (shard.words.emplace(std::string(word), std::vector<TokenId>(out.begin() + static_cast<std::ptrdiff_t>(first), out.end()))
          .second) {
    shard.num_bytes += cost;
  }
}

size_t BpeModel::cache_size_bytes() const {
  size_t total = 0;
  for (CacheShard& shard : cache_) {
    std::lock_guard lock(shard.mutex);
    total += shard.num_bytes;
  }
  return total;
}

}  // namespace tessera::tokenizer
