// The backend factory's choice without a GPU (engine/backend/backend_factory.h): --device=cuda
// refuses an attention shape the CUDA kernels do not run, with the reason; --device=auto falls
// back to the CPU and says why, in the description and in a warning. The shapes the CUDA backend
// takes (CudaBackend::Supports): head dim 64, 96 or 128 and 1 to 16 query heads per KV head.
#include "engine/backend/backend_factory.h"

#include <gtest/gtest.h>

#include <memory>
#include <sstream>
#include <string>

#include "absl/status/status.h"
#include "spdlog/sinks/ostream_sink.h"
#include "spdlog/spdlog.h"

namespace squeeze {
namespace {

struct Choice {
  absl::Status status;
  std::string chosen, description, log;
};

// MakeBackend with the default logger captured.
Choice Make(std::string_view device, BackendRequirements needs) {
  std::ostringstream log;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(log);
  sink->set_pattern("%l %v");
  const std::shared_ptr<spdlog::logger> previous = spdlog::default_logger();
  spdlog::set_default_logger(std::make_shared<spdlog::logger>("backend_factory_test", sink));
  Choice c;
  auto backend = MakeBackend(device, needs, &c.chosen, &c.description);
  spdlog::set_default_logger(previous);
  c.status = backend.status();
  c.log = log.str();
  return c;
}

bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

TEST(BackendFactory, CpuWhenAskedAndUnknownDevicesRefused) {
  const Choice cpu = Make("cpu", {64, 8, 2});
  ASSERT_TRUE(cpu.status.ok()) << cpu.status;
  EXPECT_EQ(cpu.chosen, "cpu");
  EXPECT_TRUE(Contains(cpu.description, "requested")) << cpu.description;
  EXPECT_TRUE(cpu.log.empty()) << cpu.log;
  EXPECT_EQ(Make("tpu", {64, 8, 2}).status.code(), absl::StatusCode::kInvalidArgument);
}

#if SQUEEZE_HAVE_CUDA

// A shape the CUDA backend takes: --device=cuda fails only for want of a device (or succeeds on
// a machine with one), never for the shape.
void ExpectCudaTakes(int head_dim, int heads, int kv_heads) {
  const Choice c = Make("cuda", {head_dim, heads, kv_heads});
  EXPECT_NE(c.status.code(), absl::StatusCode::kInvalidArgument)
      << "d=" << head_dim << " Hq=" << heads << " Hkv=" << kv_heads << ": " << c.status;
  if (!c.status.ok()) {
    EXPECT_EQ(c.status.code(), absl::StatusCode::kFailedPrecondition) << c.status;
    EXPECT_TRUE(Contains(std::string(c.status.message()), "no CUDA device")) << c.status;
  }
}

// A shape it refuses: --device=cuda says why; --device=auto runs on the CPU and warns why.
void ExpectCudaRefuses(int head_dim, int heads, int kv_heads, const std::string& why) {
  SCOPED_TRACE(::testing::Message() << "d=" << head_dim << " Hq=" << heads << " Hkv=" << kv_heads);
  const Choice cuda = Make("cuda", {head_dim, heads, kv_heads});
  EXPECT_EQ(cuda.status.code(), absl::StatusCode::kInvalidArgument) << cuda.status;
  EXPECT_TRUE(Contains(std::string(cuda.status.message()), why)) << cuda.status;
  const Choice automatic = Make("auto", {head_dim, heads, kv_heads});
  ASSERT_TRUE(automatic.status.ok()) << automatic.status;
  EXPECT_EQ(automatic.chosen, "cpu");
  EXPECT_TRUE(Contains(automatic.description, why)) << automatic.description;
  EXPECT_TRUE(Contains(automatic.log, "warning")) << automatic.log;
  EXPECT_TRUE(Contains(automatic.log, why)) << automatic.log;
}

TEST(BackendFactory, CudaTakesHeadDims64To128AndGroups1To16) {
  for (const int d : {64, 96, 128}) {
    for (int group = 1; group <= 16; ++group) {
      for (const int kv_heads : {1, 2, 8}) ExpectCudaTakes(d, group * kv_heads, kv_heads);
    }
  }
}

TEST(BackendFactory, CudaRefusesOtherShapesWithTheReason) {
  ExpectCudaRefuses(32, 4, 1, "head_dim");
  ExpectCudaRefuses(80, 8, 2, "head_dim");
  ExpectCudaRefuses(256, 8, 8, "head_dim");
  ExpectCudaRefuses(128, 17, 1, "1 to 16 query heads per KV head");
  ExpectCudaRefuses(64, 64, 2, "1 to 16 query heads per KV head");
  ExpectCudaRefuses(128, 12, 8, "multiple of the KV heads");
}

TEST(BackendFactory, AutoWithoutADeviceWarns) {
  // On a machine with a GPU the supported shape runs on it; without one, the fallback is said.
  const Choice c = Make("auto", {128, 28, 4});
  ASSERT_TRUE(c.status.ok()) << c.status;
  if (c.chosen == "cpu") {
    EXPECT_TRUE(Contains(c.description, "no CUDA device")) << c.description;
    EXPECT_TRUE(Contains(c.log, "warning")) << c.log;
  } else {
    EXPECT_EQ(c.chosen, "cuda");
  }
}

#else  // !SQUEEZE_HAVE_CUDA

TEST(BackendFactory, CudaRefusedAndAutoWarnsWithoutTheCudaBackend) {
  const Choice cuda = Make("cuda", {128, 32, 8});
  EXPECT_EQ(cuda.status.code(), absl::StatusCode::kFailedPrecondition) << cuda.status;
  const Choice automatic = Make("auto", {128, 32, 8});
  ASSERT_TRUE(automatic.status.ok()) << automatic.status;
  EXPECT_EQ(automatic.chosen, "cpu");
  EXPECT_TRUE(Contains(automatic.log, "warning")) << automatic.log;
}

#endif  // SQUEEZE_HAVE_CUDA

}  // namespace
}  // namespace squeeze
