// End-to-end: the real server in-process on a loopback port, the real client, the test model.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <thread>

#include "tests/e2e/test_server.h"

namespace squeeze::testing {
namespace {

using ::testing::HasSubstr;

class ServerE2ETest : public ::testing::Test {
 protected:
  void SetUp() override {
    t_ = TestServer::Start();
    ASSERT_NE(t_.server, nullptr);
  }
  client::SqueezeClient& c() { return *t_.client; }
  TestServer t_;
};

TEST_F(ServerE2ETest, RegisterGenerateListGetDelete) {
  v1::ContextInfo info;
  std::vector<v1::RegisterContextEvent> events;
  ASSERT_TRUE(Register(c(), "docs", Document(), &info, &events).ok());
  EXPECT_EQ(info.name(), "docs");
  EXPECT_GT(info.num_tokens(), 300);
  EXPECT_EQ(info.content_hash().size(), 64u);
  EXPECT_FALSE(info.reused());
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.front().stage(), v1::RegisterContextEvent::TOKENIZING);
  EXPECT_EQ(events.back().stage(), v1::RegisterContextEvent::DONE);
  bool saw_prefill = false;
  for (const auto& e : events) saw_prefill |= e.stage() == v1::RegisterContextEvent::PREFILL;
  EXPECT_TRUE(saw_prefill);

  // Same name, same content: idempotent.
  v1::ContextInfo again;
  ASSERT_TRUE(Register(c(), "docs", Document(), &again).ok());
  EXPECT_TRUE(again.reused());
  EXPECT_EQ(again.content_hash(), info.content_hash());
  // Same name, other content: ALREADY_EXISTS.
  EXPECT_EQ(Register(c(), "docs", "something else entirely", &again).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);

  const EngineStats before = t_.server->engine().stats();
  v1::GenerateRequest req = Request("docs", "\nQuestion: Which river runs through Veloria?", 12);
  req.mutable_attention()->set_mode(v1::AttentionOptions::DENSE);
  GenerateResult r = Generate(c(), req);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.tokens.size(), 12u);
  EXPECT_GE(r.messages, 2);  // streamed
  EXPECT_EQ(r.last.finish_reason(), v1::LENGTH);
  const v1::Usage& u = r.last.usage();
  EXPECT_EQ(u.context_tokens(), info.num_tokens());
  EXPECT_EQ(u.context_tokens_reused(), info.num_tokens());
  EXPECT_EQ(u.completion_tokens(), 12);
  EXPECT_GT(u.query_tokens(), 3);
  EXPECT_DOUBLE_EQ(u.kv_budget(), 1.0);
  // The fixed context is never recomputed: the model ran only query + generated tokens
  // (the last generated token is never fed back).
  const EngineStats after = t_.server->engine().stats();
  EXPECT_EQ(after.generate_tokens_forwarded - before.generate_tokens_forwarded,
            u.query_tokens() + u.completion_tokens() - 1);
  EXPECT_EQ(after.registration_tokens_forwarded, before.registration_tokens_forwarded);

  v1::ListContextsResponse list;
  ASSERT_TRUE(c().ListContexts(&list).ok());
  ASSERT_EQ(list.contexts_size(), 1);
  EXPECT_EQ(list.contexts(0).name(), "docs");
  v1::ContextInfo got;
  ASSERT_TRUE(c().GetContext("docs", &got).ok());
  EXPECT_EQ(got.num_tokens(), info.num_tokens());
  ASSERT_TRUE(c().DeleteContext("docs").ok());
  EXPECT_EQ(c().GetContext("docs", &got).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(c().DeleteContext("docs").error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Generate(c(), Request("docs", "hi", 4)).status.error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(ServerE2ETest, GreedyIsDeterministicAndSeedReproduces) {
  v1::ContextInfo info;
  ASSERT_TRUE(Register(c(), "d", Document(), &info).ok());
  auto a = Generate(c(), Request("d", " The river", 10, 7, 0.0f));
  auto b = Generate(c(), Request("d", " The river", 10, 8, 0.0f));
  ASSERT_TRUE(a.status.ok());
  EXPECT_EQ(a.tokens, b.tokens);
  auto s1 = Generate(c(), Request("d", " The river", 16, 42, 1.0f));
  auto s2 = Generate(c(), Request("d", " The river", 16, 42, 1.0f));
  auto s3 = Generate(c(), Request("d", " The river", 16, 43, 1.0f));
  EXPECT_EQ(s1.tokens, s2.tokens);
  EXPECT_NE(s1.tokens, s3.tokens);
  // The streamed text is exactly the decoded completion.
  v1::TokenizeResponse tok;
  ASSERT_TRUE(c().Tokenize(s1.text, false, &tok).ok());
  EXPECT_FALSE(s1.text.empty());
}

TEST_F(ServerE2ETest, InvalidRequestsGetTheRightCodes) {
  v1::ContextInfo info;
  ASSERT_TRUE(Register(c(), "ctx", Document(), &info).ok());
  auto code = [&](v1::GenerateRequest req) { return Generate(c(), req).status.error_code(); };
  auto msg = [&](v1::GenerateRequest req) { return Generate(c(), req).status.error_message(); };
  const auto kInvalid = grpc::StatusCode::INVALID_ARGUMENT;

  // Names.
  EXPECT_EQ(Register(c(), "", "x", &info).error_code(), kInvalid);
  EXPECT_EQ(Register(c(), "bad name!", "x", &info).error_code(), kInvalid);
  EXPECT_EQ(Register(c(), std::string(129, 'a'), "x", &info).error_code(), kInvalid);
  EXPECT_EQ(Register(c(), "-dash", "x", &info).error_code(), kInvalid);
  {
    v1::RegisterContextRequest req;
    req.set_name("empty");
    grpc::Status st = c().RegisterContext(req, nullptr, &info);
    EXPECT_EQ(st.error_code(), kInvalid);
    EXPECT_THAT(st.error_message(), HasSubstr("content"));
  }
  // Unknown context, empty input.
  EXPECT_EQ(code(Request("nope", "hi", 4)), grpc::StatusCode::NOT_FOUND);
  v1::GenerateRequest empty = Request("ctx", "", 4);
  EXPECT_EQ(code(empty), kInvalid);
  // Too long for the model window.
  {
    v1::GenerateRequest r = Request("ctx", std::string(40000, 'a'), 4);
    EXPECT_EQ(code(r), kInvalid);
    EXPECT_THAT(msg(r), HasSubstr("model window"));
  }
  // max_tokens bounds.
  v1::GenerateRequest r0 = Request("ctx", "hi", 1);
  r0.set_max_tokens(0);
  EXPECT_EQ(code(r0), kInvalid);
  r0.set_max_tokens(5000);
  EXPECT_THAT(msg(r0), HasSubstr("max_tokens"));
  // Sampling ranges.
  auto with = [&](auto f) {
    v1::GenerateRequest r = Request("ctx", "hi", 2);
    f(r.mutable_sampling());
    return r;
  };
  EXPECT_EQ(code(with([](auto* s) { s->set_temperature(-1); })), kInvalid);
  EXPECT_EQ(code(with([](auto* s) { s->set_top_p(0); })), kInvalid);
  EXPECT_EQ(code(with([](auto* s) { s->set_top_p(1.5); })), kInvalid);
  EXPECT_EQ(code(with([](auto* s) { s->set_top_k(-3); })), kInvalid);
  EXPECT_EQ(code(with([](auto* s) { s->set_min_p(2); })), kInvalid);
  EXPECT_EQ(code(with([](auto* s) { s->set_repetition_penalty(0); })), kInvalid);
  EXPECT_EQ(code(with([](auto* s) { s->set_presence_penalty(3); })), kInvalid);
  EXPECT_EQ(code(with([](auto* s) { s->set_frequency_penalty(-2.5); })), kInvalid);
  EXPECT_THAT(msg(with([](auto* s) { s->set_temperature(NAN); })), HasSubstr("temperature"));
  // Logprobs, stop strings, token ids.
  v1::GenerateRequest lp = Request("ctx", "hi", 2);
  lp.set_logprobs(21);
  EXPECT_EQ(code(lp), kInvalid);
  v1::GenerateRequest plp = Request("ctx", "hi", 2);
  plp.set_prompt_logprobs(-1);
  EXPECT_THAT(msg(plp), HasSubstr("prompt_logprobs"));
  v1::GenerateRequest st = Request("ctx", "hi", 2);
  st.add_stop("");
  EXPECT_EQ(code(st), kInvalid);
  v1::GenerateRequest ids = Request("ctx", "", 2);
  ids.mutable_input()->mutable_token_ids()->add_ids(1 << 30);
  EXPECT_EQ(code(ids), kInvalid);
  EXPECT_THAT(msg(ids), HasSubstr("vocabulary"));
  v1::GenerateRequest stop_ids = Request("ctx", "hi", 2);
  stop_ids.add_stop_token_ids(-5);
  EXPECT_EQ(code(stop_ids), kInvalid);
  // Attention options.
  v1::GenerateRequest budget = Request("ctx", "hi", 2);
  budget.mutable_attention()->set_budget(1.5);
  EXPECT_EQ(code(budget), kInvalid);
  v1::GenerateRequest dense_budget = Request("ctx", "hi", 2);
  dense_budget.mutable_attention()->set_mode(v1::AttentionOptions::DENSE);
  dense_budget.mutable_attention()->set_budget(0.2);
  EXPECT_EQ(code(dense_budget), kInvalid);
  v1::GenerateRequest no_ctx = Request("", "hi", 2);
  no_ctx.mutable_attention()->set_mode(v1::AttentionOptions::SQUEEZED);
  EXPECT_EQ(code(no_ctx), kInvalid);
  // Index options at registration.
  v1::IndexOptions idx;
  idx.set_centroid_fraction(0);
  EXPECT_THAT(Register(c(), "i1", Document(), &info, nullptr, &idx).error_message(),
              HasSubstr("centroid_fraction"));
  idx.Clear();
  idx.set_window(0);
  EXPECT_EQ(Register(c(), "i2", Document(), &info, nullptr, &idx).error_code(), kInvalid);
  idx.Clear();
  idx.set_window(100000);
  EXPECT_THAT(Register(c(), "i3", Document(), &info, nullptr, &idx).error_message(),
              HasSubstr("window"));
  idx.Clear();
  idx.set_sinks(-1);
  EXPECT_EQ(Register(c(), "i4", Document(), &info, nullptr, &idx).error_code(), kInvalid);
  idx.Clear();
  idx.set_max_iterations(0);
  EXPECT_EQ(Register(c(), "i5", Document(), &info, nullptr, &idx).error_code(), kInvalid);
  idx.Clear();
  for (double bad : {-0.1, 1.0, std::nan("")}) {
    idx.set_kmeans_min_changed(bad);
    const grpc::Status st = Register(c(), "i5b", Document(), &info, nullptr, &idx);
    EXPECT_EQ(st.error_code(), kInvalid) << bad;
    EXPECT_THAT(st.error_message(), HasSubstr("index.kmeans_min_changed")) << bad;
  }
  idx.Clear();
  idx.set_hierarchical(true);
  idx.set_coarse_fraction(0.5);
  EXPECT_EQ(Register(c(), "i6", Document(), &info, nullptr, &idx).error_code(), kInvalid);
  idx.Clear();
  idx.set_disable(true);
  idx.set_window(5);
  EXPECT_EQ(Register(c(), "i7", Document(), &info, nullptr, &idx).error_code(), kInvalid);
  idx.clear_window();
  idx.set_kmeans_min_changed(0.01);
  EXPECT_EQ(Register(c(), "i8", Document(), &info, nullptr, &idx).error_code(), kInvalid);
  // A context shorter than the default window still registers: the window shrinks to fit.
  v1::ContextInfo short_ctx;
  ASSERT_TRUE(Register(c(), "short", "Just a few words.", &short_ctx).ok());
  EXPECT_TRUE(short_ctx.index().present());
  EXPECT_EQ(short_ctx.index().window(), short_ctx.num_tokens());
  EXPECT_EQ(short_ctx.index().num_centroids(), 0);
  GenerateResult short_gen = Generate(c(), Request("short", " More", 3, 1, 0.0f));
  ASSERT_TRUE(short_gen.status.ok()) << short_gen.status.error_message();
  EXPECT_NEAR(short_gen.last.usage().kv_budget(), 1.0, 1e-9);
  // The server is still healthy after all of that.
  bool serving = false;
  ASSERT_TRUE(c().CheckHealth("", &serving).ok());
  EXPECT_TRUE(serving);
}

TEST_F(ServerE2ETest, SqueezedAttentionThroughTheApi) {
  v1::ContextInfo flat, hier;
  ASSERT_TRUE(Register(c(), "flat", Document(), &flat).ok());
  EXPECT_TRUE(flat.index().present());
  EXPECT_FALSE(flat.index().hierarchical());
  EXPECT_GT(flat.index().num_centroids(), 0);
  EXPECT_EQ(flat.index().window(), 32);  // the test server's default
  v1::IndexOptions idx;
  idx.set_hierarchical(true);
  idx.set_centroid_fraction(0.08);
  idx.set_coarse_fraction(0.02);
  idx.set_window(48);
  idx.set_sinks(4);
  idx.set_max_iterations(10);
  idx.set_seed(3);
  idx.set_kmeans_min_changed(0.01);
  std::vector<v1::RegisterContextEvent> events;
  ASSERT_TRUE(Register(c(), "hier", Document(), &hier, &events, &idx).ok());
  EXPECT_EQ(flat.index().kmeans_min_changed(), 0.0);  // the server's default
  EXPECT_EQ(hier.index().kmeans_min_changed(), 0.01);
  EXPECT_EQ(hier.index().max_iterations(), 10);
  EXPECT_TRUE(hier.index().hierarchical());
  EXPECT_GT(hier.index().num_coarse_centroids(), 0);
  EXPECT_NEAR(hier.index().centroid_fraction(), 0.08, 1e-12);
  EXPECT_EQ(hier.index().sinks(), 4);
  EXPECT_EQ(hier.index().seed(), 3u);
  bool clustering = false, calibrating = false;
  for (const auto& e : events) {
    clustering |= e.stage() == v1::RegisterContextEvent::CLUSTERING;
    calibrating |= e.stage() == v1::RegisterContextEvent::CALIBRATING;
  }
  EXPECT_TRUE(clustering);
  EXPECT_TRUE(calibrating);

  // Default mode on an indexed context is squeezed, with a realised budget below 1.
  GenerateResult sq = Generate(c(), Request("flat", " The council", 6, 1, 0.0f));
  ASSERT_TRUE(sq.status.ok()) << sq.status.error_message();
  EXPECT_EQ(sq.last.attention_mode(), v1::AttentionOptions::SQUEEZED);
  EXPECT_GT(sq.last.usage().kv_budget(), 0.0);
  EXPECT_LT(sq.last.usage().kv_budget(), 1.0);
  // Budget 1 keeps every cluster: the same tokens as dense.
  v1::GenerateRequest all = Request("flat", " The council", 12, 1, 0.0f);
  all.mutable_attention()->set_mode(v1::AttentionOptions::SQUEEZED);
  all.mutable_attention()->set_budget(1.0);
  v1::GenerateRequest dense = Request("flat", " The council", 12, 1, 0.0f);
  dense.mutable_attention()->set_mode(v1::AttentionOptions::DENSE);
  GenerateResult a = Generate(c(), all), d = Generate(c(), dense);
  ASSERT_TRUE(a.status.ok());
  ASSERT_TRUE(d.status.ok());
  EXPECT_EQ(a.tokens, d.tokens);
  EXPECT_EQ(d.last.attention_mode(), v1::AttentionOptions::DENSE);
  // Budget 0 keeps only the window (and sinks): realised budget = (W + sinks) / S.
  v1::GenerateRequest none = Request("hier", " The council", 4, 1, 0.0f);
  none.mutable_attention()->set_budget(0.0);
  none.mutable_attention()->set_hierarchical(false);
  GenerateResult n = Generate(c(), none);
  ASSERT_TRUE(n.status.ok());
  EXPECT_NEAR(n.last.usage().kv_budget(), 52.0 / hier.num_tokens(), 1e-9);
  // Hierarchical lookup on a context that has the coarse level; refused on one that has not.
  v1::GenerateRequest h = Request("hier", " The council", 4, 1, 0.0f);
  h.mutable_attention()->set_hierarchical(true);
  h.mutable_attention()->set_budget(0.2);
  GenerateResult hr = Generate(c(), h);
  ASSERT_TRUE(hr.status.ok()) << hr.status.error_message();
  EXPECT_EQ(hr.last.attention_mode(), v1::AttentionOptions::SQUEEZED);
  v1::GenerateRequest h_flat = Request("flat", " The council", 4, 1, 0.0f);
  h_flat.mutable_attention()->set_hierarchical(true);
  GenerateResult hf = Generate(c(), h_flat);
  EXPECT_EQ(hf.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(hf.status.error_message(), HasSubstr("hierarchical"));
  // Mass-based selection (beyond the paper): mass 1 keeps everything, so equals dense.
  v1::GenerateRequest m1 = Request("flat", " The council", 12, 1, 0.0f);
  m1.mutable_attention()->set_mass(1.0);
  GenerateResult mr = Generate(c(), m1);
  ASSERT_TRUE(mr.status.ok()) << mr.status.error_message();
  EXPECT_EQ(mr.tokens, d.tokens);
  EXPECT_EQ(mr.last.attention_mode(), v1::AttentionOptions::SQUEEZED);
  v1::GenerateRequest m9 = Request("flat", " The council", 4, 1, 0.0f);
  m9.mutable_attention()->set_mass(0.5);
  GenerateResult m9r = Generate(c(), m9);
  ASSERT_TRUE(m9r.status.ok());
  EXPECT_LT(m9r.last.usage().kv_budget(), 1.0);
  for (double bad : {0.0, 1.5}) {
    v1::GenerateRequest mb = Request("flat", " The council", 4, 1, 0.0f);
    mb.mutable_attention()->set_mass(bad);
    EXPECT_EQ(Generate(c(), mb).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  v1::GenerateRequest mh = Request("hier", " The council", 4, 1, 0.0f);
  mh.mutable_attention()->set_mass(0.5);
  mh.mutable_attention()->set_hierarchical(true);
  EXPECT_EQ(Generate(c(), mh).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::GenerateRequest md = Request("flat", " The council", 4, 1, 0.0f);
  md.mutable_attention()->set_mass(0.5);
  md.mutable_attention()->set_mode(v1::AttentionOptions::DENSE);
  EXPECT_EQ(Generate(c(), md).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // The per-step budget policy holds the kept fraction of the clustered keys at every layer and
  // step (to within a cluster), so two budgets' realised KV budgets differ by the budgets'
  // difference of the clustered keys (the centroids scored and the window are the same).
  double step_budget[2];
  for (int i = 0; i < 2; ++i) {
    v1::GenerateRequest ps = Request("flat", " The council", 4, 1, 0.0f);
    ps.mutable_attention()->set_budget(i == 0 ? 0.05 : 0.25);
    ps.mutable_attention()->set_budget_policy(v1::AttentionOptions::PER_STEP);
    GenerateResult psr = Generate(c(), ps);
    ASSERT_TRUE(psr.status.ok()) << psr.status.error_message();
    EXPECT_EQ(psr.last.attention_mode(), v1::AttentionOptions::SQUEEZED);
    step_budget[i] = psr.last.usage().kv_budget();
  }
  const double clustered = static_cast<double>(flat.num_tokens() - 32) / flat.num_tokens();
  EXPECT_NEAR(step_budget[1] - step_budget[0], 0.2 * clustered, 0.02);
  for (v1::AttentionOptions::Mode mode :
       {v1::AttentionOptions::DENSE, v1::AttentionOptions::RECENT}) {
    v1::GenerateRequest pm = Request("flat", " The council", 4, 1, 0.0f);
    pm.mutable_attention()->set_mode(mode);
    pm.mutable_attention()->set_budget_policy(v1::AttentionOptions::PER_STEP);
    GenerateResult pmr = Generate(c(), pm);
    EXPECT_EQ(pmr.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(pmr.status.error_message(), HasSubstr("budget_policy"));
  }
  v1::GenerateRequest pmass = Request("flat", " The council", 4, 1, 0.0f);
  pmass.mutable_attention()->set_mass(0.5);
  pmass.mutable_attention()->set_budget_policy(v1::AttentionOptions::CALIBRATED);
  EXPECT_EQ(Generate(c(), pmass).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::GenerateRequest pbad = Request("flat", " The council", 4, 1, 0.0f);
  pbad.mutable_attention()->set_budget_policy(static_cast<v1::AttentionOptions::BudgetPolicy>(9));
  GenerateResult pbr = Generate(c(), pbad);
  EXPECT_EQ(pbr.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(pbr.status.error_message(), HasSubstr("budget_policy"));
  // Query blocks (beyond the paper): the input selected per block of 1 and of 2 tokens; with
  // every cluster kept the blocks attend exactly as dense does.
  for (int block : {1, 2}) {
    v1::GenerateRequest qb = Request("flat", " The council", 12, 1, 0.0f);
    qb.mutable_attention()->set_budget(1.0);
    qb.mutable_attention()->set_query_block(block);
    GenerateResult qbr = Generate(c(), qb);
    ASSERT_TRUE(qbr.status.ok()) << qbr.status.error_message();
    EXPECT_EQ(qbr.tokens, d.tokens) << "query_block " << block;
    v1::GenerateRequest qs = Request("flat", " The council", 4, 1, 0.0f);
    qs.mutable_attention()->set_budget(0.1);
    qs.mutable_attention()->set_query_block(block);
    GenerateResult qsr = Generate(c(), qs);
    ASSERT_TRUE(qsr.status.ok()) << qsr.status.error_message();
    EXPECT_LT(qsr.last.usage().kv_budget(), 1.0);
  }
  v1::GenerateRequest qneg = Request("flat", " The council", 4, 1, 0.0f);
  qneg.mutable_attention()->set_query_block(-1);
  GenerateResult qnr = Generate(c(), qneg);
  EXPECT_EQ(qnr.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(qnr.status.error_message(), HasSubstr("query_block"));
  v1::GenerateRequest qdense = Request("flat", " The council", 4, 1, 0.0f);
  qdense.mutable_attention()->set_mode(v1::AttentionOptions::DENSE);
  qdense.mutable_attention()->set_query_block(4);
  GenerateResult qdr = Generate(c(), qdense);
  EXPECT_EQ(qdr.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(qdr.status.error_message(), HasSubstr("query_block"));
  // Tail estimation (beyond the paper): serves at budget 0.1 and 0, counts the centroids and
  // mean values it reads in the realised budget, and equals dense with every cluster kept;
  // hierarchical or dense requests for it are the client's error.
  v1::GenerateRequest te1 = Request("flat", " The council", 12, 1, 0.0f);
  te1.mutable_attention()->set_budget(1.0);
  te1.mutable_attention()->set_estimate_tail(true);
  GenerateResult te1r = Generate(c(), te1);
  ASSERT_TRUE(te1r.status.ok()) << te1r.status.error_message();
  EXPECT_EQ(te1r.tokens, d.tokens);
  double tail_budget[2];
  for (int i = 0; i < 2; ++i) {
    v1::GenerateRequest te = Request("flat", " The council", 4, 1, 0.0f);
    te.mutable_attention()->set_budget(0.1);
    if (i == 1) te.mutable_attention()->set_estimate_tail(true);
    GenerateResult ter = Generate(c(), te);
    ASSERT_TRUE(ter.status.ok()) << ter.status.error_message();
    tail_budget[i] = ter.last.usage().kv_budget();
  }
  EXPECT_GT(tail_budget[1], tail_budget[0]);
  EXPECT_LT(tail_budget[1], 1.0);
  v1::GenerateRequest te0 = Request("flat", " The council", 4, 1, 0.0f);
  te0.mutable_attention()->set_budget(0.0);
  te0.mutable_attention()->set_estimate_tail(true);
  ASSERT_TRUE(Generate(c(), te0).status.ok());
  v1::GenerateRequest teh = Request("hier", " The council", 4, 1, 0.0f);
  teh.mutable_attention()->set_estimate_tail(true);
  teh.mutable_attention()->set_hierarchical(true);
  GenerateResult tehr = Generate(c(), teh);
  EXPECT_EQ(tehr.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(tehr.status.error_message(), HasSubstr("estimate_tail"));
  // A hierarchical context without the option: flat selection (tail estimation is flat only).
  v1::GenerateRequest teh2 = Request("hier", " The council", 4, 1, 0.0f);
  teh2.mutable_attention()->set_estimate_tail(true);
  ASSERT_TRUE(Generate(c(), teh2).status.ok());
  v1::GenerateRequest ted = Request("flat", " The council", 4, 1, 0.0f);
  ted.mutable_attention()->set_mode(v1::AttentionOptions::DENSE);
  ted.mutable_attention()->set_estimate_tail(true);
  EXPECT_EQ(Generate(c(), ted).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // The query-blind baseline.
  v1::GenerateRequest rec = Request("flat", " The council", 4, 1, 0.0f);
  rec.mutable_attention()->set_mode(v1::AttentionOptions::RECENT);
  rec.mutable_attention()->set_budget(0.1);
  GenerateResult rr = Generate(c(), rec);
  ASSERT_TRUE(rr.status.ok()) << rr.status.error_message();
  EXPECT_EQ(rr.last.attention_mode(), v1::AttentionOptions::RECENT);
  EXPECT_LT(rr.last.usage().kv_budget(), 0.3);
  // The query-aware page baseline.
  v1::GenerateRequest pages = Request("flat", " The council", 4, 1, 0.0f);
  pages.mutable_attention()->set_mode(v1::AttentionOptions::PAGES);
  pages.mutable_attention()->set_budget(0.1);
  GenerateResult pr = Generate(c(), pages);
  ASSERT_TRUE(pr.status.ok()) << pr.status.error_message();
  EXPECT_EQ(pr.last.attention_mode(), v1::AttentionOptions::PAGES);
  EXPECT_GT(pr.last.usage().kv_budget(), 0.0);
  EXPECT_LT(pr.last.usage().kv_budget(), 0.3);
  EXPECT_EQ(pr.last.usage().completion_tokens(), 4);
  pages.mutable_attention()->set_hierarchical(true);
  EXPECT_EQ(Generate(c(), pages).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // A context registered without an index serves dense only.
  v1::IndexOptions off;
  off.set_disable(true);
  v1::ContextInfo plain;
  ASSERT_TRUE(Register(c(), "plain", Document(), &plain, nullptr, &off).ok());
  EXPECT_FALSE(plain.index().present());
  GenerateResult pd = Generate(c(), Request("plain", " The council", 3, 1, 0.0f));
  ASSERT_TRUE(pd.status.ok());
  EXPECT_EQ(pd.last.attention_mode(), v1::AttentionOptions::DENSE);
  v1::GenerateRequest psq = Request("plain", " The council", 3, 1, 0.0f);
  psq.mutable_attention()->set_mode(v1::AttentionOptions::SQUEEZED);
  EXPECT_EQ(Generate(c(), psq).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServerE2ETest, StopStringsStopTokensAndLogprobs) {
  v1::ContextInfo info;
  ASSERT_TRUE(Register(c(), "ctx", Document(), &info).ok());
  // Find what greedy produces, then stop on a piece of it.
  GenerateResult base = Generate(c(), Request("ctx", " Merchants", 20, 1, 0.0f));
  ASSERT_TRUE(base.status.ok());
  ASSERT_GE(base.text.size(), 6u);
  const std::string stop = base.text.substr(base.text.size() / 2, 3);
  v1::GenerateRequest req = Request("ctx", " Merchants", 20, 1, 0.0f);
  req.add_stop(stop);
  GenerateResult stopped = Generate(c(), req);
  ASSERT_TRUE(stopped.status.ok());
  EXPECT_EQ(stopped.last.finish_reason(), v1::STOP);
  EXPECT_EQ(stopped.text, base.text.substr(0, base.text.find(stop)));

  v1::GenerateRequest by_id = Request("ctx", " Merchants", 20, 1, 0.0f);
  by_id.add_stop_token_ids(base.tokens[3]);
  GenerateResult id_stopped = Generate(c(), by_id);
  ASSERT_TRUE(id_stopped.status.ok());
  EXPECT_EQ(id_stopped.last.finish_reason(), v1::STOP);
  const size_t first =
      std::find(base.tokens.begin(), base.tokens.end(), base.tokens[3]) - base.tokens.begin();
  EXPECT_EQ(id_stopped.tokens,
            std::vector<int32_t>(base.tokens.begin(), base.tokens.begin() + first));

  v1::GenerateRequest lp = Request("ctx", " Merchants", 5, 1, 0.0f);
  lp.set_logprobs(3);
  int logprob_entries = 0;
  grpc::Status status = c().Generate(lp, [&](const v1::GenerateResponse& r) {
    for (const auto& l : r.logprobs()) {
      ++logprob_entries;
      EXPECT_LE(l.logprob(), 0.0f);
      EXPECT_EQ(l.top_size(), 3);
    }
    return true;
  });
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(logprob_entries, 5);
}

// Scoring the input: the score of a token continuing the input equals the log-probability the
// server gave that token when it generated it greedily (the same model, context and prefix).
TEST_F(ServerE2ETest, PromptLogprobsScoreTheInput) {
  v1::ContextInfo info;
  ASSERT_TRUE(Register(c(), "ctx", Document(), &info).ok());
  // Dense: a squeezed query selects per step (one row) and per chunk (many) differently.
  v1::GenerateRequest gen = Request("ctx", " Merchants", 4, 1, 0.0f);
  gen.mutable_attention()->set_mode(v1::AttentionOptions::DENSE);
  gen.set_logprobs(0);
  std::vector<float> generated_logprobs;
  std::vector<int32_t> generated;
  ASSERT_TRUE(c().Generate(gen,
                           [&](const v1::GenerateResponse& r) {
                             for (int32_t t : r.token_ids()) generated.push_back(t);
                             for (const auto& l : r.logprobs())
                               generated_logprobs.push_back(l.logprob());
                             EXPECT_EQ(r.prompt_token_ids_size(), 0);  // not asked for
                             return true;
                           })
                  .ok());
  ASSERT_EQ(generated.size(), 4u);
  ASSERT_EQ(generated_logprobs.size(), 4u);

  // The question's tokens, then the greedy answer, as token ids, scored.
  v1::TokenizeResponse question;
  ASSERT_TRUE(c().Tokenize(" Merchants", /*add_bos=*/false, &question).ok());
  v1::GenerateRequest score = Request("ctx", "", 1, 1, 0.0f);
  auto* ids = score.mutable_input()->mutable_token_ids();
  for (int32_t t : question.ids()) ids->add_ids(t);
  for (int32_t t : generated) ids->add_ids(t);
  score.mutable_attention()->set_mode(v1::AttentionOptions::DENSE);
  score.set_prompt_logprobs(2);
  int messages_with_scores = 0;
  std::vector<int32_t> prompt_tokens;
  std::vector<v1::TokenLogprob> scores;
  ASSERT_TRUE(c().Generate(score,
                           [&](const v1::GenerateResponse& r) {
                             if (r.prompt_token_ids_size() == 0) return true;
                             ++messages_with_scores;
                             prompt_tokens.assign(r.prompt_token_ids().begin(),
                                                  r.prompt_token_ids().end());
                             scores.assign(r.prompt_logprobs().begin(), r.prompt_logprobs().end());
                             return true;
                           })
                  .ok());
  EXPECT_EQ(messages_with_scores, 1);
  ASSERT_EQ(prompt_tokens.size(), static_cast<size_t>(ids->ids_size()));
  ASSERT_EQ(scores.size(), prompt_tokens.size() - 1);
  for (const v1::TokenLogprob& s : scores) {
    EXPECT_LE(s.logprob(), 0.0f);
    ASSERT_EQ(s.top_size(), 2);
    EXPECT_GE(s.top(0).logprob(), s.top(1).logprob());
  }
  // The greedy tokens: each was the best continuation, with the logprob generation reported.
  const size_t q = question.ids_size();
  for (size_t i = 0; i < generated.size(); ++i) {
    const v1::TokenLogprob& s = scores[q - 1 + i];
    EXPECT_NEAR(s.logprob(), generated_logprobs[i], 1e-3) << "answer token " << i;
    EXPECT_EQ(s.top(0).id(), generated[i]) << "answer token " << i;
  }
}

TEST_F(ServerE2ETest, ConcurrentStreamsMatchTheSameRequestAlone) {
  v1::ContextInfo a, b;
  ASSERT_TRUE(Register(c(), "alpha", Document().substr(0, 1200), &a).ok());
  ASSERT_TRUE(Register(c(), "beta", Document().substr(1200), &b).ok());
  constexpr int kStreams = 32;
  auto request = [](int i) {
    return Request(i % 2 ? "alpha" : "beta", i % 3 ? " Bakers" : " The council", 8 + i % 5, 100 + i,
                   0.9f);
  };
  std::vector<GenerateResult> together(kStreams);
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] { together[i] = Generate(c(), request(i)); });
  }
  for (auto& t : threads) t.join();
  EXPECT_GT(t_.server->engine().stats().largest_batch, 1);
  for (int i = 0; i < kStreams; ++i) {
    ASSERT_TRUE(together[i].status.ok()) << i << ": " << together[i].status.error_message();
    GenerateResult alone = Generate(c(), request(i));
    ASSERT_TRUE(alone.status.ok());
    EXPECT_EQ(together[i].tokens, alone.tokens) << "stream " << i;
    EXPECT_EQ(together[i].text, alone.text) << "stream " << i;
  }
}

TEST_F(ServerE2ETest, CancellationAndDeadlineFreeTheSequence) {
  v1::ContextInfo info;
  ASSERT_TRUE(Register(c(), "ctx", Document(), &info).ok());
  int received = 0;
  grpc::Status st = c().Generate(Request("ctx", " hello", 2000), [&](const auto&) {
    return ++received < 3;  // cancel after 3 messages
  });
  EXPECT_EQ(st.error_code(), grpc::StatusCode::CANCELLED);
  // The engine drops the sequence within a step.
  for (int i = 0; i < 200 && t_.server->engine().stats().queued > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(t_.server->engine().stats().queued, 0);
  const int64_t generated = t_.server->engine().stats().generated_tokens;
  EXPECT_LT(generated, 200);

  GenerateResult late = Generate(c(), Request("ctx", " hello", 3000), /*timeout=*/0.2);
  EXPECT_EQ(late.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  for (int i = 0; i < 200 && t_.server->engine().stats().queued > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(t_.server->engine().stats().queued, 0);
}

TEST(ServerE2EQueueTest, FullQueueGivesResourceExhausted) {
  server::ServerOptions o = DefaultOptions();
  o.engine.max_running = 1;
  o.engine.max_waiting = 1;
  TestServer t = TestServer::Start(o);
  ASSERT_NE(t.server, nullptr);
  std::vector<GenerateResult> long_runs(2);
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back(
        [&, i] { long_runs[i] = Generate(*t.client, Request("", "Hello", 1500)); });
  }
  for (int i = 0; i < 500 && t.server->engine().stats().queued < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_EQ(t.server->engine().stats().queued, 2);
  GenerateResult third = Generate(*t.client, Request("", "Hello", 4));
  EXPECT_EQ(third.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(third.status.error_message(), HasSubstr("queue"));
  t.server->Shutdown(absl::ZeroDuration());
  for (auto& th : threads) th.join();
  for (auto& r : long_runs) EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST(ServerE2EDrainTest, DrainFinishesStreamsAndRefusesNewWork) {
  TestServer t = TestServer::Start();
  ASSERT_NE(t.server, nullptr);
  GenerateResult running;
  std::thread th([&] { running = Generate(*t.client, Request("", "Once upon", 60)); });
  for (int i = 0; i < 500 && t.server->engine().stats().generated_tokens == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  std::thread stopper([&] { t.server->engine().Shutdown(absl::Seconds(30)); });
  for (int i = 0; i < 500 && !t.server->engine().draining(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  GenerateResult refused = Generate(*t.client, Request("", "Hello", 4));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  th.join();
  stopper.join();
  ASSERT_TRUE(running.status.ok()) << running.status.error_message();
  EXPECT_EQ(running.tokens.size(), 60u);
}

TEST(ServerE2EPersistenceTest, ContextsSurviveARestart) {
  const std::string dir = ::testing::TempDir() + "/squeeze-state-" + std::to_string(getpid());
  std::filesystem::remove_all(dir);
  server::ServerOptions o = DefaultOptions();
  o.state_dir = dir;
  GenerateResult first;
  v1::ContextInfo info;
  {
    TestServer t = TestServer::Start(o);
    ASSERT_NE(t.server, nullptr);
    ASSERT_TRUE(Register(*t.client, "kept", Document(), &info).ok());
    first = Generate(*t.client, Request("kept", " The", 10, 5, 0.7f));
    ASSERT_TRUE(first.status.ok());
  }
  TestServer t = TestServer::Start(o);
  ASSERT_NE(t.server, nullptr);
  v1::ContextInfo got;
  ASSERT_TRUE(t.client->GetContext("kept", &got).ok());
  EXPECT_EQ(got.content_hash(), info.content_hash());
  EXPECT_EQ(got.index().num_centroids(), info.index().num_centroids());
  GenerateResult second = Generate(*t.client, Request("kept", " The", 10, 5, 0.7f));
  ASSERT_TRUE(second.status.ok());
  EXPECT_EQ(first.tokens, second.tokens);
  EXPECT_EQ(t.server->engine().stats().registration_tokens_forwarded, 0);
  ASSERT_TRUE(t.client->DeleteContext("kept").ok());
  EXPECT_FALSE(std::filesystem::exists(dir + "/kept.sqzctx"));
  std::filesystem::remove_all(dir);
}

TEST(ServerE2EMemoryTest, RegistrationOverTheMemoryLimitIsRefused) {
  server::ServerOptions o = DefaultOptions();
  o.max_context_memory = 64 * 1024;  // far below one context's KV
  TestServer t = TestServer::Start(o);
  ASSERT_NE(t.server, nullptr);
  v1::ContextInfo info;
  grpc::Status st = Register(*t.client, "big", Document(), &info);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(st.error_message(), HasSubstr("bytes"));
  // Still serving.
  EXPECT_TRUE(Generate(*t.client, Request("", "Hello", 3)).status.ok());
}

}  // namespace
}  // namespace squeeze::testing
