// libFuzzer target: request conversion (server/convert.cc) from wire bytes, as the service does
// it: parse the protobuf, then validate and convert. The first byte picks the request type.
#include <cstddef>
#include <cstdint>

#include "google/protobuf/stubs/logging.h"
#include "server/convert.h"
#include "squeeze/v1/squeeze.pb.h"

namespace {

// Limits small enough for inputs under run.sh's -max_len to pass each one (the service sets
// them from the model's window; the checks are the same at any size).
squeeze::server::RequestLimits Limits() {
  squeeze::server::RequestLimits limits;
  limits.max_input_bytes = 512;
  limits.max_input_tokens = 64;
  return limits;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Invalid UTF-8 in a string field is logged by protobuf on every such input: silence it.
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const squeeze::server::RequestLimits limits = Limits();
  const char* bytes = reinterpret_cast<const char*>(data + 1);
  const int n = static_cast<int>(size - 1);
  switch (data[0] % 3) {
    case 0: {
      squeeze::v1::GenerateRequest req;
      if (req.ParseFromArray(bytes, n)) (void)squeeze::server::ConvertGenerateRequest(req, limits);
      break;
    }
    case 1: {
      squeeze::v1::RegisterContextRequest req;
      if (req.ParseFromArray(bytes, n)) (void)squeeze::server::ConvertRegisterRequest(req, limits);
      break;
    }
    default: {
      squeeze::v1::GetContextRequest req;
      if (req.ParseFromArray(bytes, n)) (void)squeeze::server::ValidateContextName(req.name());
      break;
    }
  }
  return 0;
}
