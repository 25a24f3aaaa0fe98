// Stop strings for streamed output (OpenAI `stop`): text goes in as it is detokenized,
// text that can safely reach the client comes out. A stop string is matched across token
// boundaries and never emitted; the output ends right before its first occurrence. Text
// that could still become the start of a stop string is held back until the next chunk
// decides it (or finish() releases it when the sequence ends another way).
//
// The first stop string to appear complete ends the output; when one chunk completes
// several, the one starting earliest wins (the longer on a tie). Input is UTF-8 in whole characters (IncrementalDecoder's output); what is held
// back always starts at a character boundary, since a stop string does. One instance per
// output stream; not thread-safe.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tessera::gateway {

class StopStringMatcher {
 public:
  // Empty strings are ignored (the request parser refuses them first).
  explicit StopStringMatcher(std::vector<std::string> stops);

  struct Output {
    std::string text;                 // safe to send now
    std::optional<size_t> stopped_by;  // index into the stop strings, once one matched
  };
  // After a match every call returns nothing more.
  Output push(std::string_view text);
  // The held-back text, when the sequence ended without a stop string.
  std::string finish();
  bool stopped() const { return stopped_; }
  // Bytes held back right now (tests, metrics).
  size_t held() const { return pending_.size(); }

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
};

}  // namespace tessera::gateway
