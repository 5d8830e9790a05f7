// Shared-memory mbarriers and register reallocation for warp-specialised Hopper kernels (a
// producer warpgroup filling pipeline stages, consumer warpgroups computing on them): init,
// arrive, arrive-on-cp.async, arrive with an expected TMA byte count, parity wait, and
// setmaxnreg. Device code only; setmaxnreg needs sm_90a (SQUEEZE_WGMMA, kernels/common/wgmma.cuh).
#pragma once

#include <cstdint>

#include "kernels/common/wgmma.cuh"

namespace squeeze::gpu::detail {

__device__ __forceinline__ void MbarInit(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void MbarArrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Arrives when every cp.async this thread issued before has landed (counts as one arrival).
__device__ __forceinline__ void MbarArriveOnCopies(uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
// One thread's arrival that also expects `bytes` of TMA transactions before the phase completes.
__device__ __forceinline__ void MbarArriveExpectTx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
// Waits until the phase of the given parity has completed.
__device__ __forceinline__ void MbarWait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\nwait_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait_%=;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}

template <int kRegs>
__device__ __forceinline__ void SetMaxRegsInc() {
#ifdef SQUEEZE_WGMMA
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
#endif
}
template <int kRegs>
__device__ __forceinline__ void SetMaxRegsDec() {
#ifdef SQUEEZE_WGMMA
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
#endif
}

}  // namespace squeeze::gpu::detail
