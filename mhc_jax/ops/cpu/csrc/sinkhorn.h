// The Sinkhorn of the mHC coefficients and its exact VJP, on blocks of 16 tokens.
//
// One token per vector lane: m[i * N + j] holds entry (i, j) of 16 matrices. Paper layout
// (rows i read columns j); DeepSeek's sequence (docs/math.md §3): column softmax + eps, a
// row pass, then (column, row) passes num_iters - 1 times. Passes scale by 1 / (sum + eps),
// one division per row or column.

#ifndef MHC_JAX_OPS_CPU_CSRC_SINKHORN_H_
#define MHC_JAX_OPS_CPU_CSRC_SINKHORN_H_

#include <algorithm>
#include <cstdint>

#include "simd.h"

namespace mhc_jax::cpu {
namespace {  // internal linkage, see simd.h

// Entry b of row a (ROWS) or of column a.
template <int N, bool ROWS>
constexpr int At(int a, int b) {
  return ROWS ? a * N + b : b * N + a;
}

template <int N, bool ROWS>
inline void Normalize(v16* m, v16* sums, float eps) {
  for (int a = 0; a < N; ++a) {
    v16 s = {};
    for (int b = 0; b < N; ++b) s += m[At<N, ROWS>(a, b)];
    sums[a] = s;
    const v16 inv = 1.f / (s + eps);
    for (int b = 0; b < N; ++b) m[At<N, ROWS>(a, b)] *= inv;
  }
}

// What the backward keeps per block: the softmax, then each pass's output and sums.
template <int N>
constexpr int64_t TraceSize(int64_t iters) {
  return N * N + (2 * iters - 1) * (N * N + N);
}

// h_res from the res logits; with `trace`, keeps what SinkhornBackward needs.
template <int N>
inline void SinkhornForward(const v16* logits, v16* out, int64_t iters, float eps, v16* trace) {
  v16 m[N * N], sums[N];
  for (int j = 0; j < N; ++j) {  // column softmax
    v16 mx = logits[j];
    for (int i = 1; i < N; ++i) mx = mx > logits[i * N + j] ? mx : logits[i * N + j];
    v16 s = {};
    for (int i = 0; i < N; ++i) s += (m[i * N + j] = Exp(logits[i * N + j] - mx));
    for (int i = 0; i < N; ++i) m[i * N + j] /= s;
  }
  if (trace) {
    std::copy(m, m + N * N, trace);
    trace += N * N;
  }
  for (int k = 0; k < N * N; ++k) m[k] += eps;
  auto pass = [&]<bool ROWS>() {
    Normalize<N, ROWS>(m, sums, eps);
    if (trace) {
      std::copy(m, m + N * N, trace);
      std::copy(sums, sums + N, trace + N * N);
      trace += N * N + N;
    }
  };
  pass.template operator()<true>();
  for (int64_t it = 1; it < iters; ++it) {
    pass.template operator()<false>();
    pass.template operator()<true>();
  }
  std::copy(m, m + N * N, out);
}

// g holds dL/dh_res on entry and dL/dlogits on exit. The VJP of y = x / (s + eps),
// s = sum(x) along the pass's axis, is (g - sum(g * y)) / (s + eps).
template <int N, bool ROWS>
inline void NormalizeBackward(v16* g, const v16* y, const v16* sums, float eps) {
  for (int a = 0; a < N; ++a) {
    v16 d = {};
    for (int b = 0; b < N; ++b) d += g[At<N, ROWS>(a, b)] * y[At<N, ROWS>(a, b)];
    const v16 inv = 1.f / (sums[a] + eps);
    for (int b = 0; b < N; ++b) g[At<N, ROWS>(a, b)] = (g[At<N, ROWS>(a, b)] - d) * inv;
  }
}

template <int N>
inline void SinkhornBackward(v16* g, int64_t iters, float eps, const v16* trace) {
  auto pass = [&]<bool ROWS>(int64_t step) {
    const v16* y = trace + N * N + step * (N * N + N);
    NormalizeBackward<N, ROWS>(g, y, y + N * N, eps);
  };
  for (int64_t step = 2 * iters - 2; step > 0; step -= 2) {  // (column, row) pairs, last first
    pass.template operator()<true>(step);
    pass.template operator()<false>(step - 1);
  }
  pass.template operator()<true>(0);
  const v16* softmax = trace;
  for (int j = 0; j < N; ++j) {
    v16 d = {};
    for (int i = 0; i < N; ++i) d += g[i * N + j] * softmax[i * N + j];
    for (int i = 0; i < N; ++i) g[i * N + j] = softmax[i * N + j] * (g[i * N + j] - d);
  }
}

}  // namespace
}  // namespace mhc_jax::cpu

#endif  // MHC_JAX_OPS_CPU_CSRC_SINKHORN_H_
