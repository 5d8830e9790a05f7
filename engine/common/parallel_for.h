// A blocking parallel loop for independent host-side work items (per (layer, KV head) copies
// and conversions of a context's KV): fn(i) for every i in [0, n), spread over up to
// `max_threads` threads (0: the hardware's), each taking the next index. fn must be safe to
// call concurrently for different i.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <thread>
#include <vector>

namespace squeeze {

template <class Fn>
void ParallelFor(size_t n, Fn&& fn, unsigned max_threads = 0) {
  unsigned threads = max_threads != 0 ? max_threads : std::thread::hardware_concurrency();
  threads = static_cast<unsigned>(std::min<size_t>(std::max(threads, 1u), n));
  if (threads <= 1) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(i);
  };
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  for (unsigned t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (std::thread& t : pool) t.join();
}

}  // namespace squeeze
