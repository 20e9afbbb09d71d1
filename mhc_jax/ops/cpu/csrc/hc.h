// HC's maps (docs/math.md §4) and their VJP, one token at a time, the pre-apply
// optionally fused in. For one token x_t [N, C], with K = N + 2 columns:
//   y[i][k] = (x_i . w[:, k]) r_i,  r_i = (mean(x_i^2) + eps)^(-1/2),  z = tanh(y),
//   h_pre[i] = s_alpha z[i][0] + a_pre[i],  h_post[i] = s_beta z[i][1] + b_post[i],
//   h_res[j][i] = s_alpha z[i][2 + j] + a_res[i][j]  (HC's A_r^T, in paper layout),
// then optionally u = sum_i h_pre[i] x_i while the token is still in cache. A stream row
// is only C long, so its K dots run along C, one accumulator per column (w comes
// transposed, [K, C]): K + 1 vector FMAs per 16 floats of x, where the mHC projection's
// broadcast form (coefficients.h) would pad the K columns to 16.

#ifndef MHC_JAX_OPS_CPU_CSRC_HC_H_
#define MHC_JAX_OPS_CPU_CSRC_HC_H_

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "simd.h"
#include "stream.h"

namespace mhc_jax::cpu {
namespace {  // internal linkage, see simd.h

inline v16 Tanh(v16 y) {  // odd; (1 - e^{-2|y|}) / (1 + e^{-2|y|}), ~1e-7 absolute error
  const v16 a = y < 0.f ? -y : y;
  const v16 e = Exp(-2.f * a);
  const v16 th = (1.f - e) / (1.f + e);
  return y < 0.f ? -th : th;
}

struct HcParams {
  const float* w_t;     // [K, C]
  const float* gates;   // (s_alpha, s_beta)
  const float* a_pre;   // [N]
  const float* b_post;  // [N]
  const float* a_res;   // [N, N]
  float eps;
};

template <int N>
struct Hc {
  static constexpr int K = N + 2;
  static constexpr int YP = (N * K + kLanes - 1) / kLanes * kLanes;  // y of a token, padded

  // y [N * K] and r [N] of token x_t.
  static void Project(const float* xt, int64_t c, const float* w_t, float eps, float* y, float* r) {
    for (int i = 0; i < N; ++i) {
      const float* xi = xt + i * c;
      v16 acc[K] = {}, sq = {};
      OverC(c, [&](int64_t q, auto ch) {
        const v16 xv = ch.Load(xi + q);
        sq += xv * xv;
        for (int k = 0; k < K; ++k) acc[k] += xv * ch.Load(w_t + k * c + q);
      });
      r[i] = 1.f / std::sqrt(hsum(sq) / c + eps);
      for (int k = 0; k < K; ++k) y[i * K + k] = hsum(acc[k]) * r[i];
    }
  }
};

template <int N>
void HcFwd(ffi::ThreadPool& pool, int64_t t, int64_t c, const float* x, const HcParams& hp,
           float* h_pre, float* h_post, float* h_res, float* u, float* z_out, float* y_out, float* r_out) {
  using S = Hc<N>;
  constexpr int K = S::K;
  const float s_alpha = hp.gates[0], s_beta = hp.gates[1];
  ParallelFor(pool, t, 64, [&](int64_t begin, int64_t end) {
    for (int64_t tok = begin; tok < end; ++tok) {
      const float* xt = x + tok * N * c;
      alignas(64) float y[S::YP] = {}, z[S::YP];
      S::Project(xt, c, hp.w_t, hp.eps, y, r_out + tok * N);
      for (int q = 0; q < S::YP; q += kLanes) store(z + q, Tanh(load(y + q)));
      std::copy(y, y + N * K, y_out + tok * N * K);
      std::copy(z, z + N * K, z_out + tok * N * K);
      float* hp_t = h_pre + tok * N;
      for (int i = 0; i < N; ++i) {
        hp_t[i] = s_alpha * z[i * K] + hp.a_pre[i];
        h_post[tok * N + i] = s_beta * z[i * K + 1] + hp.b_post[i];
        for (int j = 0; j < N; ++j)
          h_res[(tok * N + j) * N + i] = s_alpha * z[i * K + 2 + j] + hp.a_res[i * N + j];
      }
      if (u) PreToken<N>(xt, hp_t, c, u + tok * c);
    }
  });
}

// With g_y = g_z (1 - z^2), gh = g_y r and coef = sum_k(g_y y) r^2 / C (from dr/dx_i =
// -r^3 x_i / C): g_x_i = g_in_i + h_pre[i] g_u + gh[i] @ w^T - coef_i x_i, and
// g_w^T += gh^T x, summed per fixed token range (OverGradSlots). g_pre_all gets dL/dh_pre,
// the pre-apply's x_i . g_u included.
template <int N>
void HcBwd(ffi::ThreadPool& pool, int64_t t, int64_t c, const float* x, const HcParams& hp,
           const float* h_pre, const float* z_in, const float* y_in, const float* r_in,
           const float* g_pre, const float* g_post, const float* g_res, const float* g_u,
           const float* g_in, float* g_x, float* g_w_parts, float* g_pre_all) {
  constexpr int K = Hc<N>::K;
  const float s_alpha = hp.gates[0], s_beta = hp.gates[1];
  OverGradSlots(pool, (t + kLanes - 1) / kLanes, g_w_parts, K * c, [&](float* g_w, int64_t blk) {
    for (int64_t tok = blk * kLanes; tok < std::min(t, (blk + 1) * kLanes); ++tok) {
      const float* xt = x + tok * N * c;
      const float* z = z_in + tok * N * K;
      const float* y = y_in + tok * N * K;
      const float* hpre = h_pre + tok * N;
      const float* gut = g_u ? g_u + tok * c : nullptr;
      const float* gint = g_in ? g_in + tok * N * c : nullptr;
      float* gxt = g_x + tok * N * c;
      float gp[N];
      for (int i = 0; i < N; ++i) gp[i] = g_pre[tok * N + i];
      if (gut) {  // the pre-apply: dh_pre[i] = x_i . g_u
        v16 dot[N] = {};
        OverC(c, [&](int64_t q, auto ch) {
          const v16 gq = ch.Load(gut + q);
          for (int i = 0; i < N; ++i) dot[i] += ch.Load(xt + i * c + q) * gq;
        });
        for (int i = 0; i < N; ++i) gp[i] += hsum(dot[i]);
      }
      float gh[N][K], coef[N];
      for (int i = 0; i < N; ++i) {
        g_pre_all[tok * N + i] = gp[i];
        const float r = r_in[tok * N + i];
        float g_z[K];
        g_z[0] = s_alpha * gp[i];
        g_z[1] = s_beta * g_post[tok * N + i];
        for (int j = 0; j < N; ++j) g_z[2 + j] = s_alpha * g_res[(tok * N + j) * N + i];
        float g_r = 0.f;
        for (int k = 0; k < K; ++k) {
          const float g_y = g_z[k] * (1.f - z[i * K + k] * z[i * K + k]);
          gh[i][k] = g_y * r;
          g_r += g_y * y[i * K + k];
        }
        coef[i] = g_r * r * r / c;
      }
      OverC(c, [&](int64_t q, auto ch) {
        v16 ws[K], gw[K] = {};
        for (int k = 0; k < K; ++k) ws[k] = ch.Load(hp.w_t + k * c + q);
        const v16 gq = gut ? ch.Load(gut + q) : v16{};
        for (int i = 0; i < N; ++i) {
          const v16 xi = ch.Load(xt + i * c + q);
          v16 gx = hpre[i] * gq - coef[i] * xi;
          if (gint) gx += ch.Load(gint + i * c + q);
          for (int k = 0; k < K; ++k) {
            gx += gh[i][k] * ws[k];
            gw[k] += gh[i][k] * xi;
          }
          ch.Store(gxt + i * c + q, gx);
        }
        for (int k = 0; k < K; ++k) ch.Store(g_w + k * c + q, ch.Load(g_w + k * c + q) + gw[k]);
      });
    }
  });
}

}  // namespace
}  // namespace mhc_jax::cpu

#endif  // MHC_JAX_OPS_CPU_CSRC_HC_H_
