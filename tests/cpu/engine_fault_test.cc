// How the engine treats backend failures (the CUDA backend's two kinds, simulated on the CPU
// backend): out of memory in a step fails that step's requests with RESOURCE_EXHAUSTED and the
// engine keeps serving; any other fault (a CUDA error) fails the step's requests with INTERNAL,
// marks the engine faulted (the server turns health NOT_SERVING through the fault handler) and
// every later request gets UNAVAILABLE. Nothing crashes.
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <string>

#include "absl/synchronization/notification.h"
#include "engine/backend/cpu/cpu_backend.h"
#include "engine/model/llama_model.h"
#include "engine/model/weights.h"
#include "engine/scheduler/engine.h"
#include "engine/store/context_store.h"
#include "engine/tokenizer/tokenizer.h"

namespace squeeze {
namespace {

// The CPU backend with switchable failures.
class FlakyBackend final : public CpuBackend {
 public:
  std::atomic<bool> out_of_memory{false};
  std::atomic<bool> fault{false};
  std::atomic<bool> tail{true};

  bool estimates_tail() const override { return tail.load(); }
  absl::StatusOr<std::unique_ptr<Buffer>> Allocate(size_t bytes) override {
    if (out_of_memory.load()) return absl::ResourceExhaustedError("test: device memory is full");
    return CpuBackend::Allocate(bytes);
  }
  absl::Status Synchronize() override {
    if (fault.load()) return absl::InternalError("test: an illegal memory access was encountered");
    return CpuBackend::Synchronize();
  }
};

struct Result {
  absl::Status admission;  // what Generate returned
  absl::Status final;      // the final event's status
};

class EngineFaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string dir = SQUEEZE_TEST_MODEL_DIR;
    auto config = LoadModelConfig(dir);
    ASSERT_TRUE(config.ok()) << config.status();
    auto weights = LoadLlamaWeights(dir, *config);
    ASSERT_TRUE(weights.ok()) << weights.status();
    auto tokenizer = LoadTokenizer(dir);
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    auto backend = std::make_unique<FlakyBackend>();
    backend_ = backend.get();
    auto model = LlamaModel::Create(*config, std::move(*weights), std::move(backend));
    ASSERT_TRUE(model.ok()) << model.status();
    const HostKvFormat kv_format{(*model)->kv_shape(), (*model)->backend().kv_dtype()};
    engine_ = std::make_unique<Engine>(EngineOptions{}, std::move(*model), std::move(*tokenizer),
                                       std::make_unique<ContextStore>("", "test", 0, kv_format));
    engine_->SetFaultHandler([this](const absl::Status& why) {
      ++fault_calls_;
      fault_message_ = std::string(why.message());
    });
    engine_->Start();
  }
  void TearDown() override {
    if (engine_) engine_->Shutdown(absl::ZeroDuration());
  }

  Result Generate(bool estimate_tail = false) {
    GenerateRequest req;
    if (estimate_tail) req.attention.estimate_tail = true;
    req.input.text = "hello world";
    req.sampling.max_tokens = 4;
    Result r;
    auto done = std::make_shared<absl::Notification>();
    auto final_status = std::make_shared<absl::Status>();
    auto handle = engine_->Generate(std::move(req), [done, final_status](GenerateEvent e) {
      if (!e.final) return;
      *final_status = e.status;
      done->Notify();
    });
    r.admission = handle.status();
    if (!handle.ok()) return r;
    EXPECT_TRUE(done->WaitForNotificationWithTimeout(absl::Seconds(30)));
    r.final = *final_status;
    return r;
  }

  // Registers `text` as `name` (no index); returns the final status.
  absl::Status Register(const std::string& name, const std::string& text) {
    RegisterRequest req;
    req.name = name;
    req.content.text = text;
    req.build_index = false;
    auto done = std::make_shared<absl::Notification>();
    auto final_status = std::make_shared<absl::Status>();
    auto handle = engine_->Register(std::move(req), [done, final_status](RegisterEvent e) {
      if (!e.final) return;
      *final_status = e.status;
      done->Notify();
    });
    if (!handle.ok()) return handle.status();
    EXPECT_TRUE(done->WaitForNotificationWithTimeout(absl::Seconds(30)));
    return *final_status;
  }

  FlakyBackend* backend_ = nullptr;
  std::unique_ptr<Engine> engine_;
  std::atomic<int> fault_calls_{0};
  std::string fault_message_;
};

TEST_F(EngineFaultTest, OutOfMemoryFailsTheStepAndTheEngineKeepsServing) {
  ASSERT_TRUE(Generate().final.ok());
  backend_->out_of_memory = true;
  const Result r = Generate();
  ASSERT_TRUE(r.admission.ok()) << r.admission;
  EXPECT_EQ(r.final.code(), absl::StatusCode::kResourceExhausted) << r.final;
  EXPECT_NE(r.final.message().find("memory is full"), std::string::npos) << r.final;
  EXPECT_FALSE(engine_->faulted());
  EXPECT_EQ(fault_calls_.load(), 0);
  backend_->out_of_memory = false;
  EXPECT_TRUE(Generate().final.ok());
}

TEST_F(EngineFaultTest, RegistrationOutOfMemoryIsResourceExhaustedNotCancelled) {
  backend_->out_of_memory = true;
  const absl::Status st = Register("doc", "the access code of Ada is 4242. more text follows.");
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  EXPECT_FALSE(engine_->faulted());
  backend_->out_of_memory = false;
  EXPECT_TRUE(Register("doc", "the access code of Ada is 4242. more text follows.").ok())
      << "the failed registration released its name";
}

TEST_F(EngineFaultTest, BackendFaultMarksTheEngineFaultedOnce) {
  ASSERT_TRUE(Generate().final.ok());
  backend_->fault = true;
  const Result r = Generate();
  ASSERT_TRUE(r.admission.ok()) << r.admission;
  EXPECT_EQ(r.final.code(), absl::StatusCode::kInternal) << r.final;
  EXPECT_NE(r.final.message().find("engine fault"), std::string::npos) << r.final;
  EXPECT_TRUE(engine_->faulted());
  EXPECT_EQ(fault_calls_.load(), 1);
  EXPECT_NE(fault_message_.find("illegal memory access"), std::string::npos) << fault_message_;
  // Later requests are refused at admission, even once the backend would work again.
  backend_->fault = false;
  const Result later = Generate();
  EXPECT_EQ(later.admission.code(), absl::StatusCode::kUnavailable) << later.admission;
  EXPECT_EQ(fault_calls_.load(), 1);
}

// A request option the backend does not implement is UNIMPLEMENTED at admission, before any
// other check of it (where it is implemented, the same request is refused for its dense mode).
TEST_F(EngineFaultTest, TailEstimateOnABackendWithoutItIsUnimplemented) {
  EXPECT_EQ(Generate(true).admission.code(), absl::StatusCode::kInvalidArgument);
  backend_->tail = false;
  const Result r = Generate(true);
  EXPECT_EQ(r.admission.code(), absl::StatusCode::kUnimplemented) << r.admission;
  EXPECT_NE(r.admission.message().find("estimate_tail"), std::string::npos) << r.admission;
  EXPECT_TRUE(Generate().final.ok());
}

}  // namespace
}  // namespace squeeze
