// squeeze-cli: command-line client for a Squeeze server.
//   squeeze-cli register NAME (--file=F | --text=T | --ids=1,2,3) [index flags]
//   squeeze-cli generate [--context=NAME] (--input=T | --input_file=F) [sampling flags]
//   chat: register NAME --file=F --chat_document=system|user, then
//         generate --context=NAME --chat --input=QUESTION (or --messages_file=conversation.json)
//   squeeze-cli get NAME | list | delete NAME | tokenize TEXT | health
// Exit code: 0 on success, 1 with the server's status on error, 2 on usage errors.
// Calls that name a context send it as routing metadata (client.h, kContextHeader).
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "google/protobuf/util/json_util.h"

namespace squeeze::client {

// --stop: comma-separated stop strings; "\," is a comma inside a string and "\\" a backslash.
struct StopStrings {
  std::vector<std::string> values;
};

bool AbslParseFlag(absl::string_view text, StopStrings* out, std::string* error) {
  out->values.clear();
  std::string current;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '\\') {
      if (i + 1 >= text.size() || (text[i + 1] != ',' && text[i + 1] != '\\')) {
        *error = "a backslash in --stop must escape ',' or '\\'";
        return false;
      }
      current.push_back(text[++i]);
    } else if (c == ',') {
      if (!current.empty()) out->values.push_back(current);
      current.clear();
    } else {
      current.push_back(c);
    }
  }
  if (!current.empty()) out->values.push_back(current);
  return true;
}

std::string AbslUnparseFlag(const StopStrings& stops) {
  std::string out;
  for (const std::string& s : stops.values) {
    if (!out.empty()) out.push_back(',');
    for (char c : s) {
      if (c == ',' || c == '\\') out.push_back('\\');
      out.push_back(c);
    }
  }
  return out;
}

}  // namespace squeeze::client

ABSL_FLAG(std::string, server, "localhost:50051", "Server address host:port");
ABSL_FLAG(double, timeout, 0, "Deadline in seconds (0: none)");
// TLS and API keys (README: Security)
ABSL_FLAG(bool, tls, false, "Connect with TLS (implied by the --tls_* files)");
ABSL_FLAG(std::string, tls_ca_file, "", "PEM CA certificates that sign the server's certificate");
ABSL_FLAG(std::string, tls_cert_file, "", "PEM client certificate chain (mutual TLS)");
ABSL_FLAG(std::string, tls_key_file, "", "PEM private key of --tls_cert_file");
ABSL_FLAG(std::string, api_key_file, "",
          "File holding the API key sent as 'authorization: Bearer <key>' (default: the "
          "SQUEEZE_API_KEY environment variable)");
// register
ABSL_FLAG(std::string, file, "", "register: read the context text from this file ('-': stdin)");
ABSL_FLAG(std::string, text, "", "register: the context text");
ABSL_FLAG(std::string, ids, "", "register/generate: comma-separated token ids instead of text");
ABSL_FLAG(bool, no_index, false, "register: serve this context with dense attention only");
ABSL_FLAG(bool, hierarchical, false, "register: build the coarse centroid level");
ABSL_FLAG(double, centroid_fraction, 0, "register: fine centroids per token (0: server default)");
ABSL_FLAG(int, window, 0, "register: observation window (0: server default)");
ABSL_FLAG(int, sinks, -1, "register: attention sinks (-1: server default)");
// generate
ABSL_FLAG(std::string, context, "", "generate: registered context to prepend");
ABSL_FLAG(std::string, input, "", "generate: the user input");
ABSL_FLAG(std::string, input_file, "", "generate: read the user input from this file ('-': stdin)");
ABSL_FLAG(int, max_tokens, 0, "generate: tokens to generate (0: server default)");
ABSL_FLAG(double, temperature, -1, "generate: temperature (0 = greedy; -1: server default)");
ABSL_FLAG(double, top_p, -1, "generate: nucleus sampling (-1: off)");
ABSL_FLAG(int, top_k, -1, "generate: top-k (-1: off)");
ABSL_FLAG(double, min_p, -1, "generate: min-p (-1: off)");
ABSL_FLAG(double, repetition_penalty, -1, "generate: repetition penalty (-1: off)");
ABSL_FLAG(int64_t, seed, -1, "generate: sampling seed (-1: random)");
ABSL_FLAG(squeeze::client::StopStrings, stop, {},
          "generate: stop strings, comma-separated; write a comma inside a string as \\, and a "
          "backslash as \\\\ (e.g. --stop='\\,,END' stops at \",\" or \"END\")");
ABSL_FLAG(std::string, stop_token_ids, "",
          "generate: comma-separated token ids that end the output");
ABSL_FLAG(int, logprobs, -1,
          "generate: print each generated token's log-probability and this many alternatives "
          "(0..20) to stderr after the text (-1: off)");
ABSL_FLAG(bool, ignore_eos, false, "generate: keep going after EOS");
ABSL_FLAG(std::string, mode, "",
          "generate: attention mode: squeezed | dense | recent | pages (default: auto)");
ABSL_FLAG(double, budget, -1, "generate: kept fraction of context keys (-1: server default)");
ABSL_FLAG(std::string, budget_policy, "",
          "generate: how the budget becomes a threshold: calibrated | per_step (default: the "
          "server's)");
ABSL_FLAG(double, mass, -1,
          "generate: keep clusters until this estimated attention mass instead of a budget");
ABSL_FLAG(int, query_block, -1,
          "generate: select the input per block of this many tokens (beyond the paper; -1: the "
          "server's, one selection per step)");
ABSL_FLAG(bool, estimate_tail, false,
          "generate: estimate the dropped clusters' attention from their centroids (beyond the "
          "paper; flat squeezed mode; CPU servers)");
ABSL_FLAG(bool, stats, true, "generate: print usage and timings to stderr at the end");
// chat
ABSL_FLAG(std::string, chat_document, "",
          "register: register the text as a chat document: 'system' (the system message) or "
          "'user' (opening the first user message)");
ABSL_FLAG(bool, chat, false,
          "generate: send the input as the user's chat message (rendered with the model's chat "
          "template)");
ABSL_FLAG(std::string, messages_file, "",
          "generate: a chat conversation, a JSON list of {\"role\": ..., \"content\": ...}");

namespace {

using squeeze::client::SqueezeClient;
namespace v1 = squeeze::v1;

int Fail(const grpc::Status& st) {
  std::cerr << "error: " << absl::StatusCodeToString(static_cast<absl::StatusCode>(st.error_code()))
            << ": " << st.error_message() << "\n";
  if (st.error_code() == grpc::StatusCode::UNAVAILABLE ||
      st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    std::cerr << "hint: is a Squeeze server listening at " << absl::GetFlag(FLAGS_server)
              << "? Give its address with --server=host:port.\n";
  }
  return 1;
}

int Usage(const std::string& why) {
  std::cerr << "usage error: " << why << "\nRun with --help for the commands and flags.\n";
  return 2;
}

// `path` "-" reads standard input.
bool ReadFile(const std::string& path, std::string* out) {
  if (path == "-") {
    std::stringstream ss;
    ss << std::cin.rdbuf();
    *out = ss.str();
    return !std::cin.bad();
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::stringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  return true;
}

bool ParseIds(const std::string& s, v1::TokenIds* ids) {
  for (absl::string_view part : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    int id = 0;
    if (!absl::SimpleAtoi(part, &id)) return false;
    ids->add_ids(id);
  }
  return ids->ids_size() > 0;
}

const char* StageName(v1::RegisterContextEvent::Stage s) {
  switch (s) {
    case v1::RegisterContextEvent::TOKENIZING:
      return "tokenizing";
    case v1::RegisterContextEvent::PREFILL:
      return "prefill";
    case v1::RegisterContextEvent::CLUSTERING:
      return "clustering";
    case v1::RegisterContextEvent::CALIBRATING:
      return "calibrating";
    case v1::RegisterContextEvent::PERSISTING:
      return "persisting";
    case v1::RegisterContextEvent::DONE:
      return "done";
    default:
      return "?";
  }
}

void PrintInfo(const v1::ContextInfo& c) {
  std::printf("%s\t%lld tokens\tkv %.1f MiB\tindex %s", c.name().c_str(),
              static_cast<long long>(c.num_tokens()), c.kv_bytes() / 1048576.0,
              c.index().present() ? "yes" : "no");
  if (c.index().present()) {
    std::printf(" (%lld centroids%s)", static_cast<long long>(c.index().num_centroids()),
                c.index().hierarchical() ? ", hierarchical" : "");
  }
  std::printf("\thash %.12s\n", c.content_hash().c_str());
}

// --chat_document: how the registered text opens a chat. False on a bad value.
bool SetChatDocument(v1::RegisterContextRequest* req) {
  const std::string role = absl::GetFlag(FLAGS_chat_document);
  if (role.empty()) return true;
  if (role != "system" && role != "user") return false;
  req->set_chat_document(role == "system" ? v1::RegisterContextRequest::SYSTEM_MESSAGE
                                          : v1::RegisterContextRequest::FIRST_USER_MESSAGE);
  return true;
}

// --messages_file, or --chat with the input as the user's message. Returns "" or why not.
std::string SetChatInput(const std::string& input, v1::Prompt* prompt) {
  const std::string file = absl::GetFlag(FLAGS_messages_file);
  if (file.empty()) {
    v1::ChatMessage* m = prompt->mutable_messages()->add_messages();
    m->set_role("user");
    m->set_content(input);
    return "";
  }
  std::string text;
  if (!ReadFile(file, &text)) return "cannot read --messages_file " + file;
  const auto st = google::protobuf::util::JsonStringToMessage("{\"messages\": " + text + "}",
                                                              prompt->mutable_messages());
  if (!st.ok()) return "--messages_file must hold a JSON list of {role, content}: " + st.ToString();
  return "";
}

int Register(SqueezeClient& client, const std::string& name) {
  v1::RegisterContextRequest req;
  req.set_name(name);
  std::string text;
  if (!absl::GetFlag(FLAGS_ids).empty()) {
    if (!ParseIds(absl::GetFlag(FLAGS_ids), req.mutable_content()->mutable_token_ids())) {
      return Usage("--ids must be comma-separated integers");
    }
  } else if (!absl::GetFlag(FLAGS_file).empty()) {
    if (!ReadFile(absl::GetFlag(FLAGS_file), &text)) {
      return Usage("cannot read --file " + absl::GetFlag(FLAGS_file));
    }
    req.mutable_content()->set_text(text);
  } else if (!absl::GetFlag(FLAGS_text).empty()) {
    req.mutable_content()->set_text(absl::GetFlag(FLAGS_text));
  } else {
    return Usage("register needs --file, --text or --ids");
  }
  if (!SetChatDocument(&req)) return Usage("--chat_document must be system or user");
  v1::IndexOptions* idx = req.mutable_index();
  if (absl::GetFlag(FLAGS_no_index)) {
    idx->set_disable(true);
  } else {
    if (absl::GetFlag(FLAGS_hierarchical)) idx->set_hierarchical(true);
    if (absl::GetFlag(FLAGS_centroid_fraction) > 0) {
      idx->set_centroid_fraction(absl::GetFlag(FLAGS_centroid_fraction));
    }
    if (absl::GetFlag(FLAGS_window) > 0) idx->set_window(absl::GetFlag(FLAGS_window));
    if (absl::GetFlag(FLAGS_sinks) >= 0) idx->set_sinks(absl::GetFlag(FLAGS_sinks));
  }
  v1::ContextInfo info;
  const bool tty = isatty(fileno(stderr));
  grpc::Status st = client.RegisterContext(
      req,
      [&](const v1::RegisterContextEvent& e) {
        const int width = 30;
        const int filled = static_cast<int>(e.progress() * width);
        std::string bar(filled, '#');
        bar.resize(width, '.');
        std::fprintf(stderr, "%s%-12s [%s] %3.0f%%", tty ? "\r" : "", StageName(e.stage()),
                     bar.c_str(), 100 * e.progress());
        if (e.tokens_total() > 0) {
          std::fprintf(stderr, "  %lld/%lld tokens", static_cast<long long>(e.tokens_done()),
                       static_cast<long long>(e.tokens_total()));
        }
        if (!tty) std::fprintf(stderr, "\n");
      },
      &info, absl::GetFlag(FLAGS_timeout));
  if (tty) std::fprintf(stderr, "\n");
  if (!st.ok()) return Fail(st);
  PrintInfo(info);
  const auto& t = info.timings();
  std::fprintf(stderr,
               "registered%s in %.2f s (prefill %.2f s, clustering %.2f s, calibration %.2f s)\n",
               info.reused() ? " (already present, reused)" : "", t.total_seconds(),
               t.prefill_seconds(), t.clustering_seconds(), t.calibration_seconds());
  return 0;
}

// One line per generated token: position, id, log-probability, then the alternatives id:logprob.
void PrintLogprobs(const std::vector<std::pair<int32_t, v1::TokenLogprob>>& tokens) {
  for (size_t i = 0; i < tokens.size(); ++i) {
    const auto& [id, lp] = tokens[i];
    std::fprintf(stderr, "logprob %zu\tid=%d\t%.4f", i, id, lp.logprob());
    for (const v1::TopLogprob& t : lp.top()) std::fprintf(stderr, "\t%d:%.4f", t.id(), t.logprob());
    std::fprintf(stderr, "\n");
  }
}

int Generate(SqueezeClient& client) {
  v1::GenerateRequest req;
  req.set_context(absl::GetFlag(FLAGS_context));
  std::string input = absl::GetFlag(FLAGS_input);
  if (!absl::GetFlag(FLAGS_ids).empty()) {
    if (!ParseIds(absl::GetFlag(FLAGS_ids), req.mutable_input()->mutable_token_ids())) {
      return Usage("--ids must be comma-separated integers");
    }
  } else if (!absl::GetFlag(FLAGS_messages_file).empty()) {
    if (const std::string why = SetChatInput("", req.mutable_input()); !why.empty()) {
      return Usage(why);
    }
  } else {
    if (!absl::GetFlag(FLAGS_input_file).empty() &&
        !ReadFile(absl::GetFlag(FLAGS_input_file), &input)) {
      return Usage("cannot read --input_file");
    }
    if (input.empty())
      return Usage("generate needs --input, --input_file, --messages_file or --ids");
    if (absl::GetFlag(FLAGS_chat)) {
      SetChatInput(input, req.mutable_input());
    } else {
      req.mutable_input()->set_text(input);
    }
  }
  if (absl::GetFlag(FLAGS_max_tokens) > 0) req.set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
  v1::SamplingOptions* s = req.mutable_sampling();
  if (absl::GetFlag(FLAGS_temperature) >= 0) s->set_temperature(absl::GetFlag(FLAGS_temperature));
  if (absl::GetFlag(FLAGS_top_p) >= 0) s->set_top_p(absl::GetFlag(FLAGS_top_p));
  if (absl::GetFlag(FLAGS_top_k) >= 0) s->set_top_k(absl::GetFlag(FLAGS_top_k));
  if (absl::GetFlag(FLAGS_min_p) >= 0) s->set_min_p(absl::GetFlag(FLAGS_min_p));
  if (absl::GetFlag(FLAGS_repetition_penalty) >= 0) {
    s->set_repetition_penalty(absl::GetFlag(FLAGS_repetition_penalty));
  }
  if (absl::GetFlag(FLAGS_seed) >= 0) s->set_seed(absl::GetFlag(FLAGS_seed));
  for (const auto& stop : absl::GetFlag(FLAGS_stop).values) req.add_stop(stop);
  if (!absl::GetFlag(FLAGS_stop_token_ids).empty()) {
    v1::TokenIds stop_ids;
    if (!ParseIds(absl::GetFlag(FLAGS_stop_token_ids), &stop_ids)) {
      return Usage("--stop_token_ids must be comma-separated integers");
    }
    *req.mutable_stop_token_ids() = stop_ids.ids();
  }
  const int logprobs = absl::GetFlag(FLAGS_logprobs);
  if (logprobs >= 0) req.set_logprobs(logprobs);
  req.set_ignore_eos(absl::GetFlag(FLAGS_ignore_eos));
  const std::string mode = absl::GetFlag(FLAGS_mode);
  if (mode == "squeezed") {
    req.mutable_attention()->set_mode(v1::AttentionOptions::SQUEEZED);
  } else if (mode == "dense") {
    req.mutable_attention()->set_mode(v1::AttentionOptions::DENSE);
  } else if (mode == "recent") {
    req.mutable_attention()->set_mode(v1::AttentionOptions::RECENT);
  } else if (mode == "pages") {
    req.mutable_attention()->set_mode(v1::AttentionOptions::PAGES);
  } else if (!mode.empty()) {
    return Usage("--mode must be squeezed, dense, recent or pages");
  }
  if (absl::GetFlag(FLAGS_budget) >= 0) {
    req.mutable_attention()->set_budget(absl::GetFlag(FLAGS_budget));
  }
  if (absl::GetFlag(FLAGS_mass) >= 0) req.mutable_attention()->set_mass(absl::GetFlag(FLAGS_mass));
  if (absl::GetFlag(FLAGS_query_block) >= 0) {
    req.mutable_attention()->set_query_block(absl::GetFlag(FLAGS_query_block));
  }
  if (absl::GetFlag(FLAGS_estimate_tail)) req.mutable_attention()->set_estimate_tail(true);
  if (const std::string policy = absl::GetFlag(FLAGS_budget_policy); policy == "calibrated") {
    req.mutable_attention()->set_budget_policy(v1::AttentionOptions::CALIBRATED);
  } else if (policy == "per_step") {
    req.mutable_attention()->set_budget_policy(v1::AttentionOptions::PER_STEP);
  } else if (!policy.empty()) {
    return Usage("--budget_policy must be calibrated or per_step");
  }
  v1::GenerateResponse last;
  std::vector<std::pair<int32_t, v1::TokenLogprob>> token_logprobs;
  grpc::Status st = client.Generate(
      req,
      [&](const v1::GenerateResponse& r) {
        for (int i = 0; i < r.logprobs_size() && i < r.token_ids_size(); ++i) {
          token_logprobs.emplace_back(r.token_ids(i), r.logprobs(i));
        }
        std::fwrite(r.text().data(), 1, r.text().size(), stdout);
        std::fflush(stdout);
        if (r.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) last = r;
        return true;
      },
      absl::GetFlag(FLAGS_timeout));
  std::printf("\n");
  std::fflush(stdout);
  if (!st.ok()) return Fail(st);
  if (logprobs >= 0) PrintLogprobs(token_logprobs);
  if (absl::GetFlag(FLAGS_stats)) {
    const auto& u = last.usage();
    const auto& t = last.timings();
    std::fprintf(stderr,
                 "[%s] finish=%s context=%lld (reused %lld) query=%lld completion=%lld "
                 "kv_budget=%.3f ttft=%.3fs total=%.3fs\n",
                 v1::AttentionOptions::Mode_Name(last.attention_mode()).c_str(),
                 v1::FinishReason_Name(last.finish_reason()).c_str(),
                 static_cast<long long>(u.context_tokens()),
                 static_cast<long long>(u.context_tokens_reused()),
                 static_cast<long long>(u.query_tokens()),
                 static_cast<long long>(u.completion_tokens()), u.kv_budget(),
                 t.time_to_first_token_seconds(), t.total_seconds());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "command-line client for a Squeeze server.\n"
      "  squeeze-cli register NAME (--file=F|--text=T|--ids=..) [index flags]\n"
      "  squeeze-cli generate [--context=NAME] (--input=T|--input_file=F|--ids=..) [flags]\n"
      "  squeeze-cli get NAME | list | delete NAME | tokenize TEXT | health\n"
      "--file=- and --input_file=- read standard input.");
  // --help and --helpshort list this program's flags (absl's default matches only files named
  // after the binary, and found none).
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "client/cli.cc");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() < 2) return Usage("missing command");
  const std::string cmd = args[1];
  squeeze::client::ClientOptions options;
  options.ca_file = absl::GetFlag(FLAGS_tls_ca_file);
  options.cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  options.key_file = absl::GetFlag(FLAGS_tls_key_file);
  options.tls = absl::GetFlag(FLAGS_tls) || !options.ca_file.empty() ||
                !options.cert_file.empty() || !options.key_file.empty();
  // A key on the command line would show in `ps`: it comes from a file or the environment.
  if (const std::string path = absl::GetFlag(FLAGS_api_key_file); !path.empty()) {
    if (!ReadFile(path, &options.api_key)) return Usage("cannot read --api_key_file " + path);
    options.api_key = std::string(absl::StripAsciiWhitespace(options.api_key));
  } else if (const char* env = std::getenv("SQUEEZE_API_KEY"); env != nullptr) {
    options.api_key = env;
  }
  auto channel = squeeze::client::CreateChannel(absl::GetFlag(FLAGS_server), options);
  if (!channel.ok()) return Usage(std::string(channel.status().message()));
  SqueezeClient client(*channel, options.api_key);
  auto need_arg = [&](const char*) {
    return args.size() >= 3 ? std::string(args[2]) : std::string();
  };
  if (cmd == "register") {
    const std::string name = need_arg("NAME");
    if (name.empty()) return Usage("register needs a NAME");
    return Register(client, name);
  }
  if (cmd == "generate") return Generate(client);
  if (cmd == "get") {
    const std::string name = need_arg("NAME");
    if (name.empty()) return Usage("get needs a NAME");
    v1::ContextInfo info;
    grpc::Status st = client.GetContext(name, &info);
    if (!st.ok()) return Fail(st);
    PrintInfo(info);
    return 0;
  }
  if (cmd == "list") {
    v1::ListContextsResponse resp;
    grpc::Status st = client.ListContexts(&resp);
    if (!st.ok()) return Fail(st);
    for (const auto& c : resp.contexts()) PrintInfo(c);
    return 0;
  }
  if (cmd == "delete") {
    const std::string name = need_arg("NAME");
    if (name.empty()) return Usage("delete needs a NAME");
    grpc::Status st = client.DeleteContext(name);
    if (!st.ok()) return Fail(st);
    std::printf("deleted %s\n", name.c_str());
    return 0;
  }
  if (cmd == "tokenize") {
    const std::string text = need_arg("TEXT");
    v1::TokenizeResponse resp;
    grpc::Status st = client.Tokenize(text, false, &resp);
    if (!st.ok()) return Fail(st);
    for (int i = 0; i < resp.ids_size(); ++i) {
      std::printf("%d\t%s\n", resp.ids(i), resp.pieces(i).c_str());
    }
    return 0;
  }
  if (cmd == "health") {
    bool serving = false;
    grpc::Status st = client.CheckHealth("", &serving);
    if (!st.ok()) return Fail(st);
    std::printf("%s\n", serving ? "SERVING" : "NOT_SERVING");
    return serving ? 0 : 1;
  }
  return Usage("unknown command '" + cmd + "'");
}
