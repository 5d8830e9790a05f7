// make-test-model: writes a tiny random-weight Llama in Hugging Face layout for tests and demos.
//
//   make-test-model --out=DIR --corpus=tests/data/corpus.txt [--vocab_size=1000 ...]
//
// DIR receives tokenizer.model (SentencePiece BPE with byte fallback, trained on --corpus),
// tokenizer_config.json, model.safetensors and config.json (transformers-4 layout; written last,
// so its presence marks a complete model). The same flags always give the same files.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numbers>
#include <random>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "engine/model/config.h"
#include "engine/model/safetensors.h"
#include "engine/model/weights.h"
#include "engine/tokenizer/sentencepiece_shim.h"  // SentencePiece processor + trainer
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, out, "", "output directory (created if missing)");
ABSL_FLAG(std::string, corpus, "",
          "UTF-8 text file, one paragraph per line, to train the tokenizer");
ABSL_FLAG(int, vocab_size, 1000, "tokenizer vocabulary size (config.json gets the trained count)");
ABSL_FLAG(int, hidden_size, 128, "D");
ABSL_FLAG(int, intermediate_size, 344, "I (SwiGLU inner size)");
ABSL_FLAG(int, num_layers, 2, "L");
ABSL_FLAG(int, num_heads, 4, "Hq");
ABSL_FLAG(int, num_kv_heads, 2, "Hkv (must divide num_heads)");
ABSL_FLAG(int, max_position_embeddings, 8192, "maximum context length");
ABSL_FLAG(uint64_t, seed, 1, "PRNG seed for the weights");
ABSL_FLAG(std::string, dtype, "f32", "weight dtype in model.safetensors: f32 or bf16");

namespace squeeze {
namespace {

// Normal samples from a fully specified generator: std::mt19937_64 is identical everywhere,
// std::normal_distribution is not, so Box-Muller is done here.
class NormalRng {
 public:
  explicit NormalRng(uint64_t seed) : gen_(seed) {}

  double Next() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u1 = 1.0 - Uniform();  // (0, 1]: log is finite
    const double u2 = Uniform();
    const double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = r * std::sin(2.0 * std::numbers::pi * u2);
    has_spare_ = true;
    return r * std::cos(2.0 * std::numbers::pi * u2);
  }

 private:
  double Uniform() { return static_cast<double>(gen_() >> 11) * 0x1.0p-53; }  // [0, 1)

  std::mt19937_64 gen_;
  bool has_spare_ = false;
  double spare_ = 0.0;
};

struct Options {
  std::string out;
  std::string corpus;
  int vocab_size;
  int hidden_size;
  int intermediate_size;
  int num_layers;
  int num_heads;
  int num_kv_heads;
  int max_position_embeddings;
  uint64_t seed;
  DType dtype;
};

absl::StatusOr<Options> ReadFlags() {
  Options o;
  o.out = absl::GetFlag(FLAGS_out);
  o.corpus = absl::GetFlag(FLAGS_corpus);
  o.vocab_size = absl::GetFlag(FLAGS_vocab_size);
  o.hidden_size = absl::GetFlag(FLAGS_hidden_size);
  o.intermediate_size = absl::GetFlag(FLAGS_intermediate_size);
  o.num_layers = absl::GetFlag(FLAGS_num_layers);
  o.num_heads = absl::GetFlag(FLAGS_num_heads);
  o.num_kv_heads = absl::GetFlag(FLAGS_num_kv_heads);
  o.max_position_embeddings = absl::GetFlag(FLAGS_max_position_embeddings);
  o.seed = absl::GetFlag(FLAGS_seed);
  if (o.out.empty()) return absl::InvalidArgumentError("--out=DIR is required");
  if (o.corpus.empty()) return absl::InvalidArgumentError("--corpus=FILE is required");
  const std::string dtype = absl::GetFlag(FLAGS_dtype);
  if (dtype == "f32") {
    o.dtype = DType::kF32;
  } else if (dtype == "bf16") {
    o.dtype = DType::kBF16;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--dtype must be f32 or bf16, got '", dtype, "'"));
  }
  // Further consistency (heads, head_dim parity, ...) is checked by ParseModelConfig below.
  for (int v : {o.vocab_size, o.hidden_size, o.intermediate_size, o.num_layers, o.num_heads,
                o.num_kv_heads, o.max_position_embeddings}) {
    if (v <= 0) return absl::InvalidArgumentError("all size flags must be positive");
  }
  return o;
}

// Feeds the corpus to the trainer line by line. Passing lines instead of a path keeps the path out
// of the model's stored trainer_spec, so tokenizer.model does not depend on where the corpus is.
class LineIterator : public sentencepiece::SentenceIterator {
 public:
  explicit LineIterator(std::vector<std::string> lines) : lines_(std::move(lines)) {}
  bool done() const override { return next_ >= lines_.size(); }
  void Next() override { ++next_; }
  const std::string& value() const override { return lines_[next_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  std::vector<std::string> lines_;
  size_t next_ = 0;
};

// Trains a Llama-2-style SentencePiece model (BPE, byte fallback, identity normalisation so
// decoding reproduces the input exactly) and returns the serialised model.
absl::StatusOr<std::string> TrainTokenizer(const Options& o) {
  std::ifstream in(o.corpus, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open corpus file '", o.corpus, "'"));
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) lines.push_back(std::move(line));
  }
  if (lines.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("corpus file '", o.corpus, "' is empty"));
  }
  sentencepiece::SetRandomGeneratorSeed(static_cast<unsigned int>(o.seed));
  const std::unordered_map<std::string, std::string> args = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(o.vocab_size)},
      {"byte_fallback", "true"},
      {"character_coverage", "1.0"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"num_threads", "1"},
      {"input_sentence_size", "0"},
      {"shuffle_input_sentence", "false"},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"split_digits", "true"},
      {"allow_whitespace_only_pieces", "true"},
      {"max_sentence_length", "16384"},
      {"minloglevel", "2"},  // training chatter to warnings only
  };
  std::string model;
  LineIterator sentences(std::move(lines));
  const auto status = sentencepiece::SentencePieceTrainer::Train(args, &sentences, &model);
  if (!status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("SentencePiece training on '", o.corpus, "' failed: ", status.ToString()));
  }
  return model;
}

// Random weights in HF names and orientation ([out, in]). Projections ~ N(0, 1/in) keep
// activations O(1) through the layers; norms are 1 + noise so they are not all-equal.
std::vector<TensorToWrite> RandomWeights(const ModelConfig& c, const Options& o) {
  NormalRng rng(o.seed);
  std::vector<TensorToWrite> out;
  auto add = [&](std::string name, std::vector<int64_t> shape, double mean, double stddev) {
    size_t n = 1;
    for (int64_t d : shape) n *= static_cast<size_t>(d);
    std::vector<float> values(n);
    for (float& v : values) v = static_cast<float>(mean + stddev * rng.Next());
    out.push_back({std::move(name), o.dtype, std::move(shape), std::move(values)});
  };
  const int64_t D = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  const int64_t q_dim = int64_t{c.num_heads} * c.head_dim;
  const int64_t kv_dim = int64_t{c.num_kv_heads} * c.head_dim;
  auto in_std = [](int64_t in) { return 1.0 / std::sqrt(static_cast<double>(in)); };

  add("model.embed_tokens.weight", {V, D}, 0.0, 1.0);
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    add(p + "input_layernorm.weight", {D}, 1.0, 0.05);
    add(p + "self_attn.q_proj.weight", {q_dim, D}, 0.0, in_std(D));
    add(p + "self_attn.k_proj.weight", {kv_dim, D}, 0.0, in_std(D));
    add(p + "self_attn.v_proj.weight", {kv_dim, D}, 0.0, in_std(D));
    add(p + "self_attn.o_proj.weight", {D, q_dim}, 0.0, in_std(q_dim));
    add(p + "post_attention_layernorm.weight", {D}, 1.0, 0.05);
    add(p + "mlp.gate_proj.weight", {I, D}, 0.0, in_std(D));
    add(p + "mlp.up_proj.weight", {I, D}, 0.0, in_std(D));
    add(p + "mlp.down_proj.weight", {D, I}, 0.0, in_std(I));
  }
  add("model.norm.weight", {D}, 1.0, 0.05);
  add("lm_head.weight", {V, D}, 0.0, in_std(D));
  return out;
}

std::string ConfigJson(const Options& o, int vocab_size) {
  nlohmann::ordered_json j;
  j["architectures"] = {"LlamaForCausalLM"};
  j["model_type"] = "llama";
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = o.hidden_size;
  j["intermediate_size"] = o.intermediate_size;
  j["num_hidden_layers"] = o.num_layers;
  j["num_attention_heads"] = o.num_heads;
  j["num_key_value_heads"] = o.num_kv_heads;
  j["head_dim"] = o.hidden_size / o.num_heads;
  j["max_position_embeddings"] = o.max_position_embeddings;
  j["hidden_act"] = "silu";
  j["rms_norm_eps"] = 1e-5;
  j["rope_theta"] = 10000.0;
  j["rope_scaling"] = nullptr;
  j["attention_bias"] = false;
  j["mlp_bias"] = false;
  j["tie_word_embeddings"] = false;
  j["bos_token_id"] = 1;
  j["eos_token_id"] = 2;
  j["initializer_range"] = 0.02;
  j["torch_dtype"] = o.dtype == DType::kBF16 ? "bfloat16" : "float32";
  j["transformers_version"] = "4.46.0";
  j["use_cache"] = true;
  return j.dump(2) + "\n";
}

std::string TokenizerConfigJson(const Options& o) {
  nlohmann::ordered_json j;
  j["tokenizer_class"] = "LlamaTokenizer";
  j["bos_token"] = "<s>";
  j["eos_token"] = "</s>";
  j["unk_token"] = "<unk>";
  j["pad_token"] = nullptr;
  j["add_bos_token"] = true;
  j["add_eos_token"] = false;
  j["legacy"] = true;
  j["clean_up_tokenization_spaces"] = false;
  j["model_max_length"] = o.max_position_embeddings;
  return j.dump(2) + "\n";
}

absl::Status Run() {
  ASSIGN_OR_RETURN(Options o, ReadFlags());
  std::error_code ec;
  std::filesystem::create_directories(o.out, ec);
  if (ec) {
    return absl::PermissionDeniedError(absl::StrCat("cannot create '", o.out, "': ", ec.message()));
  }

  ASSIGN_OR_RETURN(std::string spm_model, TrainTokenizer(o));
  sentencepiece::SentencePieceProcessor sp;
  if (const auto s = sp.LoadFromSerializedProto(spm_model); !s.ok()) {
    return absl::InternalError(absl::StrCat("trained tokenizer does not load: ", s.ToString()));
  }
  const int vocab = sp.GetPieceSize();

  const std::string config_text = ConfigJson(o, vocab);
  ASSIGN_OR_RETURN(ModelConfig config, ParseModelConfig(config_text));
  const std::vector<TensorToWrite> weights = RandomWeights(config, o);
  size_t num_params = 0;
  for (const TensorToWrite& t : weights) num_params += t.values.size();

  const std::string dir = o.out + "/";
  RETURN_IF_ERROR(WriteFileAtomically(dir + "tokenizer.model", spm_model));
  RETURN_IF_ERROR(WriteFileAtomically(dir + "tokenizer_config.json", TokenizerConfigJson(o)));
  RETURN_IF_ERROR(WriteSafetensors(dir + "model.safetensors", weights));
  RETURN_IF_ERROR(WriteFileAtomically(dir + "config.json", config_text));

  // Read everything back through the engine's own loaders.
  ASSIGN_OR_RETURN(ModelConfig reloaded, LoadModelConfig(o.out));
  ASSIGN_OR_RETURN(LlamaWeights loaded, LoadLlamaWeights(o.out, reloaded));

  std::printf("wrote %s\n", o.out.c_str());
  std::printf("  tokenizer.model        SentencePiece BPE, %d pieces (unk=%d bos=%d eos=%d)\n",
              vocab, sp.unk_id(), sp.bos_id(), sp.eos_id());
  std::printf("  tokenizer_config.json\n");
  std::printf("  model.safetensors      %zu parameters, %s, seed %llu\n", num_params,
              o.dtype == DType::kBF16 ? "bf16" : "f32", static_cast<unsigned long long>(o.seed));
  std::printf(
      "  config.json            LlamaForCausalLM V=%d D=%d I=%d L=%d Hq=%d Hkv=%d d=%d "
      "max_pos=%d\n",
      config.vocab_size, config.hidden_size, config.intermediate_size, config.num_layers,
      config.num_heads, config.num_kv_heads, config.head_dim, config.max_position_embeddings);
  return absl::OkStatus();
}

}  // namespace
}  // namespace squeeze

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const absl::Status status = squeeze::Run();
  if (!status.ok()) {
    std::fprintf(stderr, "make-test-model: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}
