// Internal: the table that maps each dotted config key to its typed member. Parsing,
// dumping and the generated reference all walk this one table, so a key documented is a
// key accepted.
#pragma once

#include <yaml-cpp/yaml.h>

#include <functional>
#include <string>
#include <vector>

#include "tessera/common/config.h"

namespace tessera::config_internal {

struct FieldSpec {
  std::string key;   // "router.max_num_seqs"
  std::string type;  // "uint32", "string", "list of strings", "one of: auto, cpu, cuda"
  std::string help;
  // Sets the member from a YAML node; the error message carries no location (the caller
  // adds it).
  std::function<Status(Config&, const YAML::Node&)> set;
  // Emits the member's current value into an emitter.
  std::function<void(const Config&, YAML::Emitter&)> emit;
};

const std::vector<FieldSpec>& schema();
const FieldSpec* find_field(std::string_view key);
// Section names in schema order ("model", "gateway", ...).
const std::vector<std::string>& section_names();

}  // namespace tessera::config_internal
