#include "engine/store/context_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <streambuf>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/common/binary_io.h"
#include "engine/common/sha256.h"
#include "engine/common/status_macros.h"
#include "engine/squeeze/index_io.h"
#include "engine/squeeze/squeeze_index.h"

namespace squeeze {
namespace {

constexpr char kMagic[8] = {'S', 'Q', 'Z', 'C', 'T', 'X', '0', '1'};
constexpr uint64_t kDigestBytes = 32;

// A write buffer over a file descriptor that hashes every byte it writes (so the checksum costs
// no second pass over a multi-GiB file) and remembers the first write error.
class HashingFileBuf : public std::streambuf {
 public:
  explicit HashingFileBuf(int fd) : fd_(fd), buf_(1 << 20) {
    setp(buf_.data(), buf_.data() + buf_.size());
  }

  // Flushes and returns the digest of everything written so far.
  Sha256::Digest Digest() {
    sync();
    return sha_.Final();
  }
  // errno of the first failed write; 0 when every write succeeded.
  int error() const { return error_; }

 protected:
  int_type overflow(int_type ch) override {
    if (!Drain()) return traits_type::eof();
    if (!traits_type::eq_int_type(ch, traits_type::eof())) {
      *pptr() = traits_type::to_char_type(ch);
      pbump(1);
    }
    return traits_type::not_eof(ch);
  }
  int sync() override { return Drain() ? 0 : -1; }

 private:
  bool Drain() {
    const size_t n = static_cast<size_t>(pptr() - pbase());
    sha_.Update(pbase(), n);
    if (!WriteAll(fd_, pbase(), n, &error_)) return false;
    setp(buf_.data(), buf_.data() + buf_.size());
    return true;
  }

 public:
  static bool WriteAll(int fd, const char* p, size_t n, int* error) {
    while (n > 0) {
      const ssize_t w = ::write(fd, p, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        if (*error == 0) *error = w < 0 ? errno : EIO;
        return false;
      }
      p += w;
      n -= static_cast<size_t>(w);
    }
    return true;
  }

 private:
  const int fd_;
  std::vector<char> buf_;
  Sha256 sha_;
  int error_ = 0;
};

void WriteOptions(BinaryWriter& w, const SqueezeOptions& o) {
  w.Pod(o.centroid_fraction);
  w.Pod<uint8_t>(o.hierarchical);
  w.Pod(o.coarse_fraction);
  w.Pod<int32_t>(o.window);
  w.Pod<int32_t>(o.sinks);
  w.Pod<int32_t>(o.max_iterations);
  w.Pod(o.seed);
  w.Pod(o.kmeans_min_changed);
}

// `version`: the file's; before 4 there is no kmeans_min_changed (0, the exact rule).
absl::Status ReadOptions(BinaryReader& r, uint32_t version, SqueezeOptions* o) {
  uint8_t hier = 0;
  int32_t window = 0, sinks = 0, iters = 0;
  RETURN_IF_ERROR(r.Pod(&o->centroid_fraction));
  RETURN_IF_ERROR(r.Pod(&hier));
  RETURN_IF_ERROR(r.Pod(&o->coarse_fraction));
  RETURN_IF_ERROR(r.Pod(&window));
  RETURN_IF_ERROR(r.Pod(&sinks));
  RETURN_IF_ERROR(r.Pod(&iters));
  RETURN_IF_ERROR(r.Pod(&o->seed));
  o->kmeans_min_changed = 0.0;
  if (version >= 4) RETURN_IF_ERROR(r.Pod(&o->kmeans_min_changed));
  o->hierarchical = hier != 0;
  o->window = window;
  o->sinks = sinks;
  o->max_iterations = iters;
  return absl::OkStatus();
}

void WriteKv(BinaryWriter& w, const HostKvTensor& t) {
  w.Pod<uint64_t>(t.size());
  w.Raw(t.data(), t.bytes());
}

// Reads one K or V tensor stored as `stored` into `*out` as `want`. A conversion goes through
// chunks, so reading an fp32 file into bf16 never holds both copies whole.
absl::Status ReadKv(BinaryReader& r, DType stored, DType want, HostKvTensor* out) {
  uint64_t n = 0;
  RETURN_IF_ERROR(r.Pod(&n));
  if (n > r.left() / DTypeBytes(stored)) return absl::DataLossError("file is truncated or corrupt");
  *out = HostKvTensor(want, n);
  if (stored == want) return r.Raw(out->data(), out->bytes());
  constexpr uint64_t kChunk = uint64_t{1} << 20;
  HostKvTensor staging(stored, std::min(n, kChunk));
  for (uint64_t done = 0; done < n; done += kChunk) {
    const uint64_t m = std::min(kChunk, n - done);
    RETURN_IF_ERROR(r.Raw(staging.data(), m * DTypeBytes(stored)));
    if (want == DType::kF32) {
      staging.ReadFloats(0, m, out->f32() + done);  // bf16 -> fp32: exact
    } else {
      out->WriteFloats(done, m, staging.f32());  // fp32 -> bf16: nearest even
    }
  }
  return absl::OkStatus();
}

absl::Status WriteBody(const RegisteredContext& c, const std::string& fingerprint,
                       std::ostream& out) {
  if (c.kv.k.dtype() != c.kv.v.dtype()) {
    return absl::InvalidArgumentError("context K and V have different dtypes");
  }
  BinaryWriter w(&out);
  out.write(kMagic, sizeof(kMagic));
  w.Pod(kContextFileVersion);
  w.String(fingerprint);
  const ContextSummary& s = c.summary;
  w.String(s.tenant);
  w.String(s.name);
  w.String(s.content_hash);
  w.Pod<int64_t>(s.created_unix);
  w.Pod(s.timings);
  w.Vector(c.tokens);
  w.Pod<int32_t>(c.kv.shape.num_layers);
  w.Pod<int32_t>(c.kv.shape.num_kv_heads);
  w.Pod<int32_t>(c.kv.shape.head_dim);
  w.Pod<int32_t>(c.kv.num_tokens);
  w.Pod(static_cast<uint8_t>(c.kv.dtype()));
  WriteKv(w, c.kv.k);
  WriteKv(w, c.kv.v);
  w.Vector(c.kv.token_of);
  w.Pod<uint8_t>(c.index != nullptr);
  WriteOptions(w, s.index_options);
  if (c.index) RETURN_IF_ERROR(WriteSqueezeIndex(*c.index, out));
  return absl::OkStatus();
}

absl::Status ErrnoStatus(const std::string& what, int err) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(err)));
}

// The index must describe exactly this KV: a mismatch would index out of its rows.
absl::Status CheckIndexMatchesKv(const SqueezeIndex& index, const ContextKV& kv) {
  if (index.num_layers != kv.shape.num_layers || index.num_kv_heads != kv.shape.num_kv_heads ||
      index.head_dim != kv.shape.head_dim || index.num_tokens != kv.num_tokens) {
    return absl::DataLossError("the index does not match the context's KV shape");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteContextFile(const RegisteredContext& c, const std::string& fingerprint,
                              const std::string& path) {
  // Unique per process and call (replicas sharing a store may write one object at once); the
  // ".tmp" suffix lets the state directory's start-up cleanup find leftovers.
  static std::atomic<uint64_t> counter{0};
  const std::string tmp = absl::StrCat(path, ".", ::getpid(), ".",
                                       counter.fetch_add(1, std::memory_order_relaxed), ".tmp");
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus(absl::StrCat("cannot write '", tmp, "'"), errno);
  absl::Status st;
  {
    HashingFileBuf buf(fd);
    std::ostream out(&buf);
    st = WriteBody(c, fingerprint, out);
    out.flush();
    const Sha256::Digest digest = buf.Digest();
    int err = buf.error();
    if (err == 0) {
      HashingFileBuf::WriteAll(fd, reinterpret_cast<const char*>(digest.data()), digest.size(),
                               &err);
    }
    // The data must be on disk before the rename makes it the context's file.
    if (err == 0 && ::fsync(fd) != 0) err = errno;
    if (st.ok() && err != 0) {
      st = ErrnoStatus(absl::StrCat("error writing '", tmp, "' (disk full?)"), err);
    }
  }
  ::close(fd);
  if (!st.ok()) {
    ::unlink(tmp.c_str());
    return st;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return ErrnoStatus(absl::StrCat("cannot rename '", tmp, "'"), err);
  }
  // The rename itself is durable only once the directory is synced.
  const std::string dir = std::filesystem::path(path).parent_path().string();
  if (const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return absl::OkStatus();
}

absl::Status VerifyContextChecksum(std::istream& in, uint64_t size) {
  if (size < sizeof(kMagic) + kDigestBytes) {
    return absl::DataLossError(absl::StrCat("file of ", size, " bytes is truncated"));
  }
  Sha256 sha;
  // Read in chunks of at most 1 MiB (a context file may be gigabytes).
  std::vector<char> buf(static_cast<size_t>(std::min<uint64_t>(size, 1 << 20)));
  for (uint64_t left = size - kDigestBytes; left > 0;) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(left, buf.size()));
    if (!in.read(buf.data(), static_cast<std::streamsize>(n))) {
      return absl::DataLossError("file is truncated");
    }
    sha.Update(buf.data(), n);
    left -= n;
  }
  Sha256::Digest stored{};
  if (!in.read(reinterpret_cast<char*>(stored.data()), kDigestBytes)) {
    return absl::DataLossError("file is truncated");
  }
  if (sha.Final() != stored) {
    return absl::DataLossError("checksum mismatch: the file is corrupted");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<RegisteredContext>> ParseContextFile(std::istream& in, uint64_t size,
                                                                    const std::string& fingerprint,
                                                                    DType kv_dtype,
                                                                    ContextFileInfo* info) {
  char magic[sizeof(kMagic)];
  if (size < sizeof(magic) || !in.read(magic, sizeof(magic)) ||
      std::memcmp(magic, kMagic, sizeof(kMagic)) != 0) {
    return absl::DataLossError("not a Squeeze context file");
  }
  BinaryReader r(&in, size - sizeof(magic));
  uint32_t version = 0;
  RETURN_IF_ERROR(r.Pod(&version));
  if (version < kOldestContextFileVersion || version > kContextFileVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "context file version ", version, " (this server reads versions ",
        kOldestContextFileVersion, " to ", kContextFileVersion, "); register the context again"));
  }
  std::string file_fingerprint;
  RETURN_IF_ERROR(r.String(&file_fingerprint));
  if (file_fingerprint != fingerprint) {
    return absl::FailedPreconditionError("written for a different model");
  }
  auto c = std::make_shared<RegisteredContext>();
  ContextSummary& s = c->summary;
  RETURN_IF_ERROR(r.String(&s.tenant));
  RETURN_IF_ERROR(r.String(&s.name));
  RETURN_IF_ERROR(r.String(&s.content_hash));
  RETURN_IF_ERROR(r.Pod(&s.created_unix));
  RETURN_IF_ERROR(r.Pod(&s.timings));
  RETURN_IF_ERROR(r.Vector(&c->tokens));
  int32_t L = 0, H = 0, d = 0, S = 0;
  RETURN_IF_ERROR(r.Pod(&L));
  RETURN_IF_ERROR(r.Pod(&H));
  RETURN_IF_ERROR(r.Pod(&d));
  RETURN_IF_ERROR(r.Pod(&S));
  c->kv.shape = {L, H, d};
  c->kv.num_tokens = S;
  DType stored = DType::kF32;  // version 2: always fp32
  if (version >= 3) {
    uint8_t code = 0;
    RETURN_IF_ERROR(r.Pod(&code));
    if (code != static_cast<uint8_t>(DType::kF32) && code != static_cast<uint8_t>(DType::kBF16)) {
      return absl::DataLossError(absl::StrCat("unknown KV dtype ", static_cast<int>(code)));
    }
    stored = static_cast<DType>(code);
  }
  RETURN_IF_ERROR(ReadKv(r, stored, kv_dtype, &c->kv.k));
  RETURN_IF_ERROR(ReadKv(r, stored, kv_dtype, &c->kv.v));
  RETURN_IF_ERROR(r.Vector(&c->kv.token_of));
  if (L <= 0 || H <= 0 || d <= 0 || S <= 0 || c->tokens.size() != static_cast<size_t>(S)) {
    return absl::DataLossError("inconsistent KV shape");
  }
  const uint64_t rows = static_cast<uint64_t>(L) * H * S;
  if (c->kv.k.size() / d != rows || c->kv.k.size() % d != 0 || c->kv.v.size() != c->kv.k.size() ||
      c->kv.token_of.size() != rows) {
    return absl::DataLossError("inconsistent KV sizes");
  }
  for (int32_t t : c->kv.token_of) {
    if (t < 0 || t >= S) return absl::DataLossError("KV row position out of range");
  }
  if (HashTokens(c->tokens) != s.content_hash) return absl::DataLossError("content hash mismatch");
  uint8_t has_index = 0;
  RETURN_IF_ERROR(r.Pod(&has_index));
  RETURN_IF_ERROR(ReadOptions(r, version, &s.index_options));
  if (has_index > 1) return absl::DataLossError("bad index flag");
  if (has_index) {
    ASSIGN_OR_RETURN(SqueezeIndex index, ReadSqueezeIndex(in));
    RETURN_IF_ERROR(CheckIndexMatchesKv(index, c->kv));
    c->index = std::make_unique<SqueezeIndex>(std::move(index));
  }
  if (const std::streamoff end = in.tellg(); end < 0 || static_cast<uint64_t>(end) != size) {
    return absl::DataLossError("trailing bytes after the context");
  }
  if (info != nullptr) *info = {.version = version, .kv_dtype = stored};
  s.num_tokens = S;
  s.kv_bytes = static_cast<int64_t>(c->kv.bytes());  // as held here (converted)
  s.has_index = c->index != nullptr;
  if (c->index) {
    s.num_centroids = c->index->num_centroids();
    s.num_coarse_centroids = c->index->num_coarse_centroids();
  }
  return c;
}

absl::StatusOr<std::shared_ptr<RegisteredContext>> ReadContextFile(const std::string& path,
                                                                   const std::string& fingerprint,
                                                                   DType kv_dtype,
                                                                   ContextFileInfo* info) {
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(path, ec);
  if (ec) return absl::NotFoundError(absl::StrCat("cannot stat '", path, "': ", ec.message()));
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open '", path, "'"));
  RETURN_IF_ERROR(VerifyContextChecksum(in, size));
  in.clear();
  in.seekg(0);
  return ParseContextFile(in, size - kDigestBytes, fingerprint, kv_dtype, info);
}

}  // namespace squeeze
