// tessera: the command-line front end. Dispatches to one subcommand per file
// (launcher/*_command.cc).
#include <string>

#include "launcher/commands.h"
#include "tessera/common/cli.h"

namespace {

constexpr const char* kHelp =
    "Usage: tessera [--help] [--version] <command> [args]\n"
    "\n"
    "Commands:\n"
    "  serve [--model PATH|default] [--device auto|cpu|cuda] [--host H] [--port 8000]\n"
    "        [--tp N] [--dp N] [--drain-timeout S] [--router-port N] [--ready-timeout S]\n"
    "        [--config FILE] [--set KEY=VALUE]...\n"
    "                        run a whole Tessera on this host: router, workers and gateway as\n"
    "                        supervised child processes (restarted when they exit); prints the\n"
    "                        OpenAI API's URL once ready; SIGINT/SIGTERM drain and stop it\n"
    "  config check [--config FILE] [--set KEY=VALUE]...\n"
    "                        load and validate a configuration; print every problem\n"
    "  config dump  [--config FILE] [--set KEY=VALUE]...\n"
    "                        print the effective configuration as YAML (defaults filled in)\n"
    "  config reference      print the reference of every configuration key (Markdown)\n"
    "  inspect MODEL [--tensors] [--metadata]\n"
    "                        print a model's config, tensors, tokenizer and chat template;\n"
    "                        MODEL is a GGUF file, a Hugging Face directory or 'default'\n"
    "  tokenize [--model MODEL] [--add-special] [--special-as-text] [--json] TEXT|-\n"
    "                        print the token ids of TEXT (or of stdin)\n"
    "  detokenize [--model MODEL] [--skip-special] [--json] ID...|-\n"
    "                        print the text of token ids (or of ids read from stdin)\n"
    "  generate [--model MODEL] (--prompt TEXT [--chat] | --prompt-ids IDS) [--max-tokens N]\n"
    "           [--temperature T] [--top-p P] [--top-k K] [--min-p P] [--seed S]\n"
    "           [--repetition-penalty R] [--presence-penalty P] [--frequency-penalty F]\n"
    "           [--logprobs N] [--ignore-eos] [--json] [--threads N] [--page-size N]\n"
    "           [--kv-cache-tokens N] [--max-batch-tokens N] [--kv-dtype f16|f32] [--dequantize]\n"
    "           [--load-format auto|gguf|safetensors|dummy] [--dummy-seed S] [--device cpu|cuda]\n"
    "                        generate offline with the engine (greedy unless --temperature);\n"
    "                        MODEL: a GGUF file, a Hugging Face directory, or with --load-format\n"
    "                        dummy a config.json directory filled with seeded random weights\n"
    "  generate --benchmark [--model MODEL] [--threads N] [--prompt-tokens 512]\n"
    "           [--decode-prompt-tokens 64] [--decode-tokens 128] [--concurrency 1,4,16]\n"
    "                        engine throughput: prefill and decode tok/s, peak RSS (JSON)\n"
    "  loadgen (--router HOST:PORT | --in-process [--model MODEL] [--threads N])\n"
    "          [--requests 64] [--concurrency 16] [--prompt-tokens 128]\n"
    "          [--shared-prefix-tokens 0] [--max-tokens 32] [--vocab 49152]\n"
    "          [--first-request 0] [--no-prefix-cache]\n"
    "                        closed-loop load of greedy token-id requests through a router, or\n"
    "                        on an engine in-process; throughput and TTFT as JSON\n"
    "\n"
    "Options:\n"
    "  -h, --help     show this help and exit\n"
    "      --version  print the version and exit\n";

}  // namespace

int main(int argc, char** argv) {
  namespace launcher = tessera::launcher;
  const auto args = tessera::cli::args_of(argc, argv);
  if (args.empty()) return tessera::cli::usage_error(launcher::kProgram, "missing command");
  // Global help/version only before the command, so later arguments stay the command's own.
  if (args[0] == "--help" || args[0] == "-h" || args[0] == "--version") {
    return *tessera::cli::handle_help_and_version({args[0]}, launcher::kProgram, kHelp);
  }
  if (args[0] == "config") return launcher::run_config(args);
  if (args[0] == "inspect") return launcher::run_inspect(args);
  if (args[0] == "tokenize") return launcher::run_tokenize(args);
  if (args[0] == "detokenize") return launcher::run_detokenize(args);
  if (args[0] == "generate") return launcher::run_generate(args);
  if (args[0] == "loadgen") return launcher::run_loadgen(args);
  if (args[0] == "serve") return launcher::run_serve(args);
  return tessera::cli::usage_error(launcher::kProgram, "unknown command '" + args[0] + "'");
}
