// The mHC coefficients (docs/math.md §2) and their VJP: the RMS projection, the gates and
// the Sinkhorn in one pass per block of 16 tokens, the pre-apply optionally fused in.
//
//   forward:  v = vec(x) -> proj = v @ phi, 1/rms(v), the gates and all Sinkhorn passes,
//             16 tokens at a time (one per vector lane for the gates and the Sinkhorn)
//   backward: the Sinkhorn VJP (the block's iterates kept), the gate VJPs,
//             dv = (g_logits * scale / rms) @ phi^T - (d 1/rms) v and dphi = v^T (...)

#ifndef MHC_JAX_OPS_CPU_CSRC_COEFFICIENTS_H_
#define MHC_JAX_OPS_CPU_CSRC_COEFFICIENTS_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "simd.h"
#include "sinkhorn.h"
#include "stream.h"

namespace mhc_jax::cpu {
namespace {  // internal linkage, see simd.h

// ------------------------------------------------------------------ RMS projection
// Rows v [R, P]: proj = v @ w and r = (mean(v^2) + eps)^(-1/2), the projection of the mHC
// coefficients (one row per token, P = N*C, K = N*N + 2N columns: wide enough for this
// broadcast form, where HC's short rows and 6 columns take dots along C, see hc.h).
// w comes padded to KP = KV * 16 columns ([P, KP]) for the forward and transposed ([K, P])
// for the backward. Rows go in blocks of at most 16; zero-padded columns are never stored.

template <int KV>
constexpr int kPadded = KV * kLanes;

// Row pointers for a group of `size` rows, the missing ones (past `count`) aimed at zeros:
// the loops over a group then have a fixed trip count and keep their sums in registers.
template <int SIZE>
inline void GroupRows(const float* v, int64_t first, int64_t count, int64_t p, const float* zeros,
                      const float* (&rows)[SIZE]) {
  for (int s = 0; s < SIZE; ++s) rows[s] = first + s < count ? v + (first + s) * p : zeros;
}

inline const float* Zeros(int64_t p) {
  thread_local std::vector<float> zeros;
  if (static_cast<int64_t>(zeros.size()) < p) zeros.assign(p, 0.f);
  return zeros.data();
}

// proj[row][KP] and r[row] for `count` rows; w is read once per `SUB` rows.
template <int KV>
void ProjectRows(const float* v, int64_t count, int64_t p, const float* w, float (*proj)[kPadded<KV>],
                 float* r, float eps) {
  constexpr int KP = kPadded<KV>, SUB = std::max(1, 16 / KV);
  const float* zeros = Zeros(p);
  for (int64_t t0 = 0; t0 < count; t0 += SUB) {
    const float* rows[SUB];
    GroupRows<SUB>(v, t0, count, p, zeros, rows);
    v16 acc[SUB][KV] = {};
    for (int64_t q = 0; q < p; ++q) {
      v16 ws[KV];
      for (int kv = 0; kv < KV; ++kv) ws[kv] = load(w + q * KP + kv * kLanes);
      for (int s = 0; s < SUB; ++s)
        for (int kv = 0; kv < KV; ++kv) acc[s][kv] += rows[s][q] * ws[kv];
    }
    for (int s = 0; s < SUB && t0 + s < count; ++s)
      for (int kv = 0; kv < KV; ++kv) store(proj[t0 + s] + kv * kLanes, acc[s][kv]);
  }
  for (int64_t row = 0; row < count; ++row) {
    const float* vr = v + row * p;
    v16 ss = {};
    OverC(p, [&](int64_t q, auto ch) { ss += ch.Load(vr + q) * ch.Load(vr + q); });
    r[row] = 1.f / std::sqrt(hsum(ss) / p + eps);
  }
}

// With gh = dL/dproj * r (zero beyond column k) and coef = sum(dL/dproj * proj) r^3 / P
// (from dr/dv = -r^3 v / P): g_v = g_in + gh @ w^T - coef * v for `count` rows (g_in: the
// gradient arriving by another path, or null), and g_w [P, KP] += v^T gh.
template <int KV>
void ProjectRowsBackward(const float* v, int64_t count, int64_t p, int64_t k, const float* w_t,
                         const float (*gh)[kPadded<KV>], const float* coef, const float* g_in,
                         float* g_v, float* g_w) {
  constexpr int KP = kPadded<KV>;
  OverC(p, [&](int64_t q, auto ch) {  // w read once per 16 columns
    v16 ws[KP];
    for (int j = 0; j < k; ++j) ws[j] = ch.Load(w_t + j * p + q);
    for (int64_t row = 0; row < count; ++row) {
      v16 acc[4] = {-coef[row] * ch.Load(v + row * p + q)};  // four chains, not one k long
      if (g_in) acc[1] = ch.Load(g_in + row * p + q);
      int j = 0;
      for (; j + 4 <= k; j += 4)
        for (int u = 0; u < 4; ++u) acc[u] += gh[row][j + u] * ws[j + u];
      // The last k % 4 columns, bounded by 3 so GCC sees that ws is never read past its end
      // (bounded by k alone, it warned of such reads on paths where k is a constant).
      for (int u = 0; u < 3 && j + u < k; ++u) acc[0] += gh[row][j + u] * ws[j + u];
      ch.Store(g_v + row * p + q, (acc[0] + acc[1]) + (acc[2] + acc[3]));
    }
  });
  const float* zeros = Zeros(p);
  for (int64_t r0 = 0; r0 < count; r0 += 8) {  // eight rows' gh held in registers
    const float* rows[8];
    GroupRows<8>(v, r0, count, p, zeros, rows);
    v16 ghv[8][KV] = {};
    for (int64_t row = 0; row < 8 && r0 + row < count; ++row)
      for (int kv = 0; kv < KV; ++kv) ghv[row][kv] = load(gh[r0 + row] + kv * kLanes);
    for (int64_t q = 0; q < p; ++q) {
      for (int kv = 0; kv < KV; ++kv) {
        v16 pair[4];  // a tree of sums: no chain of eight dependent FMAs per q
        for (int u = 0; u < 4; ++u) pair[u] = rows[2 * u][q] * ghv[2 * u][kv] + rows[2 * u + 1][q] * ghv[2 * u + 1][kv];
        float* out = g_w + q * KP + kv * kLanes;
        store(out, load(out) + ((pair[0] + pair[1]) + (pair[2] + pair[3])));
      }
    }
  }
}

// ------------------------------------------------------------------- coefficients
// v = vec(x) [T, P], P = N*C. logits = proj * r * scale + bias. Tokens go in blocks of
// 16, one per vector lane for the gates and the Sinkhorn; `count` <= 16 of them are real,
// the rest are zeros and never stored.

struct CoefAttrs {
  int64_t iters;
  float sinkhorn_eps, pre_eps, post_mult, rms_eps;
};

template <int N>
struct Coef {
  static constexpr int K = N * N + 2 * N;
  static constexpr int KV = (K + kLanes - 1) / kLanes;  // vectors per projection row
  static constexpr int KP = kPadded<KV>;                 // phi's padded width

  // Lane-major logits of the block: logits[k] lane l = token l's column k.
  static void Logits(const float (*proj)[KP], const float* r, const float* scale, const float* bias,
                     v16* logits) {
    v16 rv = {};
    for (int l = 0; l < kLanes; ++l) rv[l] = r[l];
    for (int k = 0; k < K; ++k) {
      v16 pk;
      for (int l = 0; l < kLanes; ++l) pk[l] = proj[l][k];
      logits[k] = pk * rv * scale[k] + bias[k];
    }
  }
};

template <int N>
void CoefFwd(ffi::ThreadPool& pool, int64_t t, int64_t c, const float* x, const float* phi,
             const float* scale, const float* bias, const CoefAttrs& a, float* h_pre, float* h_post,
             float* h_res, float* proj_out, float* r_out, float* u) {
  using S = Coef<N>;
  constexpr int K = S::K;
  const int64_t p = N * c, blocks = (t + kLanes - 1) / kLanes;
  ParallelFor(pool, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t t0 = blk * kLanes, count = std::min<int64_t>(kLanes, t - t0);
      alignas(64) float proj[kLanes][S::KP] = {};
      float r[kLanes] = {};
      ProjectRows<S::KV>(x + t0 * p, count, p, phi, proj, r, a.rms_eps);
      v16 logits[K], hr[N * N];
      S::Logits(proj, r, scale, bias, logits);
      v16 gates[2 * N];
      for (int i = 0; i < N; ++i) {
        gates[i] = Sigmoid(logits[i]) + a.pre_eps;
        gates[N + i] = a.post_mult * Sigmoid(logits[N + i]);
      }
      SinkhornForward<N>(logits + 2 * N, hr, a.iters, a.sinkhorn_eps, nullptr);
      for (int64_t l = 0; l < count; ++l) {
        const int64_t tok = t0 + l;
        for (int i = 0; i < N; ++i) {
          h_pre[tok * N + i] = gates[i][l];
          h_post[tok * N + i] = gates[N + i][l];
        }
        for (int k = 0; k < N * N; ++k) h_res[tok * N * N + k] = hr[k][l];
        for (int k = 0; k < K; ++k) proj_out[tok * K + k] = proj[l][k];
        r_out[tok] = r[l];
        if (u) PreToken<N>(x + tok * p, h_pre + tok * N, c, u + tok * c);  // x_t still in cache
      }
    }
  });
}

template <int N>
void CoefBwd(ffi::ThreadPool& pool, int64_t t, int64_t c, const float* x, const float* phi_t,
             const float* scale, const float* bias, const float* proj_in, const float* r_in,
             const float* g_pre, const float* g_post, const float* g_res, const float* g_u,
             const float* g_in, const CoefAttrs& a, float* g_x, float* g_logits, float* g_phi_parts) {
  using S = Coef<N>;
  constexpr int K = S::K;
  const int64_t p = N * c;
  OverGradSlots(pool, (t + kLanes - 1) / kLanes, g_phi_parts, p * S::KP, [&](float* g_phi, int64_t blk) {
    thread_local std::vector<v16> trace;
    trace.resize(TraceSize<N>(a.iters));
    const int64_t t0 = blk * kLanes, count = std::min<int64_t>(kLanes, t - t0);
    alignas(64) float proj[kLanes][S::KP] = {};
    float r[kLanes] = {};
    v16 gp[N] = {}, gq[N] = {}, gl[K] = {};
    for (int64_t l = 0; l < count; ++l) {
      const int64_t tok = t0 + l;
      for (int k = 0; k < K; ++k) proj[l][k] = proj_in[tok * K + k];
      r[l] = r_in[tok];
      for (int i = 0; i < N; ++i) {
        gp[i][l] = g_pre[tok * N + i];
        gq[i][l] = g_post[tok * N + i];
      }
      for (int k = 0; k < N * N; ++k) gl[2 * N + k][l] = g_res[tok * N * N + k];
    }
    v16 logits[K], hr[N * N], sp[N];
    S::Logits(proj, r, scale, bias, logits);
    for (int i = 0; i < N; ++i) sp[i] = Sigmoid(logits[i]);
    // With the pre-apply fused in (g_u): its VJP per token, into the block's buffer that
    // then stands for g_in, and dh_pre = x_i . g_u into the pre gates' gradient.
    const float* g_in_block = g_in ? g_in + t0 * p : nullptr;
    if (g_u) {
      thread_local std::vector<float> buffer;
      buffer.resize(kLanes * p);
      for (int64_t l = 0; l < count; ++l) {
        float hp[N], dh[N];
        for (int i = 0; i < N; ++i) hp[i] = sp[i][l] + a.pre_eps;
        PreTokenBackward<N>(x + (t0 + l) * p, hp, g_u + (t0 + l) * c, c,
                            g_in_block ? g_in_block + l * p : nullptr, buffer.data() + l * p, dh);
        for (int i = 0; i < N; ++i) gp[i][l] += dh[i];
      }
      g_in_block = buffer.data();
    }
    for (int i = 0; i < N; ++i) {
      const v16 sq = Sigmoid(logits[N + i]);
      gl[i] = gp[i] * sp[i] * (1.f - sp[i]);
      gl[N + i] = gq[i] * a.post_mult * sq * (1.f - sq);
    }
    SinkhornForward<N>(logits + 2 * N, hr, a.iters, a.sinkhorn_eps, trace.data());
    SinkhornBackward<N>(gl + 2 * N, a.iters, a.sinkhorn_eps, trace.data());
    // d proj = gl * scale (then times r, see ProjectRowsBackward).
    alignas(64) float gh[kLanes][S::KP] = {};
    float coef[kLanes];
    for (int64_t l = 0; l < count; ++l) {
      float g_r = 0.f;
      for (int k = 0; k < K; ++k) {
        g_logits[(t0 + l) * K + k] = gl[k][l];
        gh[l][k] = gl[k][l] * scale[k] * r[l];
        g_r += gl[k][l] * scale[k] * proj[l][k];
      }
      coef[l] = g_r * r[l] * r[l] * r[l] / p;
    }
    ProjectRowsBackward<S::KV>(x + t0 * p, count, p, K, phi_t, gh, coef, g_in_block, g_x + t0 * p, g_phi);
  });
}

}  // namespace
}  // namespace mhc_jax::cpu

#endif  // MHC_JAX_OPS_CPU_CSRC_COEFFICIENTS_H_
