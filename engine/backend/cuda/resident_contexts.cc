#include "engine/backend/cuda/resident_contexts.h"

#include <algorithm>
#include <span>
#include <utility>

#include "absl/strings/str_format.h"
#include "engine/common/bfloat16.h"
#include "engine/common/status_macros.h"
#include "kernels/attention/kv_gather.cuh"
#include "kernels/ops/convert.cuh"

namespace squeeze {

using gpu::bf16;

// A registered context's K/V on the device, kept in ContextKV::resident. Evicted (k and v
// released) when another context needs the memory; the next use uploads it again.
struct DeviceContextKv {
  const void* owner = nullptr;  // the ResidentContexts that made it
  std::unique_ptr<Buffer> k, v;
  size_t bytes = 0;
  uint64_t last_epoch = 0;  // the device's sync epoch of the last use
};

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
// Host fp32 K/V (a context held in fp32, e.g. made from a host SequenceKV) reaches the device
// through a staging buffer of this size and is converted to bf16 there; bf16 K/V is copied as is.
constexpr size_t kStagingFloats = size_t{16} << 20;

// One level's tables of every (layer, KV head) on the device: centroids (bf16), sizes, CSR
// offsets, concatenated.
struct DeviceSqueezeLevel {
  std::unique_ptr<Buffer> centroids, sizes, offsets;
  std::vector<size_t> centroid_at, table_at;  // [L * Hkv]: first centroid, first size entry
  int max_clusters = 0;
};
// The fine level (offsets: storage rows) and, for a hierarchical index, the coarse level
// (offsets: fine clusters). Kept in ClusterTables::resident.
struct DeviceSqueezeIndex {
  DeviceSqueezeLevel fine, coarse;
};

// One level on the host: centroids rounded to bf16 (to nearest even, as __float2bfloat16_rn),
// sizes, and the C + 1 CSR offsets of head i at table_at[i] + i.
struct HostSqueezeLevel {
  std::vector<uint16_t> centroids;
  std::vector<int32_t> sizes, offsets;
};

void AppendLevel(std::span<const float> centroids, std::span<const int32_t> sizes,
                 std::span<const int32_t> offsets, int d, HostSqueezeLevel* host,
                 DeviceSqueezeLevel* level) {
  level->centroid_at.push_back(host->centroids.size() / d);
  level->table_at.push_back(host->sizes.size());
  level->max_clusters = std::max(level->max_clusters, static_cast<int>(sizes.size()));
  for (float c : centroids) host->centroids.push_back(Float32ToBFloat16(c));
  host->sizes.insert(host->sizes.end(), sizes.begin(), sizes.end());
  host->offsets.insert(host->offsets.end(), offsets.begin(), offsets.end());
}

absl::Status UploadLevel(CudaDevice& dev, const HostSqueezeLevel& host, DeviceSqueezeLevel* level) {
  ASSIGN_OR_RETURN(level->centroids, dev.Allocate(std::max<size_t>(host.centroids.size(), 1) * 2));
  ASSIGN_OR_RETURN(level->sizes, dev.Allocate(std::max<size_t>(host.sizes.size(), 1) * 4));
  ASSIGN_OR_RETURN(level->offsets, dev.Allocate(std::max<size_t>(host.offsets.size(), 1) * 4));
  dev.Check(cudaMemcpy(level->centroids->data(), host.centroids.data(), host.centroids.size() * 2,
                       cudaMemcpyHostToDevice),
            "index upload");
  dev.Check(cudaMemcpy(level->sizes->data(), host.sizes.data(), host.sizes.size() * 4,
                       cudaMemcpyHostToDevice),
            "index upload");
  dev.Check(cudaMemcpy(level->offsets->data(), host.offsets.data(), host.offsets.size() * 4,
                       cudaMemcpyHostToDevice),
            "index upload");
  return dev.fault();
}

}  // namespace

size_t ResidentContexts::Headroom(size_t total_bytes) {
  return std::max<size_t>(size_t{2} << 30, total_bytes / 100 * 3);
}

// The resident copy gathered on the device from the prefill's KV: storage row r of (layer, h)
// is token row ctx.token_of[(layer * Hkv + h) * S + r] of the source. About 10 ms at 128K
// tokens on the 8B shape, against seconds for the upload of the 17 GB bf16 host copy.
void ResidentContexts::Adopt(const ContextKV& ctx, SequenceKV&& source) {
  if (!dev_.ok() || ctx.num_tokens <= 0 || source.dtype() != DType::kBF16 ||
      source.length() < ctx.num_tokens || source.shape().num_layers != ctx.shape.num_layers ||
      source.shape().num_kv_heads != ctx.shape.num_kv_heads ||
      source.shape().head_dim != ctx.shape.head_dim || ctx.resident.value != nullptr) {
    return;
  }
  const int L = ctx.shape.num_layers, H = ctx.shape.num_kv_heads, d = ctx.shape.head_dim;
  const int S = ctx.num_tokens;
  auto copy = std::make_shared<DeviceContextKv>();
  copy->owner = this;
  const size_t count = ctx.k.size();
  copy->bytes = 2 * count * sizeof(bf16);
  Evict(copy->bytes);
  auto k = dev_.Allocate(count * sizeof(bf16));
  auto v = k.ok() ? dev_.Allocate(count * sizeof(bf16)) : k.status();
  auto rows = v.ok() ? dev_.Allocate(ctx.token_of.size() * sizeof(int32_t)) : v.status();
  auto begin = rows.ok() ? dev_.Allocate((H + 1) * sizeof(int32_t)) : rows.status();
  if (!begin.ok()) return;  // no room now: the first use uploads the host copy
  copy->k = *std::move(k);
  copy->v = *std::move(v);
  std::vector<int32_t> head_begin(H + 1);
  for (int h = 0; h <= H; ++h) head_begin[h] = h * S;
  dev_.CopyFromHost((*rows)->data(), ctx.token_of.data(), ctx.token_of.size() * sizeof(int32_t));
  dev_.CopyFromHost((*begin)->data(), head_begin.data(), head_begin.size() * sizeof(int32_t));
  const size_t src_head_stride =
      static_cast<size_t>(source.capacity()) * d;  // rows of a head are capacity apart
  for (int l = 0; l < L && dev_.ok(); ++l) {
    dev_.Check(
        gpu::LaunchGatherKvRows(
            static_cast<const bf16*>(source.key_data(l, 0, 0)),
            static_cast<const bf16*>(source.value_data(l, 0, 0)), src_head_stride,
            (*rows)->as<int32_t>() + static_cast<size_t>(l) * H * S, (*begin)->as<int32_t>(), H, S,
            d, copy->k->as<bf16>() + ctx.Offset(l, 0, 0), copy->v->as<bf16>() + ctx.Offset(l, 0, 0),
            static_cast<size_t>(S) * d, dev_.stream()),
        "adopt context");
  }
  if (!dev_.Synchronize().ok()) return;  // the source is released by the caller after this
  copy->last_epoch = dev_.epoch();
  ctx.resident.value = copy;
  residents_.push_back(copy);
}

// Frees resident context copies not used since the last Synchronize(), least recently used
// first, until `bytes` plus the headroom are free. Returns the number evicted.
int ResidentContexts::Evict(size_t bytes) {
  std::erase_if(residents_, [](const std::weak_ptr<DeviceContextKv>& w) {
    const auto p = w.lock();
    return p == nullptr || p->k == nullptr;
  });
  size_t free_bytes = 0, total = 0;
  if (cudaMemGetInfo(&free_bytes, &total) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  const size_t want = bytes + Headroom(total);
  if (free_bytes >= want) return 0;
  dev_.TrimPool();  // cached blocks first
  cudaMemGetInfo(&free_bytes, &total);
  int evicted = 0;
  while (free_bytes < want) {
    std::shared_ptr<DeviceContextKv> oldest;
    for (const auto& w : residents_) {
      auto p = w.lock();
      if (p != nullptr && p->k != nullptr && p->last_epoch < dev_.epoch() &&
          (oldest == nullptr || p->last_epoch < oldest->last_epoch)) {
        oldest = std::move(p);
      }
    }
    if (oldest == nullptr) break;
    oldest->k.reset();
    oldest->v.reset();
    dev_.TrimPool();  // the released blocks went to the pool's cache: back to the driver
    ++evicted;
    cudaMemGetInfo(&free_bytes, &total);
  }
  return evicted;
}

absl::StatusOr<ContextKvView> ResidentContexts::Kv(const ContextKV& ctx) {
  if (!dev_.ok()) return dev_.fault();
  std::shared_ptr<DeviceContextKv> copy;
  if (ctx.resident.value != nullptr &&
      static_cast<const DeviceContextKv*>(ctx.resident.value.get())->owner == this) {
    copy = std::static_pointer_cast<DeviceContextKv>(ctx.resident.value);
    copy->last_epoch = dev_.epoch();
    if (copy->k != nullptr) return ContextKvView{copy->k->data(), copy->v->data()};
  } else {
    copy = std::make_shared<DeviceContextKv>();
    copy->owner = this;
  }
  // First use, or evicted since: upload (bf16), making room by evicting idle contexts.
  const size_t count = ctx.k.size();
  copy->bytes = 2 * count * sizeof(bf16);
  const int evicted = Evict(copy->bytes);
  auto k = dev_.Allocate(count * sizeof(bf16));
  auto v = k.ok() ? dev_.Allocate(count * sizeof(bf16)) : k.status();
  if (!k.ok() || !v.ok()) {
    size_t free_bytes = 0, total = 0;
    cudaMemGetInfo(&free_bytes, &total);
    cudaGetLastError();
    return absl::ResourceExhaustedError(absl::StrFormat(
        "cuda: the context's K/V needs %.2f GiB on the GPU (%d tokens); %.2f GiB of %.2f GiB "
        "are free after evicting %d idle contexts (contexts in use by this step stay)",
        copy->bytes / kGiB, ctx.num_tokens, free_bytes / kGiB, total / kGiB, evicted));
  }
  copy->k = *std::move(k);
  copy->v = *std::move(v);
  if (ctx.dtype() == DType::kBF16) {
    // The host copy is already what the device keeps: one copy each, no conversion.
    for (const auto& [src, dst] :
         {std::pair(ctx.k.data(), copy->k->data()), std::pair(ctx.v.data(), copy->v->data())}) {
      dev_.Check(
          cudaMemcpyAsync(dst, src, count * sizeof(bf16), cudaMemcpyHostToDevice, dev_.stream()),
          "context upload");
    }
  } else {
    float* staging = static_cast<float*>(dev_.Scratch(kStaging, kStagingFloats * sizeof(float)));
    if (staging == nullptr) return dev_.fault();
    for (const auto& [src, dst] : {std::pair(ctx.k.f32(), copy->k->as<bf16>()),
                                   std::pair(ctx.v.f32(), copy->v->as<bf16>())}) {
      for (size_t done = 0; done < count && dev_.ok(); done += kStagingFloats) {
        const size_t chunk = std::min(kStagingFloats, count - done);
        dev_.Check(cudaMemcpyAsync(staging, src + done, chunk * sizeof(float),
                                   cudaMemcpyHostToDevice, dev_.stream()),
                   "context upload");
        dev_.Check(gpu::LaunchF32ToBf16(staging, dst + done, chunk, dev_.stream()),
                   "context convert");
      }
    }
  }
  // The staging buffer is reused by the next upload. (Not Synchronize(): that would end the
  // epoch and expose the contexts this step already uses to eviction.)
  dev_.Check(cudaStreamSynchronize(dev_.stream()), "context upload");
  if (!dev_.ok()) return dev_.fault();
  ctx.resident.value = copy;
  residents_.push_back(copy);  // new, or dropped from the list when it was evicted
  return ContextKvView{copy->k->data(), copy->v->data()};
}

absl::StatusOr<const void*> ResidentContexts::Tables(const ClusterTables& tables) {
  if (const auto* copy = tables.resident->Get<const DeviceSqueezeIndex>(this)) return copy;
  auto copy = std::make_shared<DeviceSqueezeIndex>();
  const int d = tables.head_dim;
  HostSqueezeLevel fine, coarse;
  for (const SqueezeHeadIndex& h : tables.heads) {
    AppendLevel(h.centroids, h.sizes, h.offsets, d, &fine, &copy->fine);
    if (tables.has_coarse()) {
      AppendLevel(h.coarse_centroids, h.coarse_sizes, h.coarse_offsets, d, &coarse, &copy->coarse);
    }
  }
  RETURN_IF_ERROR(UploadLevel(dev_, fine, &copy->fine));
  if (tables.has_coarse()) RETURN_IF_ERROR(UploadLevel(dev_, coarse, &copy->coarse));
  tables.resident->Set(this, copy);
  return copy.get();
}

bool ResidentContexts::HeadDescs(const ClusterTables& tables, int layer, const KvSlice& kv,
                                 int kv_heads, bool coarse, gpu::SqueezeHeadDesc* out,
                                 int* max_clusters) {
  const int S = kv.num_rows, d = tables.head_dim;
  if (layer < 0 || layer >= tables.num_layers || tables.num_kv_heads != kv_heads ||
      tables.num_tokens != S || (coarse && !tables.has_coarse())) {
    dev_.Check(cudaErrorInvalidValue, "squeezed attention: the index does not match the context");
    return false;
  }
  auto resident = Tables(tables);
  if (!resident.ok()) {
    dev_.SetFault(resident.status());
    return false;
  }
  const auto* index = static_cast<const DeviceSqueezeIndex*>(*resident);
  const DeviceSqueezeLevel& level = coarse ? index->coarse : index->fine;
  const auto* centroids = static_cast<const bf16*>(level.centroids->data());
  const auto* sizes = static_cast<const int32_t*>(level.sizes->data());
  const auto* offsets = static_cast<const int32_t*>(level.offsets->data());
  for (int h = 0; h < kv_heads; ++h) {
    const size_t slot = static_cast<size_t>(layer) * kv_heads + h;
    const SqueezeHeadIndex& head = tables.heads[slot];
    gpu::SqueezeHeadDesc& e = out[h];
    e.centroids = centroids + level.centroid_at[slot] * d;
    e.sizes = sizes + level.table_at[slot];
    e.offsets = offsets + level.table_at[slot] + slot;  // C + 1 offsets per head
    if (coarse) {
      e.k = e.v = nullptr;
      e.num_clusters = head.num_coarse();
      e.num_rows = head.num_clusters();
      e.sinks = e.window = 0;
    } else {
      e.k = static_cast<const bf16*>(kv.k) + h * kv.head_stride;
      e.v = static_cast<const bf16*>(kv.v) + h * kv.head_stride;
      e.num_clusters = head.num_clusters();
      e.num_rows = S;
      e.sinks = tables.sinks;
      e.window = tables.window;
    }
  }
  *max_clusters = level.max_clusters;
  return true;
}

}  // namespace squeeze
