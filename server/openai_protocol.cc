#include "server/openai_protocol.h"

#include "absl/strings/str_cat.h"

namespace squeeze::server::openai {
namespace {

using nlohmann::json;

absl::Status Invalid(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("'", field, "' ", why));
}

// Reads an optional number field into `set` when present; INVALID_ARGUMENT when not a number.
template <typename T, typename Setter>
absl::Status Number(const json& body, const char* field, Setter set) {
  auto it = body.find(field);
  if (it == body.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number()) return Invalid(field, "must be a number");
  set(it->get<T>());
  return absl::OkStatus();
}

absl::StatusOr<std::string> MessageContent(const json& content) {
  if (content.is_string()) return content.get<std::string>();
  if (content.is_array()) {  // [{"type": "text", "text": ...}, ...]
    std::string text;
    for (const json& part : content) {
      if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
          !part["text"].is_string()) {
        return absl::UnimplementedError("only text message parts are supported");
      }
      text += part["text"].get<std::string>();
    }
    return text;
  }
  return absl::InvalidArgumentError("'messages[].content' must be a string or text parts");
}

// `messages` into Generate's input.messages.
absl::Status Messages(const json& body, v1::ChatMessages* out) {
  auto it = body.find("messages");
  if (it == body.end() || !it->is_array() || it->empty()) {
    return Invalid("messages", "must be a non-empty array");
  }
  for (const json& m : *it) {
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
      return Invalid("messages", "entries need a string 'role'");
    }
    const std::string role = m["role"].get<std::string>();
    if (role != "system" && role != "user" && role != "assistant" && role != "tool" &&
        role != "developer") {
      return Invalid("messages", absl::StrCat("has an unknown role '", role, "'"));
    }
    if (!m.contains("content")) return Invalid("messages", "entries need 'content'");
    auto content = MessageContent(m["content"]);
    if (!content.ok()) return content.status();
    v1::ChatMessage* message = out->add_messages();
    message->set_role(role == "developer" ? "system" : role);
    message->set_content(*content);
  }
  return absl::OkStatus();
}

absl::Status Unsupported(const json& body) {
  auto has = [&](const char* f) { return body.contains(f) && !body[f].is_null(); };
  if (has("n") && (!body["n"].is_number_integer() || body["n"].get<int>() != 1)) {
    return absl::UnimplementedError("'n' > 1 is not supported; send several requests");
  }
  if (has("best_of") && (!body["best_of"].is_number_integer() || body["best_of"].get<int>() != 1)) {
    return absl::UnimplementedError("'best_of' is not supported");
  }
  if (has("echo") && body["echo"] != false) {
    return absl::UnimplementedError("'echo' is not supported");
  }
  if (has("suffix")) return absl::UnimplementedError("'suffix' is not supported");
  if (has("logit_bias") && !body["logit_bias"].empty()) {
    return absl::UnimplementedError("'logit_bias' is not supported");
  }
  if (has("tools") || has("functions")) {
    return absl::UnimplementedError("tool and function calling are not supported");
  }
  return absl::OkStatus();
}

const char* FinishReasonName(FinishReason r) {
  return r == FinishReason::kLength ? "length" : "stop";
}

const char* ModeName(AttentionMode m) {
  switch (m) {
    case AttentionMode::kSqueezed:
      return "squeezed";
    case AttentionMode::kDense:
      return "dense";
    case AttentionMode::kRecent:
      return "recent";
    case AttentionMode::kPages:
      return "pages";
    case AttentionMode::kAuto:
      break;
  }
  return "auto";
}

json ByteArray(const std::string& s) {
  json bytes = json::array();
  for (unsigned char c : s) bytes.push_back(static_cast<int>(c));
  return bytes;
}

}  // namespace

absl::StatusOr<ParsedRequest> ParseRequest(const json& body, bool chat) {
  if (!body.is_object()) return absl::InvalidArgumentError("the body must be a JSON object");
  if (absl::Status st = Unsupported(body); !st.ok()) return st;
  ParsedRequest out;
  out.chat = chat;
  v1::GenerateRequest& g = out.generate;
  if (auto it = body.find("context"); it != body.end() && !it->is_null()) {
    if (!it->is_string()) return Invalid("context", "must be a registered context's name");
    g.set_context(it->get<std::string>());
  }
  if (chat) {
    if (absl::Status st = Messages(body, g.mutable_input()->mutable_messages()); !st.ok()) {
      return st;
    }
  } else {
    auto it = body.find("prompt");
    if (it == body.end() || it->is_null()) return Invalid("prompt", "is required");
    if (it->is_string()) {
      g.mutable_input()->set_text(it->get<std::string>());
    } else if (it->is_array() && !it->empty() && (*it)[0].is_number_integer()) {
      for (const json& id : *it) {
        if (!id.is_number_integer()) return Invalid("prompt", "token ids must be integers");
        g.mutable_input()->mutable_token_ids()->add_ids(id.get<int32_t>());
      }
    } else if (it->is_array() && it->size() == 1 && (*it)[0].is_string()) {
      g.mutable_input()->set_text((*it)[0].get<std::string>());
    } else {
      return absl::UnimplementedError("one prompt per request (a string or token ids)");
    }
  }
  if (auto it = body.find("stream"); it != body.end() && !it->is_null()) {
    if (!it->is_boolean()) return Invalid("stream", "must be true or false");
    out.stream = it->get<bool>();
  }
  v1::SamplingOptions* s = g.mutable_sampling();
  absl::Status st;
  const char* max_field =
      chat && body.contains("max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  for (absl::Status part : {
           Number<int>(body, max_field, [&](int v) { g.set_max_tokens(v); }),
           Number<float>(body, "temperature", [&](float v) { s->set_temperature(v); }),
           Number<float>(body, "top_p", [&](float v) { s->set_top_p(v); }),
           Number<int>(body, "top_k", [&](int v) { s->set_top_k(v); }),
           Number<float>(body, "min_p", [&](float v) { s->set_min_p(v); }),
           Number<float>(body, "presence_penalty", [&](float v) { s->set_presence_penalty(v); }),
           Number<float>(body, "frequency_penalty", [&](float v) { s->set_frequency_penalty(v); }),
           Number<float>(body, "repetition_penalty",
                         [&](float v) { s->set_repetition_penalty(v); }),
           Number<uint64_t>(body, "seed", [&](uint64_t v) { s->set_seed(v); }),
           Number<double>(body, "budget", [&](double v) { g.mutable_attention()->set_budget(v); }),
           Number<double>(body, "mass", [&](double v) { g.mutable_attention()->set_mass(v); }),
           Number<int>(body, "query_block",
                       [&](int v) { g.mutable_attention()->set_query_block(v); }),
       }) {
    if (!part.ok()) return part;
  }
  if (auto it = body.find("stop"); it != body.end() && !it->is_null()) {
    if (it->is_string()) {
      g.add_stop(it->get<std::string>());
    } else if (it->is_array()) {
      for (const json& v : *it) {
        if (!v.is_string()) return Invalid("stop", "must be a string or an array of strings");
        g.add_stop(v.get<std::string>());
      }
    } else {
      return Invalid("stop", "must be a string or an array of strings");
    }
  }
  if (auto it = body.find("stop_token_ids"); it != body.end() && !it->is_null()) {
    if (!it->is_array()) return Invalid("stop_token_ids", "must be an array of token ids");
    for (const json& v : *it) {
      if (!v.is_number_integer()) return Invalid("stop_token_ids", "must hold integers");
      g.add_stop_token_ids(v.get<int32_t>());
    }
  }
  for (const char* flag : {"ignore_eos", "hierarchical", "estimate_tail"}) {
    if (auto it = body.find(flag); it != body.end() && !it->is_null()) {
      if (!it->is_boolean()) return Invalid(flag, "must be true or false");
      if (std::string(flag) == "ignore_eos") {
        g.set_ignore_eos(it->get<bool>());
      } else if (std::string(flag) == "hierarchical") {
        g.mutable_attention()->set_hierarchical(it->get<bool>());
      } else {
        g.mutable_attention()->set_estimate_tail(it->get<bool>());
      }
    }
  }
  if (auto it = body.find("attention_mode"); it != body.end() && !it->is_null()) {
    const std::string mode = it->is_string() ? it->get<std::string>() : "";
    if (mode == "squeezed") {
      g.mutable_attention()->set_mode(v1::AttentionOptions::SQUEEZED);
    } else if (mode == "dense") {
      g.mutable_attention()->set_mode(v1::AttentionOptions::DENSE);
    } else if (mode == "recent") {
      g.mutable_attention()->set_mode(v1::AttentionOptions::RECENT);
    } else if (mode == "pages") {
      g.mutable_attention()->set_mode(v1::AttentionOptions::PAGES);
    } else {
      return Invalid("attention_mode", "must be squeezed, dense, recent or pages");
    }
  }
  if (auto it = body.find("budget_policy"); it != body.end() && !it->is_null()) {
    const std::string policy = it->is_string() ? it->get<std::string>() : "";
    if (policy == "calibrated") {
      g.mutable_attention()->set_budget_policy(v1::AttentionOptions::CALIBRATED);
    } else if (policy == "per_step") {
      g.mutable_attention()->set_budget_policy(v1::AttentionOptions::PER_STEP);
    } else {
      return Invalid("budget_policy", "must be calibrated or per_step");
    }
  }
  // Completions: `logprobs` = number of alternatives. Chat: `logprobs` true + `top_logprobs`.
  if (auto it = body.find("logprobs"); it != body.end() && !it->is_null()) {
    if (chat) {
      if (!it->is_boolean()) return Invalid("logprobs", "must be true or false");
      out.logprobs = it->get<bool>();
      int top = 0;
      if (auto t = body.find("top_logprobs"); t != body.end() && !t->is_null()) {
        if (!t->is_number_integer()) return Invalid("top_logprobs", "must be an integer");
        top = t->get<int>();
      }
      if (out.logprobs) g.set_logprobs(top);
    } else {
      if (!it->is_number_integer()) return Invalid("logprobs", "must be an integer");
      out.logprobs = true;
      g.set_logprobs(it->get<int>());
    }
  }
  return out;
}

int HttpStatus(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kAborted:
      return 409;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kCancelled:
      return 499;
    case absl::StatusCode::kUnimplemented:
      return 501;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    default:
      return 500;
  }
}

json ErrorBody(const absl::Status& status) {
  const int http = HttpStatus(status);
  const char* type = http == 429   ? "rate_limit_error"
                     : http == 404 ? "not_found_error"
                     : http < 500  ? "invalid_request_error"
                                   : "server_error";
  return json{{"error",
               {{"message", std::string(status.message())},
                {"type", type},
                {"param", nullptr},
                {"code", absl::StatusCodeToString(status.code())}}}};
}

json ResponseBody(const ParsedRequest& request, const std::string& id, const std::string& model,
                  int64_t created, const std::string& text, const std::vector<int32_t>& ids,
                  const std::vector<TokenLogprobs>& logprobs, const GenerateEvent* final,
                  bool chunk, bool first_chunk, const TokenText& token_text) {
  json choice = {{"index", 0}};
  if (request.chat) {
    json message = {{"content", text}};
    if (!chunk || first_chunk) message["role"] = "assistant";
    choice[chunk ? "delta" : "message"] = std::move(message);
  } else {
    choice["text"] = text;
  }
  choice["finish_reason"] = final ? json(FinishReasonName(final->finish_reason)) : json(nullptr);
  if (!request.logprobs) {
    choice["logprobs"] = nullptr;
  } else if (request.chat) {
    json content = json::array();
    for (size_t i = 0; i < logprobs.size() && i < ids.size(); ++i) {
      const std::string tok = token_text(ids[i]);
      json top = json::array();
      for (const auto& [alt, lp] : logprobs[i].top) {
        const std::string alt_text = token_text(alt);
        top.push_back({{"token", alt_text}, {"logprob", lp}, {"bytes", ByteArray(alt_text)}});
      }
      content.push_back({{"token", tok},
                         {"logprob", logprobs[i].logprob},
                         {"bytes", ByteArray(tok)},
                         {"top_logprobs", std::move(top)}});
    }
    choice["logprobs"] = {{"content", std::move(content)}};
  } else {
    json tokens = json::array(), token_logprobs = json::array(), top_logprobs = json::array();
    for (size_t i = 0; i < logprobs.size() && i < ids.size(); ++i) {
      tokens.push_back(token_text(ids[i]));
      token_logprobs.push_back(logprobs[i].logprob);
      json top = json::object();
      for (const auto& [alt, lp] : logprobs[i].top) top[token_text(alt)] = lp;
      top_logprobs.push_back(std::move(top));
    }
    choice["logprobs"] = {{"tokens", std::move(tokens)},
                          {"token_logprobs", std::move(token_logprobs)},
                          {"top_logprobs", std::move(top_logprobs)}};
  }
  json body = {{"id", id},
               {"object", request.chat ? (chunk ? "chat.completion.chunk" : "chat.completion")
                                       : "text_completion"},
               {"created", created},
               {"model", model},
               {"choices", json::array({std::move(choice)})}};
  if (final) {
    const GenerateUsage& u = final->usage;
    body["usage"] = {{"prompt_tokens", u.context_tokens + u.query_tokens},
                     {"completion_tokens", u.completion_tokens},
                     {"total_tokens", u.context_tokens + u.query_tokens + u.completion_tokens}};
    // What only Squeeze reports: the fixed context reused and the realised KV budget.
    body["squeeze"] = {{"context_tokens", u.context_tokens},
                       {"context_tokens_reused", u.context_tokens_reused},
                       {"query_tokens", u.query_tokens},
                       {"kv_budget", u.kv_budget},
                       {"attention_mode", ModeName(final->mode_used)},
                       {"time_to_first_token_seconds", final->timings.ttft_seconds}};
  }
  return body;
}

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

}  // namespace squeeze::server::openai
