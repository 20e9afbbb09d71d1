// Fused mHC and HC kernels for XLA:CPU, called through the XLA FFI (jax.ffi): the one
// translation unit of the library, with the FFI handlers and their bindings.
//
// Each kernel makes one pass over the [T, N, C] stream state, in fp32, where XLA:CPU runs
// each op as several passes of small dots and loop fusions (docs/math.md §5):
//   coef_fwd / coef_bwd: the mHC coefficients (coefficients.h, sinkhorn.h)
//   hc_fwd / hc_bwd:     HC's maps (hc.h)
//   pre_fwd / pre_bwd, post_fwd / post_bwd: the stream mixes (stream.h)
// The backward kernels optionally add a gradient that reaches x by another path (g_in),
// so that XLA need not add the ops' stream gradients in passes of its own.
//
// The Python side (mhc_jax/ops/backends/cpu.py) calls each handler with the buffers in the
// order of its .Arg<>() lines, keyword attributes named as in its .Attr<>() lines, and takes
// the results in the order of its .Ret<>() lines (BindStream, BindMapGrads and BindCoefAttrs
// below hold runs of these lines that several handlers share). Shapes in the comments: T tokens (leading
// dims flattened), N streams, C features, K columns, KP = K padded to whole 16-float vectors.

#include <cstdint>
#include <cstring>
#include <utility>

#include "coefficients.h"
#include "hc.h"
#include "simd.h"
#include "sinkhorn.h"
#include "stream.h"
#include "xla/ffi/api/ffi.h"

namespace mhc_jax::cpu {
namespace {

using F32 = ffi::Buffer<ffi::F32>;
using Out = ffi::ResultBuffer<ffi::F32>;

// Calls fn.template operator()<N>() for the runtime stream count.
template <class Fn>
ffi::Error WithN(int64_t n, Fn&& fn) {
  static_assert(kMaxStreams == 8, "WithN instantiates N = 1..8");
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
}  // namespace mhc_jax::cpu

// ----------------------------------------------------------------------- FFI handlers
// Registered from Python as mhc_jax_<name> (cpu/build.py: MhcCoefFwd -> mhc_jax_coef_fwd).
// Buffers an attribute switches off are 1-element placeholders: u and g_u without
// with_pre, g_in without accumulate.

namespace {
namespace mc = mhc_jax::cpu;
namespace ffi = xla::ffi;
using F32 = ffi::Buffer<ffi::F32>;
using Out = ffi::ResultBuffer<ffi::F32>;

// Runs that several bindings below share, spelled once. A binding names each run it
// uses in a comment where the run stands, so its lines still read in the call order.

// The start of every binding: XLA's intra-op thread pool, then the first buffer,
// x [T, N, C], the stream state whose dimensions give T, N and C (StreamDims).
auto BindStream() { return ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>(); }

// BindMapGrads and BindCoefAttrs take the binding so far and return it with their run
// appended, in the order listed.

// The gradients of the maps (and of the pre-apply's u, and the stream gradient to add):
// what MhcCoefBwd and MhcHcBwd take after the buffers saved by their forward.
template <class B>
auto BindMapGrads(B b) {
  return std::move(b)
      .template Arg<F32>()                    // g_pre [T, N]
      .template Arg<F32>()                    // g_post [T, N]
      .template Arg<F32>()                    // g_res [T, N, N]
      .template Arg<F32>()                    // g_u [T, C] (with_pre) or [1]
      .template Arg<F32>()                    // g_in [T, N, C] (accumulate) or [1]
      .template Attr<bool>("with_pre")        // g_u is real
      .template Attr<bool>("accumulate");     // g_in is real: g_x adds it
}

// The mHC coefficient attributes (backends/cpu.py: _attrs): the last attributes of
// MhcCoefFwd and MhcCoefBwd, before their results.
template <class B>
auto BindCoefAttrs(B b) {
  return std::move(b)
      .template Attr<int64_t>("iters")        // Sinkhorn iterations
      .template Attr<float>("sinkhorn_eps")
      .template Attr<float>("pre_eps")
      .template Attr<float>("post_mult")
      .template Attr<float>("rms_eps");
}
}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MhcCoefFwd, mc::CoefFwdImpl,
                              BindCoefAttrs(BindStream()  // XLA's thread pool, x [T, N, C]
                                  .Arg<F32>()                  // phi [N*C, KP], zero-padded columns
                                  .Arg<F32>()                  // scale [K], the alpha gate per column
                                  .Arg<F32>()                  // bias [K]
                                  .Attr<bool>("with_pre"))     // also the pre-apply u
                                  // + BindCoefAttrs: iters, sinkhorn_eps, pre_eps, post_mult, rms_eps
                                  .Ret<F32>()                  // h_pre [T, N]
                                  .Ret<F32>()                  // h_post [T, N]
                                  .Ret<F32>()                  // h_res [T, N, N]
                                  .Ret<F32>()                  // proj [T, K], for the backward
                                  .Ret<F32>()                  // inv_r [T], 1/rms, for the backward
                                  .Ret<F32>());                // u [T, C] (with_pre) or [1]

XLA_FFI_DEFINE_HANDLER_SYMBOL(MhcCoefBwd, mc::CoefBwdImpl,
                              BindCoefAttrs(BindMapGrads(BindStream()  // XLA's thread pool, x [T, N, C]
                                  .Arg<F32>()                  // phi^T [K, N*C], unpadded
                                  .Arg<F32>()                  // scale [K]
                                  .Arg<F32>()                  // bias [K]
                                  .Arg<F32>()                  // proj [T, K], from the forward
                                  .Arg<F32>()))                // inv_r [T], from the forward
                                  // + BindMapGrads: g_pre, g_post, g_res, g_u, g_in, with_pre, accumulate
                                  // + BindCoefAttrs: iters, sinkhorn_eps, pre_eps, post_mult, rms_eps
                                  .Ret<F32>()                  // g_x [T, N, C]
                                  .Ret<F32>()                  // g_logits [T, K]
                                  .Ret<F32>());                // g_phi parts [kGradSlots, N*C, KP]

XLA_FFI_DEFINE_HANDLER_SYMBOL(MhcPreFwd, mc::PreFwdImpl,
                              BindStream()  // XLA's thread pool, x [T, N, C]
                                  .Arg<F32>()                  // h_pre [T, N]
                                  .Ret<F32>());                // u [T, C]

XLA_FFI_DEFINE_HANDLER_SYMBOL(MhcPreBwd, mc::PreBwdImpl,
                              BindStream()  // XLA's thread pool, x [T, N, C]
                                  .Arg<F32>()                  // h_pre [T, N]
                                  .Arg<F32>()                  // g_u [T, C]
                                  .Arg<F32>()                  // g_in [T, N, C] (accumulate) or [1]
                                  .Attr<bool>("accumulate")    // g_in is real: g_x adds it
                                  .Ret<F32>()                  // g_x [T, N, C]
                                  .Ret<F32>());                // g_h_pre [T, N]

XLA_FFI_DEFINE_HANDLER_SYMBOL(MhcPostFwd, mc::PostFwdImpl,
                              BindStream()  // XLA's thread pool, x [T, N, C]
                                  .Arg<F32>()                  // y [T, C], the layer output
                                  .Arg<F32>()                  // h_post [T, N]
                                  .Arg<F32>()                  // h_res [T, N, N]
                                  .Ret<F32>());                // x' [T, N, C]

XLA_FFI_DEFINE_HANDLER_SYMBOL(MhcPostBwd, mc::PostBwdImpl,
                              BindStream()  // XLA's thread pool, x [T, N, C]
                                  .Arg<F32>()                  // y [T, C]
                                  .Arg<F32>()                  // h_post [T, N]
                                  .Arg<F32>()                  // h_res [T, N, N]
                                  .Arg<F32>()                  // g [T, N, C], dL/dx'
                                  .Ret<F32>()                  // g_x [T, N, C]
                                  .Ret<F32>()                  // g_y [T, C]
                                  .Ret<F32>()                  // g_h_post [T, N]
                                  .Ret<F32>());                // g_h_res [T, N, N]

XLA_FFI_DEFINE_HANDLER_SYMBOL(MhcHcFwd, mc::HcFwdImpl,
                              BindStream()  // XLA's thread pool, x [T, N, C]
                                  .Arg<F32>()                  // w^T [N + 2, C]
                                  .Arg<F32>()                  // gates [2]: (s_alpha, s_beta)
                                  .Arg<F32>()                  // a_pre [N]
                                  .Arg<F32>()                  // b_post [N]
                                  .Arg<F32>()                  // a_res [N, N]
                                  .Attr<bool>("with_pre")      // also the pre-apply u
                                  .Attr<float>("eps")          // the per-stream RMS epsilon
                                  .Ret<F32>()                  // h_pre [T, N]
                                  .Ret<F32>()                  // h_post [T, N]
                                  .Ret<F32>()                  // h_res [T, N, N]
                                  .Ret<F32>()                  // u [T, C] (with_pre) or [1]
                                  .Ret<F32>()                  // z = tanh(y) [T, N, N + 2], for the backward
                                  .Ret<F32>()                  // y [T, N, N + 2], for the backward
                                  .Ret<F32>());                // r [T, N], 1/rms per stream, for the backward

XLA_FFI_DEFINE_HANDLER_SYMBOL(MhcHcBwd, mc::HcBwdImpl,
                              BindMapGrads(BindStream()  // XLA's thread pool, x [T, N, C]
                                  .Arg<F32>()                  // w^T [N + 2, C]
                                  .Arg<F32>()                  // gates [2]: (s_alpha, s_beta)
                                  .Arg<F32>()                  // h_pre [T, N], from the forward
                                  .Arg<F32>()                  // z [T, N, N + 2], from the forward
                                  .Arg<F32>()                  // y [T, N, N + 2], from the forward
                                  .Arg<F32>())                 // r [T, N], from the forward
                                  // + BindMapGrads: g_pre, g_post, g_res, g_u, g_in, with_pre, accumulate
                                  .Ret<F32>()                  // g_x [T, N, C]
                                  .Ret<F32>()                  // g_w^T parts [kGradSlots, N + 2, C]
                                  .Ret<F32>());                // g_h_pre [T, N], the pre-apply's part included

// The constants Python shares with these kernels, by name (-1 for an unknown name), so the
// loader can refuse a library whose layout differs from what its wrappers assume.
extern "C" int64_t mhc_jax_cpu_constant(const char* name) {
  if (std::strcmp(name, "grad_slots") == 0) return mhc_jax::cpu::kGradSlots;
  if (std::strcmp(name, "max_streams") == 0) return mhc_jax::cpu::kMaxStreams;
  if (std::strcmp(name, "lanes") == 0) return mhc_jax::cpu::kLanes;
  return -1;
}
