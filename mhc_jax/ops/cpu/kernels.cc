// Fused mHC kernels for XLA:CPU, called through the XLA FFI (jax.ffi).
//
// Each kernel makes one pass over the [T, N, C] stream state, in fp32:
//   coef_fwd:  v = vec(x) -> proj = v @ phi, 1/rms(v), the gates and all Sinkhorn passes,
//              16 tokens at a time (one per vector lane for the gates and the Sinkhorn)
//   coef_bwd:  the Sinkhorn VJP (the block's iterates kept), the gate VJPs,
//              dv = (g_logits * scale / rms) @ phi^T - (d 1/rms) v and dphi = v^T (...)
//   hc_fwd / hc_bwd: HC's maps (per-stream RMS projection, tanh, static parts) and the
//              pre-apply, and their VJPs, one token at a time
//   pre_fwd / pre_bwd, post_fwd / post_bwd: the stream mixes and their VJPs, with the
//              per-token contractions over C (dH_pre, dH_post, dH_res) in the same pass.
// The backward kernels optionally add a gradient that reaches x by another path (g_in),
// so that XLA need not add the ops' stream gradients in passes of its own. XLA:CPU runs
// each of these ops as several passes of small dots and loop fusions (see
// mhc_jax/ops/cpu/__init__.py). Work is split over XLA's intra-op thread pool in fixed
// ranges, so every result is the same whatever the thread count.
//
// Vectors are GCC/Clang vector extensions of 16 floats (one AVX-512 register; the
// compiler splits them on narrower targets). N is a template parameter, 1..8.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v16 __attribute__((vector_size(64)));
constexpr int64_t kLanes = 16;
constexpr int64_t kGradSlots = 8;  // partial weight-gradient sums (see CoefBwd)

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

// ------------------------------------------------------------------------- Sinkhorn
// Blocks of 16 tokens, one per vector lane: m[i * N + j] holds entry (i, j) of 16
// matrices. Paper layout (rows i read columns j); DeepSeek's sequence (SPEC section 2):
// column softmax + eps, a row pass, then (column, row) passes num_iters - 1 times.
// Passes scale by 1 / (sum + eps), one division per row or column.

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

// exp on 16 lanes: 2^k * 2^f with k = round(z log2 e), |f| <= 1/2, and a degree-6
// polynomial for 2^f (relative error ~2e-7, like libm's expf to about 1 ulp).
inline v16 Exp(v16 z) {
  z = z < -87.3f ? splat(-87.3f) : z;
  z = z > 88.3f ? splat(88.3f) : z;
  const v16 t = z * 1.44269504088896341f;
  v16 k;
  for (int l = 0; l < kLanes; ++l) k[l] = std::nearbyint(t[l]);
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

struct CoefAttrs {
  int64_t iters;
  float sinkhorn_eps, pre_eps, post_mult, rms_eps;
};

// ------------------------------------------------------------------ pre-apply, per token
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

// ------------------------------------------------------------------ RMS projection
// Rows v [R, P]: proj = v @ w and r = (mean(v^2) + eps)^(-1/2), the projection of the mHC
// coefficients (one row per token, P = N*C, K = N*N + 2N columns: wide enough for this
// broadcast form, where HC's short rows and 6 columns take dots along C, see Hc below).
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
      for (; j < k; ++j) acc[0] += gh[row][j] * ws[j];
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

// Splits `blocks` into kGradSlots fixed ranges; f(slot, block) runs with slot's g_w
// partial sum zeroed first. The slots are summed by the caller: the same sums whatever
// the thread count.
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

// ---------------------------------------------------------------- HC coefficients
// HC's maps (SPEC section 3) for one token x_t [N, C], with K = N + 2 columns:
//   y[i][k] = (x_i . w[:, k]) r_i,  r_i = (mean(x_i^2) + eps)^(-1/2),  z = tanh(y),
//   h_pre[i] = s_alpha z[i][0] + a_pre[i],  h_post[i] = s_beta z[i][1] + b_post[i],
//   h_res[j][i] = s_alpha z[i][2 + j] + a_res[i][j]  (HC's A_r^T, in paper layout),
// then optionally u = sum_i h_pre[i] x_i while the token is still in cache. A stream row
// is only C long, so its K dots run along C, one accumulator per column (w comes
// transposed, [K, C]): K + 1 vector FMAs per 16 floats of x, where ProjectRows' broadcast
// form would pad the K columns to 16.

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

// ------------------------------------------------------------------- coefficients
// v = vec(x) [T, P], P = N*C. logits = proj * r * scale + bias. Tokens go in blocks of
// 16, one per vector lane for the gates and the Sinkhorn; `count` <= 16 of them are real,
// the rest are zeros and never stored.

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

// --------------------------------------------------------------------- FFI binding

using F32 = ffi::Buffer<ffi::F32>;
using Out = ffi::ResultBuffer<ffi::F32>;

// Calls fn.template operator()<N>() for the runtime stream count.
template <class Fn>
ffi::Error WithN(int64_t n, Fn&& fn) {
  switch (n) {
    case 1: fn.template operator()<1>(); break;
    case 2: fn.template operator()<2>(); break;
    case 3: fn.template operator()<3>(); break;
    case 4: fn.template operator()<4>(); break;
    case 5: fn.template operator()<5>(); break;
    case 6: fn.template operator()<6>(); break;
    case 7: fn.template operator()<7>(); break;
    case 8: fn.template operator()<8>(); break;
    default: return ffi::Error::InvalidArgument("mhc_jax cpu kernels support 1 <= N <= 8");
  }
  return ffi::Error::Success();
}

// x is [T, N, C] (any leading dims flattened to T).
struct Dims {
  int64_t t, n, c;
};
Dims StreamDims(const F32& x) {
  auto d = x.dimensions();
  const int64_t r = d.size();
  Dims out{1, d[r - 2], d[r - 1]};
  for (int64_t i = 0; i < r - 2; ++i) out.t *= d[i];
  return out;
}

ffi::Error CoefFwdImpl(ffi::ThreadPool pool, F32 x, F32 phi, F32 scale, F32 bias, bool with_pre,
                       int64_t iters, float sinkhorn_eps, float pre_eps, float post_mult, float rms_eps,
                       Out h_pre, Out h_post, Out h_res, Out proj, Out inv_r, Out u) {
  const Dims d = StreamDims(x);
  if (phi.dimensions()[1] != (d.n * d.n + 2 * d.n + kLanes - 1) / kLanes * kLanes)
    return ffi::Error::InvalidArgument("coef_fwd: phi must be padded to whole 16-column vectors");
  const CoefAttrs a{iters, sinkhorn_eps, pre_eps, post_mult, rms_eps};
  return WithN(d.n, [&]<int N>() {
    CoefFwd<N>(pool, d.t, d.c, x.typed_data(), phi.typed_data(), scale.typed_data(),
               bias.typed_data(), a, h_pre->typed_data(), h_post->typed_data(), h_res->typed_data(),
               proj->typed_data(), inv_r->typed_data(), with_pre ? u->typed_data() : nullptr);
  });
}

ffi::Error CoefBwdImpl(ffi::ThreadPool pool, F32 x, F32 phi_t, F32 scale, F32 bias, F32 proj,
                       F32 inv_r, F32 g_pre, F32 g_post, F32 g_res, F32 g_u, F32 g_in, bool with_pre,
                       bool accumulate, int64_t iters, float sinkhorn_eps,
                       float pre_eps, float post_mult, float rms_eps, Out g_x, Out g_logits,
                       Out g_phi_parts) {
  const Dims d = StreamDims(x);
  const CoefAttrs a{iters, sinkhorn_eps, pre_eps, post_mult, rms_eps};
  return WithN(d.n, [&]<int N>() {
    CoefBwd<N>(pool, d.t, d.c, x.typed_data(), phi_t.typed_data(), scale.typed_data(),
               bias.typed_data(), proj.typed_data(), inv_r.typed_data(), g_pre.typed_data(),
               g_post.typed_data(), g_res.typed_data(), with_pre ? g_u.typed_data() : nullptr,
               accumulate ? g_in.typed_data() : nullptr, a,
               g_x->typed_data(), g_logits->typed_data(),
               g_phi_parts->typed_data());
  });
}

// x [T, N, C], w^T [K, C], gates (s_alpha, s_beta), a_pre [N], b_post [N], a_res [N, N]
// -> h_pre, h_post, h_res, u [T, C] (with_pre) and, for the backward, z, y [T, N, K], r [T, N].
ffi::Error HcFwdImpl(ffi::ThreadPool pool, F32 x, F32 w_t, F32 gates, F32 a_pre, F32 b_post,
                     F32 a_res, bool with_pre, float eps, Out h_pre, Out h_post, Out h_res, Out u,
                     Out z, Out y, Out r) {
  const Dims d = StreamDims(x);
  if (w_t.dimensions()[0] != d.n + 2 || w_t.dimensions()[1] != d.c)
    return ffi::Error::InvalidArgument("hc_fwd: w^T must be [N + 2, C]");
  const HcParams hp{w_t.typed_data(), gates.typed_data(), a_pre.typed_data(), b_post.typed_data(),
                    a_res.typed_data(), eps};
  return WithN(d.n, [&]<int N>() {
    HcFwd<N>(pool, d.t, d.c, x.typed_data(), hp, h_pre->typed_data(), h_post->typed_data(),
             h_res->typed_data(), with_pre ? u->typed_data() : nullptr, z->typed_data(),
             y->typed_data(), r->typed_data());
  });
}

// ... -> g_x [T, N, C], g_w^T slots [8, K, C], dL/dh_pre [T, N] (the pre-apply's part included).
ffi::Error HcBwdImpl(ffi::ThreadPool pool, F32 x, F32 w_t, F32 gates, F32 h_pre, F32 z, F32 y,
                     F32 r, F32 g_pre, F32 g_post, F32 g_res, F32 g_u, F32 g_in, bool with_pre,
                     bool accumulate, Out g_x, Out g_w_parts, Out g_pre_all) {
  const Dims d = StreamDims(x);
  const HcParams hp{w_t.typed_data(), gates.typed_data(), nullptr, nullptr, nullptr, 0.f};
  return WithN(d.n, [&]<int N>() {
    HcBwd<N>(pool, d.t, d.c, x.typed_data(), hp, h_pre.typed_data(), z.typed_data(), y.typed_data(),
             r.typed_data(), g_pre.typed_data(), g_post.typed_data(), g_res.typed_data(),
             with_pre ? g_u.typed_data() : nullptr, accumulate ? g_in.typed_data() : nullptr,
             g_x->typed_data(), g_w_parts->typed_data(), g_pre_all->typed_data());
  });
}

ffi::Error PreFwdImpl(ffi::ThreadPool pool, F32 x, F32 h, Out u) {
  const Dims d = StreamDims(x);
  return WithN(d.n, [&]<int N>() { PreFwd<N>(pool, d.t, d.c, x.typed_data(), h.typed_data(), u->typed_data()); });
}

ffi::Error PreBwdImpl(ffi::ThreadPool pool, F32 x, F32 h, F32 g, F32 g_in, bool accumulate, Out g_x,
                      Out g_h) {
  const Dims d = StreamDims(x);
  return WithN(d.n, [&]<int N>() {
    PreBwd<N>(pool, d.t, d.c, x.typed_data(), h.typed_data(), g.typed_data(),
              accumulate ? g_in.typed_data() : nullptr, g_x->typed_data(), g_h->typed_data());
  });
}

ffi::Error PostFwdImpl(ffi::ThreadPool pool, F32 x, F32 y, F32 h_post, F32 h_res, Out out) {
  const Dims d = StreamDims(x);
  return WithN(d.n, [&]<int N>() {
    PostFwd<N>(pool, d.t, d.c, x.typed_data(), y.typed_data(), h_post.typed_data(), h_res.typed_data(),
               out->typed_data());
  });
}

ffi::Error PostBwdImpl(ffi::ThreadPool pool, F32 x, F32 y, F32 h_post, F32 h_res, F32 g, Out g_x,
                       Out g_y, Out g_h_post, Out g_h_res) {
  const Dims d = StreamDims(x);
  return WithN(d.n, [&]<int N>() {
    PostBwd<N>(pool, d.t, d.c, x.typed_data(), y.typed_data(), h_post.typed_data(), h_res.typed_data(),
               g.typed_data(), g_x->typed_data(), g_y->typed_data(), g_h_post->typed_data(),
               g_h_res->typed_data());
  });
}

}  // namespace

// Bindings: the thread pool, the fp32 buffer arguments, the attributes, the fp32 results.
#define BIND ffi::Ffi::Bind().Ctx<ffi::ThreadPool>()
#define ARGS2 .Arg<F32>().Arg<F32>()
#define ARGS4 ARGS2 ARGS2
#define RETS2 .Ret<F32>().Ret<F32>()
#define COEF_ATTRS                                                                     \
  .Attr<int64_t>("iters").Attr<float>("sinkhorn_eps").Attr<float>("pre_eps")          \
      .Attr<float>("post_mult").Attr<float>("rms_eps")

XLA_FFI_DEFINE_HANDLER_SYMBOL(MhcCoefFwd, CoefFwdImpl,
                              BIND ARGS4.Attr<bool>("with_pre") COEF_ATTRS RETS2 RETS2 RETS2);
XLA_FFI_DEFINE_HANDLER_SYMBOL(MhcCoefBwd, CoefBwdImpl,
                              BIND ARGS4 ARGS4 ARGS2.Arg<F32>().Attr<bool>("with_pre")
                                  .Attr<bool>("accumulate") COEF_ATTRS RETS2.Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(MhcPreFwd, PreFwdImpl, BIND ARGS2.Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(MhcPreBwd, PreBwdImpl, BIND ARGS4.Attr<bool>("accumulate") RETS2);
XLA_FFI_DEFINE_HANDLER_SYMBOL(MhcPostFwd, PostFwdImpl, BIND ARGS4.Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(MhcPostBwd, PostBwdImpl, BIND ARGS4.Arg<F32>() RETS2 RETS2);
XLA_FFI_DEFINE_HANDLER_SYMBOL(MhcHcFwd, HcFwdImpl,
                              BIND ARGS4 ARGS2.Attr<bool>("with_pre").Attr<float>("eps")
                                  RETS2 RETS2 RETS2.Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(MhcHcBwd, HcBwdImpl,
                              BIND ARGS4 ARGS4 ARGS4.Attr<bool>("with_pre").Attr<bool>("accumulate")
                                  RETS2.Ret<F32>());
