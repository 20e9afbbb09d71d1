// Vectors, vector math and the loops every kernel is built from.
//
// Vectors are GCC/Clang vector extensions of 16 floats (one AVX-512 register; the compiler
// splits them on narrower targets). Work is split over XLA's intra-op thread pool in fixed
// ranges, so every result is the same whatever the thread count.

#ifndef MHC_JAX_OPS_CPU_CSRC_SIMD_H_
#define MHC_JAX_OPS_CPU_CSRC_SIMD_H_

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace mhc_jax::cpu {

namespace ffi = xla::ffi;

// The headers under csrc/ are parts of one translation unit (ffi.cc), and what they define
// has internal linkage (an unnamed namespace), as when the kernels were one file: with
// external linkage GCC kept out-of-line copies of these functions and inlined less.
namespace {

typedef float v16 __attribute__((vector_size(64)));

// Shared with Python (mhc_jax/ops/cpu/build.py checks them at load, see ffi.cc).
constexpr int64_t kLanes = 16;      // floats per vector: the forward pads phi to whole vectors
constexpr int64_t kGradSlots = 8;   // partial weight-gradient sums (see OverGradSlots)
constexpr int64_t kMaxStreams = 8;  // N is a template parameter, 1..kMaxStreams

inline v16 load(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void store(float* p, v16 v) { std::memcpy(p, &v, sizeof(v)); }
inline v16 splat(float s) { return v16{} + s; }
inline float hsum(v16 v) {  // by halving (no memcpy: that would keep v's source in memory)
  typedef float v8 __attribute__((vector_size(32)));
  typedef float v4 __attribute__((vector_size(16)));
  const v8 h = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
               __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const v4 q = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
  return (q[0] + q[2]) + (q[1] + q[3]);
}

// exp on 16 lanes: 2^k * 2^f with k = round(z log2 e), |f| <= 1/2, and a degree-6
// polynomial for 2^f (relative error ~2e-7, like libm's expf to about 1 ulp).
inline v16 Exp(v16 z) {
  z = z < -87.3f ? splat(-87.3f) : z;
  z = z > 88.3f ? splat(88.3f) : z;
  const v16 t = z * 1.44269504088896341f;
  v16 k = t;  // rounded lane by lane (every lane written, so k is never read uninitialized)
  for (int l = 0; l < kLanes; ++l) k[l] = std::nearbyint(k[l]);
  const v16 f = (z - k * 0.693359375f) + k * 2.12194440e-4f;  // z - k ln2, ln2 in two parts
  v16 p = splat(1.9875691500e-4f);
  p = p * f + 1.3981999507e-3f;
  p = p * f + 8.3334519073e-3f;
  p = p * f + 4.1665795894e-2f;
  p = p * f + 1.6666665459e-1f;
  p = p * f + 5.0000001201e-1f;
  p = p * f * f + f + 1.f;
  typedef int32_t i16 __attribute__((vector_size(64)));
  const i16 bits = (__builtin_convertvector(k, i16) + 127) << 23;
  v16 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}
inline v16 Sigmoid(v16 z) { return 1.f / (1.f + Exp(-z)); }

// ------------------------------------------------------------------------ loops over C
// Loops over C run body(q, chunk) on whole vectors, then once on the ragged tail with a
// zero-padded vector (zeros add nothing to the dot products; stores write the tail only).
// The bodies keep their sums in arrays of v16 that GCC holds in registers this way; with
// a scalar tail loop it kept them on the stack.

struct Whole {
  static v16 Load(const float* p) { return load(p); }
  static void Store(float* p, v16 v) { store(p, v); }
};
struct Tail {  // element loops, not memcpy: a call would push the sums out of registers
  int64_t n;  // < 16 floats left in the row
  v16 Load(const float* p) const {
    v16 v = {};
    for (int64_t l = 0; l < n; ++l) v[l] = p[l];
    return v;
  }
  void Store(float* p, v16 v) const {
    for (int64_t l = 0; l < n; ++l) p[l] = v[l];
  }
};

template <class Body>
inline __attribute__((always_inline)) void OverC(int64_t c, Body&& body) {
  int64_t q = 0;
  for (; q + kLanes <= c; q += kLanes) body(q, Whole{});
  if (q < c) body(q, Tail{c - q});
}

// ------------------------------------------------------------------------- threading

// Runs f(begin, end) over [0, n) in chunks, on the calling thread and XLA's intra-op pool.
// Helpers claim chunks from a shared counter and exit when none are left, so the caller
// only ever waits for chunks that are already running: no deadlock if the pool is busy.
template <class F>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, int64_t min_chunk, const F& f) {
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t chunks = std::min<int64_t>(threads * 4, (n + min_chunk - 1) / min_chunk);
  if (chunks <= 1) {
    f(0, n);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto state = std::make_shared<State>();
  const int64_t per = (n + chunks - 1) / chunks;
  auto run = [state, chunks, per, n, &f]() {
    for (int64_t i; (i = state->next.fetch_add(1)) < chunks;) {
      f(std::min(n, i * per), std::min(n, (i + 1) * per));
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t i = 1; i < std::min(threads, chunks); ++i) pool.Schedule(decltype(run)(run));
  run();
  while (state->done.load(std::memory_order_acquire) < chunks) std::this_thread::yield();
}

// Splits `blocks` into kGradSlots fixed ranges; f(slot's g_w, block) runs with the slot's
// g_w partial sum zeroed first. The slots are summed by the caller (in Python): the same
// sums whatever the thread count.
template <class F>
void OverGradSlots(ffi::ThreadPool& pool, int64_t blocks, float* g_w_parts, int64_t slot_size, const F& f) {
  const int64_t per_slot = (blocks + kGradSlots - 1) / kGradSlots;
  ParallelFor(pool, kGradSlots, 1, [&](int64_t begin, int64_t end) {
    for (int64_t slot = begin; slot < end; ++slot) {
      float* g_w = g_w_parts + slot * slot_size;
      std::fill(g_w, g_w + slot_size, 0.f);
      for (int64_t blk = slot * per_slot; blk < std::min(blocks, (slot + 1) * per_slot); ++blk) f(g_w, blk);
    }
  });
}

}  // namespace
}  // namespace mhc_jax::cpu

#endif  // MHC_JAX_OPS_CPU_CSRC_SIMD_H_
