// The one place where engine statuses become gRPC statuses.
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace squeeze::server {

grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace squeeze::server
