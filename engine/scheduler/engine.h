// The engine: one thread owns the model and runs the schedule -> execute -> update loop.
// RPC handlers call the thread-safe methods below; results come back through callbacks invoked
// on the engine thread (or, for the end of a registration, on the indexer thread). Callbacks
// must not block.
#pragma once

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/api/types.h"
#include "engine/chat/chat_prompts.h"
#include "engine/chat/chat_template.h"
#include "engine/model/llama_model.h"
#include "engine/store/context_store.h"
#include "engine/tokenizer/tokenizer.h"

namespace squeeze {

struct EngineOptions {
  int max_running = 64;        // sequences in the running batch
  int max_waiting = 256;       // queued Generate requests; beyond: RESOURCE_EXHAUSTED
  int max_registrations = 4;   // registrations queued or running; beyond: RESOURCE_EXHAUSTED
  int prefill_chunk = 512;     // prefill tokens of one sequence / registration per step
  int max_step_tokens = 2048;  // prefill tokens per step over all sequences
  // Registration prefill tokens per step while sequences are decoding: a registration's prefill
  // runs in the same forward as their decode, so this bounds the gap between their tokens.
  int registration_chunk_while_decoding = 64;
  double default_budget = 0.1;  // kept fraction of clustered keys when a request gives none
  BudgetPolicy default_budget_policy = BudgetPolicy::kCalibrated;  // when a request gives none
  int default_query_block = 0;  // SelectionOptions::query_block when a request gives none
  // The tokens that end a generation (unless ignore_eos). Unset: the model config's
  // eos_token_id and the tokenizer's EOS. The server resolves them from generation_config.json
  // (engine/model/generation_config.h).
  std::optional<std::vector<int32_t>> eos_token_ids;
};

// Counters for tests and metrics (monotonic unless noted).
struct EngineStats {
  int64_t steps = 0;
  int64_t generate_tokens_forwarded = 0;      // tokens of Generate requests run through the model
  int64_t registration_tokens_forwarded = 0;  // fixed-context tokens prefilled
  int64_t generated_tokens = 0;
  int64_t requests_finished = 0;
  int running = 0;            // gauge: sequences in the last step's batch
  int queued = 0;             // gauge: Generate requests not finished
  int registrations = 0;      // gauge: registrations in progress
  int64_t largest_batch = 0;  // most sequences in one forward step
};

// Lets the RPC layer cancel work it submitted. Cancellation frees the sequence within one step.
class WorkHandle {
 public:
  void Cancel() { cancelled_.store(true); }
  bool cancelled() const { return cancelled_.load(); }

 private:
  std::atomic<bool> cancelled_{false};
};

class Engine {
 public:
  using GenerateCallback = std::function<void(GenerateEvent)>;
  using RegisterCallback = std::function<void(RegisterEvent)>;

  // `chat_template` renders chat messages (PromptInput::messages, chat documents); without one
  // (its status says why) such requests fail with FailedPrecondition and that reason.
  Engine(EngineOptions options, std::unique_ptr<LlamaModel> model,
         std::unique_ptr<Tokenizer> tokenizer, std::unique_ptr<ContextStore> store,
         absl::StatusOr<std::unique_ptr<ChatTemplate>> chat_template =
             absl::NotFoundError("the server was started without a chat template"));
  ~Engine();

  void Start();
  // Refuses new work (UNAVAILABLE), lets running work finish for up to `grace`, cancels the rest,
  // and joins the threads.
  void Shutdown(absl::Duration grace);
  bool draining() const { return draining_.load(); }
  // True after a backend fault (e.g. a CUDA error): every new request gets UNAVAILABLE.
  bool faulted() const { return faulted_.load(); }
  // Called once, from the engine thread, when the engine faults (the server turns its health
  // check to NOT_SERVING).
  void SetFaultHandler(std::function<void(const absl::Status&)> handler);

  // Validates and queues a registration. An error here means nothing was queued; otherwise
  // `callback` receives progress events and exactly one final event.
  absl::StatusOr<std::shared_ptr<WorkHandle>> Register(RegisterRequest request,
                                                       RegisterCallback callback);
  // Validates and queues a generation; `callback` receives token events and one final event.
  absl::StatusOr<std::shared_ptr<WorkHandle>> Generate(GenerateRequest request,
                                                       GenerateCallback callback);

  // Contexts belong to a tenant ("" without API keys); a tenant sees only its own. With a shared
  // store (ContextStore::SetSharedStore) these see every replica's contexts.
  absl::StatusOr<ContextSummary> GetContext(const std::string& tenant,
                                            const std::string& name) const;
  std::vector<ContextSummary> ListContexts(const std::string& tenant) const;
  // The contexts held in this replica's memory, every tenant's (metrics).
  std::vector<ContextSummary> ResidentContexts() const;
  absl::Status DeleteContext(const std::string& tenant, const std::string& name);
  absl::StatusOr<std::vector<int32_t>> Tokenize(const PromptInput& input, bool add_bos) const;

  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const ModelConfig& model_config() const { return model_->config(); }
  const EngineOptions& options() const { return options_; }
  EngineStats stats() const;

 private:
  struct Sequence;
  struct Registration;

  void Loop();
  void IndexerLoop();
  // One schedule -> execute -> update iteration. Returns false when idle.
  bool Step();
  void RetireCancelled();
  void MarkFaulted(const absl::Status& why);
  void FinishSequence(Sequence& seq, absl::Status status, FinishReason reason);
  // The sequence's next token (and its logprobs when asked for), sampled on the host or the
  // device: stop checks, streaming, finish.
  void ProcessSampled(Sequence& seq, int32_t token, const SampleInfo& info);
  void FinishRegistrationPrefill(std::unique_ptr<Registration> reg);
  void BuildAndPublish(Registration& reg);

  const EngineOptions options_;
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<ContextStore> store_;
  std::unique_ptr<ChatPrompts> chat_;

  mutable absl::Mutex mu_;
  absl::CondVar work_cv_;
  std::deque<std::unique_ptr<Sequence>> incoming_ ABSL_GUARDED_BY(mu_);
  std::deque<std::unique_ptr<Registration>> incoming_regs_ ABSL_GUARDED_BY(mu_);
  std::deque<std::unique_ptr<Registration>> indexer_queue_ ABSL_GUARDED_BY(mu_);
  // Published contexts whose prefill KV is still in device memory, for the engine thread to
  // hand to the backend (Backend::AdoptContextKv) before its next step.
  struct Adoption {
    std::shared_ptr<const RegisteredContext> context;
    SequenceKV kv;
  };
  std::deque<Adoption> adoptions_ ABSL_GUARDED_BY(mu_);
  absl::CondVar indexer_cv_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  int queued_requests_ ABSL_GUARDED_BY(mu_) = 0;  // incoming + waiting + running
  int active_registrations_ ABSL_GUARDED_BY(mu_) = 0;
  EngineStats stats_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> draining_{false};
  std::atomic<bool> faulted_{false};
  std::function<void(const absl::Status&)> fault_handler_ ABSL_GUARDED_BY(mu_);

  // Owned by the engine thread.
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;
  std::deque<std::unique_ptr<Registration>> registrations_;

  std::thread thread_;
  std::thread indexer_;
};

}  // namespace squeeze
