// Real model templates against transformers' own rendering: every case in
// tests/fixtures/chat_templates/*.cases.json (scripts/fixtures/make_chat_template_fixtures.py)
// must render byte for byte, or fail as the reference failed.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "gateway/chat_template/chat_template.h"

namespace fs = std::filesystem;
using tessera::chat_template::ChatRenderRequest;
using tessera::chat_template::ChatTemplate;

namespace {

const fs::path kFixtureDir = fs::path(TESSERA_SOURCE_DIR) / "tests/fixtures/chat_templates";

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The instant the fixtures pinned strftime_now() to ("2024-09-05T14:30:00").
std::tm fixture_time(const std::string& iso) {
  std::tm tm{};
  std::istringstream in(iso);
  in >> std::get_time(&tm, "%Y-%m-%dT%H:%M:%S");
  std::mktime(&tm);  // fills tm_wday / tm_yday for %a, %j
  return tm;
}

}  // namespace

TEST_CASE("every fixture case renders exactly as transformers does", "[chat_template][fixtures]") {
  std::vector<fs::path> case_files;
  for (const auto& entry : fs::directory_iterator(kFixtureDir)) {
    if (entry.path().string().ends_with(".cases.json")) case_files.push_back(entry.path());
  }
  std::sort(case_files.begin(), case_files.end());
  REQUIRE(case_files.size() >= 14);

  int num_cases = 0;
  int num_passed = 0;
  for (const fs::path& file : case_files) {
    auto doc = nlohmann::ordered_json::parse(read_file(file));
    std::string source = read_file(kFixtureDir / doc["template"].get<std::string>());
    auto tmpl = ChatTemplate::from_string(source);
    INFO("template " << file.filename().string() << ": " << tmpl.status().to_string());
    REQUIRE(tmpl.is_ok());
    std::tm now = fixture_time(doc["strftime_now"].get<std::string>());
    int template_passed = 0;
    for (const auto& c : doc["cases"]) {
      ChatRenderRequest request;
      request.messages = c["messages"];
      if (c.contains("tools")) request.tools = c["tools"];
      request.add_generation_prompt = c["add_generation_prompt"].get<bool>();
      if (doc["bos_token"].is_string()) request.bos_token = doc["bos_token"].get<std::string>();
      if (doc["eos_token"].is_string()) request.eos_token = doc["eos_token"].get<std::string>();
      if (c.contains("kwargs")) request.extra_context = c["kwargs"];
      request.local_clock = [now] { return now; };

      auto rendered = tmpl->render(request);
      INFO("case " << file.filename().string() << " / " << c["name"].get<std::string>());
      bool ok = false;
      if (c.contains("expected")) {
        INFO("error: " << rendered.status().to_string());
        REQUIRE(rendered.is_ok());
        CHECK(*rendered == c["expected"].get<std::string>());
        ok = *rendered == c["expected"].get<std::string>();
      } else {
        REQUIRE_FALSE(rendered.is_ok());
        if (c["error"]["kind"] == "raise_exception") {
          // raise_exception() hands the template's own message through untouched.
          CHECK(rendered.status().message() == c["error"]["message"].get<std::string>());
          ok = rendered.status().message() == c["error"]["message"].get<std::string>();
        } else {
          ok = true;  // a Python TypeError/UndefinedError: failing is what matters
        }
      }
      ++num_cases;
      if (ok) {
        ++num_passed;
        ++template_passed;
      }
    }
    WARN(file.filename().string() << ": " << template_passed << "/" << doc["cases"].size() << " cases match");
  }
  CHECK(num_passed == num_cases);
  CHECK(num_cases >= 280);
}
