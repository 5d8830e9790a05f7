// The OpenAI wire format of server/openai_gateway: request JSON -> squeeze.v1.GenerateRequest
// (then validated by ConvertGenerateRequest like any gRPC request), engine events -> response
// and stream-chunk JSON, statuses -> error objects and HTTP codes.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/api/types.h"
#include "nlohmann/json.hpp"
#include "server/openai_gateway.h"
#include "squeeze/v1/squeeze.pb.h"

namespace squeeze::server::openai {

struct ParsedRequest {
  v1::GenerateRequest generate;
  bool stream = false;
  bool chat = false;
  bool logprobs = false;  // completions: `logprobs` >= 0 given; chat: `logprobs: true`
};

// INVALID_ARGUMENT for malformed fields, UNIMPLEMENTED for OpenAI features the server lacks.
// Chat `messages` go to Generate's input.messages: the engine renders them with the model's chat
// template (FAILED_PRECONDITION, from Generate, when the model has none).
absl::StatusOr<ParsedRequest> ParseRequest(const nlohmann::json& body, bool chat);

int HttpStatus(const absl::Status& status);
nlohmann::json ErrorBody(const absl::Status& status);

// Token text for logprobs (bytes as they would stream; may be part of a UTF-8 character).
using TokenText = std::function<std::string(int32_t)>;

// One response (stream: one chunk) for `text` and `logprobs` of the tokens `ids`. `final`
// (the engine's last event) adds finish_reason and usage.
nlohmann::json ResponseBody(const ParsedRequest& request, const std::string& id,
                            const std::string& model, int64_t created, const std::string& text,
                            const std::vector<int32_t>& ids,
                            const std::vector<TokenLogprobs>& logprobs, const GenerateEvent* final,
                            bool chunk, bool first_chunk, const TokenText& token_text);

// JSON text that never throws on invalid UTF-8 (replaced by U+FFFD).
std::string Dump(const nlohmann::json& j);

}  // namespace squeeze::server::openai
