// The stream mixes: the pre-apply u = sum_i h_pre[i] x_i and the post/res merge
// x'_i = sum_j h_res[i, j] x_j + h_post[i] y, with their VJPs; the per-token contractions
// over C (dH_pre, dH_post, dH_res) run in the same pass (docs/math.md §5).

#ifndef MHC_JAX_OPS_CPU_CSRC_STREAM_H_
#define MHC_JAX_OPS_CPU_CSRC_STREAM_H_

#include <cstdint>

#include "simd.h"

namespace mhc_jax::cpu {
namespace {  // internal linkage, see simd.h

// u = sum_i h[i] x_i for one token (x_t [N, C]).
template <int N>
inline void PreToken(const float* xt, const float* h, int64_t c, float* ut) {
  OverC(c, [&](int64_t q, auto ch) {
    v16 acc = h[0] * ch.Load(xt + q);
    for (int i = 1; i < N; ++i) acc += h[i] * ch.Load(xt + i * c + q);
    ch.Store(ut + q, acc);
  });
}

// Its VJP for one token: g_x = g_in + h (x) g (g_in may be null) and g_h[i] = x_i . g.
template <int N>
inline void PreTokenBackward(const float* xt, const float* h, const float* gt, int64_t c,
                             const float* g_in, float* gxt, float* g_h) {
  v16 dot[N] = {};
  OverC(c, [&](int64_t q, auto ch) {
    const v16 gq = ch.Load(gt + q);
    for (int i = 0; i < N; ++i) {
      v16 gx = h[i] * gq;
      if (g_in) gx += ch.Load(g_in + i * c + q);
      ch.Store(gxt + i * c + q, gx);
      dot[i] += ch.Load(xt + i * c + q) * gq;
    }
  });
  for (int i = 0; i < N; ++i) g_h[i] = hsum(dot[i]);
}

template <int N>
void PreFwd(ffi::ThreadPool& pool, int64_t t, int64_t c, const float* x, const float* h, float* u) {
  ParallelFor(pool, t, 64, [&](int64_t begin, int64_t end) {
    for (int64_t tok = begin; tok < end; ++tok) PreToken<N>(x + tok * N * c, h + tok * N, c, u + tok * c);
  });
}

template <int N>
void PreBwd(ffi::ThreadPool& pool, int64_t t, int64_t c, const float* x, const float* h,
            const float* g, const float* g_in, float* g_x, float* g_h) {
  ParallelFor(pool, t, 64, [&](int64_t begin, int64_t end) {
    for (int64_t tok = begin; tok < end; ++tok)
      PreTokenBackward<N>(x + tok * N * c, h + tok * N, g + tok * c, c, g_in ? g_in + tok * N * c : nullptr,
                          g_x + tok * N * c, g_h + tok * N);
  });
}

template <int N>
void PostFwd(ffi::ThreadPool& pool, int64_t t, int64_t c, const float* x, const float* y,
             const float* h_post, const float* h_res, float* out) {
  ParallelFor(pool, t, 64, [&](int64_t begin, int64_t end) {
    for (int64_t tok = begin; tok < end; ++tok) {
      const float* xt = x + tok * N * c;
      const float* yt = y + tok * c;
      const float* hp = h_post + tok * N;
      const float* hr = h_res + tok * N * N;
      float* ot = out + tok * N * c;
      OverC(c, [&](int64_t q, auto ch) {
        v16 xs[N];
        for (int j = 0; j < N; ++j) xs[j] = ch.Load(xt + j * c + q);
        const v16 yq = ch.Load(yt + q);
        for (int i = 0; i < N; ++i) {
          v16 acc = hp[i] * yq;
          for (int j = 0; j < N; ++j) acc += hr[i * N + j] * xs[j];
          ch.Store(ot + i * c + q, acc);
        }
      });
    }
  });
}

template <int N>
void PostBwd(ffi::ThreadPool& pool, int64_t t, int64_t c, const float* x, const float* y,
             const float* h_post, const float* h_res, const float* g, float* g_x, float* g_y,
             float* g_h_post, float* g_h_res) {
  ParallelFor(pool, t, 64, [&](int64_t begin, int64_t end) {
    for (int64_t tok = begin; tok < end; ++tok) {
      const float* xt = x + tok * N * c;
      const float* yt = y + tok * c;
      const float* gt = g + tok * N * c;
      const float* hp = h_post + tok * N;
      const float* hr = h_res + tok * N * N;
      float* gxt = g_x + tok * N * c;
      float* gyt = g_y + tok * c;
      v16 d_post[N] = {}, d_res[N * N] = {};
      OverC(c, [&](int64_t q, auto ch) {
        v16 gs[N], xs[N];
        for (int i = 0; i < N; ++i) gs[i] = ch.Load(gt + i * c + q);
        for (int j = 0; j < N; ++j) xs[j] = ch.Load(xt + j * c + q);
        const v16 yq = ch.Load(yt + q);
        v16 gy = hp[0] * gs[0];
        for (int i = 1; i < N; ++i) gy += hp[i] * gs[i];
        ch.Store(gyt + q, gy);
        for (int j = 0; j < N; ++j) {  // g_x[j] = sum_i h_res[i, j] g[i]
          v16 acc = hr[j] * gs[0];
          for (int i = 1; i < N; ++i) acc += hr[i * N + j] * gs[i];
          ch.Store(gxt + j * c + q, acc);
        }
        for (int i = 0; i < N; ++i) {
          d_post[i] += gs[i] * yq;
          for (int j = 0; j < N; ++j) d_res[i * N + j] += gs[i] * xs[j];
        }
      });
      for (int i = 0; i < N; ++i) g_h_post[tok * N + i] = hsum(d_post[i]);
      for (int k = 0; k < N * N; ++k) g_h_res[tok * N * N + k] = hsum(d_res[k]);
    }
  });
}

}  // namespace
}  // namespace mhc_jax::cpu

#endif  // MHC_JAX_OPS_CPU_CSRC_STREAM_H_
