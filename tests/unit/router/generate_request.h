// A greedy Router.Generate request that ignores EOS: what the router tests send.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tessera/v1/router.pb.h"

namespace tessera::testing {

inline v1::GenerateRequest greedy_generate_request(const std::string& id, const std::vector<int32_t>& prompt,
                                                   uint32_t max_tokens) {
  v1::GenerateRequest req;
  req.set_request_id(id);
  req.mutable_prompt_token_ids()->Assign(prompt.begin(), prompt.end());
  req.mutable_sampling()->set_temperature(0);
  req.mutable_sampling()->set_max_tokens(max_tokens);
  req.mutable_sampling()->set_ignore_eos(true);
  return req;
}

}  // namespace tessera::testing
