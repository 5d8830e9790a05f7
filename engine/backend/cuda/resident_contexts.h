// Registered contexts on the GPU: each context's K/V (bf16, storage order) and its Squeezed
// Attention tables (bf16 centroids, sizes, CSR offsets of every layer and KV head), made
// resident on first use (or adopted from the registration's prefill KV) and kept with the
// context (BackendCache); when device memory runs short, copies not used since the last sync are
// evicted, least recently used first, and uploaded again on their next use.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/backend/cluster_tables.h"
#include "engine/backend/cuda/cuda_device.h"
#include "engine/backend/kv_cache.h"
#include "kernels/common/types.cuh"

namespace squeeze {

struct DeviceContextKv;

class ResidentContexts {
 public:
  explicit ResidentContexts(CudaDevice& dev) : dev_(dev) {}

  // Device memory kept free for activations, scratch and workspaces when a context's K/V is
  // made resident (idle contexts are evicted to keep it): max(2 GiB, 3% of the device).
  static size_t Headroom(size_t total_bytes);

  // Backend::ResidentContextKv / AdoptContextKv.
  absl::StatusOr<ContextKvView> Kv(const ContextKV& ctx);
  void Adopt(const ContextKV& ctx, SequenceKV&& source);

  // The device descriptors of every KV head h < kv_heads of `tables` at `layer`, over that
  // layer's context K/V `kv` (heads kv.head_stride apart), into out[0, Hkv): the fine level, or
  // the coarse level (whose "rows" are fine clusters: no K/V, sinks or window). Makes the tables
  // resident. False (fault recorded) when they do not match the context or cannot be uploaded.
  bool HeadDescs(const ClusterTables& tables, int layer, const KvSlice& kv, int kv_heads,
                 bool coarse, gpu::SqueezeHeadDesc* out, int* max_clusters);

 private:
  // Frees idle resident context copies until `bytes` fit next to the headroom; returns how many.
  int Evict(size_t bytes);
  absl::StatusOr<const void*> Tables(const ClusterTables& tables);

  CudaDevice& dev_;
  std::vector<std::weak_ptr<DeviceContextKv>> residents_;  // for eviction, LRU by last epoch
};

}  // namespace squeeze
