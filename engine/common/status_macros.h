// Small helpers for absl::Status / absl::StatusOr propagation.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define SQZ_CONCAT_INNER(a, b) a##b
#define SQZ_CONCAT(a, b) SQZ_CONCAT_INNER(a, b)

// Returns from the enclosing function if `expr` yields a non-OK status.
#define RETURN_IF_ERROR(expr)                  \
  do {                                         \
    ::absl::Status sqz_status_ = (expr);       \
    if (!sqz_status_.ok()) return sqz_status_; \
  } while (0)

// ASSIGN_OR_RETURN(lhs, expr): evaluates a StatusOr, returns on error, else assigns.
#define ASSIGN_OR_RETURN(lhs, expr) \
  SQZ_ASSIGN_OR_RETURN_IMPL(SQZ_CONCAT(sqz_statusor_, __LINE__), lhs, expr)
#define SQZ_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()
