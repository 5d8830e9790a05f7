// Requests parsed and responses serialized by the service itself. gRPC's generated handlers
// answer a request that does not parse (garbage, truncated, a string field that is not UTF-8)
// with UNIMPLEMENTED and no message, which clients read as "method missing"; the raw handlers
// parse with these and answer INVALID_ARGUMENT saying what was wrong.
#pragma once

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace squeeze::server {

template <typename Message>
absl::Status ParseRequest(const grpc::ByteBuffer& buffer, Message* message) {
  grpc::ByteBuffer copy(buffer);  // the reader consumes its buffer; copies share the slices
  grpc::ProtoBufferReader reader(&copy);
  if (!reader.status().ok() || !message->ParseFromZeroCopyStream(&reader)) {
    return absl::InvalidArgumentError(
        absl::StrCat("malformed request: not a valid ", Message::descriptor()->full_name(),
                     " (truncated or garbage protobuf, or a string field that is not UTF-8)"));
  }
  return absl::OkStatus();
}

template <typename Message>
grpc::ByteBuffer ToByteBuffer(const Message& message) {
  grpc::ByteBuffer buffer;
  bool own = false;
  grpc::SerializationTraits<Message>::Serialize(message, &buffer, &own);
  return buffer;
}

}  // namespace squeeze::server
