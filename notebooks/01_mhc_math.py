# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The math of mHC: the Birkhoff polytope, Sinkhorn, and gains under composition
#
# Hyper-Connections widen the residual stream into $n$ parallel streams $x \in \mathbb{R}^{n \times C}$.
# Every sublayer $F$ reads from the streams and writes back to them through small per-token maps:
#
# $$x' = H_\text{res}\, x + H_\text{post}^\top F(H_\text{pre}\, x), \qquad H_\text{res} \in \mathbb{R}^{n\times n}.$$
#
# Along the residual path, the signal is multiplied by one $H_\text{res}$ per sublayer. The layout is the
# paper's: $H[i, j]$ is how much output stream $i$ reads from input stream $j$. Two quantities measure
# how much a map $M$ can amplify (docs/math.md §7, the paper's *Amax gain magnitude*):
#
# * the **forward gain** $\max_i |\sum_j M_{ij}|$, the largest absolute row sum. It bounds how much a
#   signal that is equal on all streams grows on its way up;
# * the **backward gain** $\max_j |\sum_i M_{ij}|$, the largest absolute column sum. It plays the same
#   role for gradients, which flow through $M^\top$.
#
# **HC** learns $H_\text{res}$ without constraints, so the products of many maps can blow up or vanish.
# **mHC** projects $H_\text{res}$ onto the *doubly stochastic* matrices (nonnegative entries, every row
# and every column summing to 1) with Sinkhorn-Knopp iterations. **mHC-lite** (docs/math.md §9) writes
# $H_\text{res}$ as a convex combination of the $n!$ permutation matrices instead. This notebook shows
# these pieces numerically, with no trained model:
#
# 1. Sinkhorn maps arbitrary logits onto the Birkhoff polytope (the doubly stochastic matrices);
# 2. mHC-lite reaches the same polytope through its vertices, the permutation matrices;
# 3. how many Sinkhorn iterations that takes, depending on the scale of the logits;
# 4. why the constraint matters: the gains of products of 60 random HC, mHC and mHC-lite maps.

# %%
# %matplotlib inline
import math
import pathlib
import tempfile

from IPython.display import Image, display
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from mhc_jax import analysis, ops
from mhc_jax.ops.lite import permutation_matrices

N = 4  # streams: the paper's expansion rate
UNIT = jax.random.normal(jax.random.PRNGKey(0), (4096, N, N))  # 4096 random logit matrices, N(0, 1)
FIGURES = pathlib.Path(tempfile.mkdtemp(prefix="mhc_notebook_01_"))  # the library's plots write PNGs
print(f"jax {jax.__version__} on {jax.devices()}")


def show_matrix(ax, m, title):
  """A heatmap of one N x N matrix, annotated with its entries, row sums and column sums."""
  m = np.asarray(m, np.float64)
  bound = max(float(np.abs(m).max()), 1e-12)
  ax.imshow(m, cmap="RdBu_r", vmin=-bound, vmax=bound)
  for i in range(m.shape[0]):
    for j in range(m.shape[1]):
      ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8)
  ax.set_xticks(range(m.shape[1]), [f"{s:.3f}" for s in m.sum(axis=0)], fontsize=7, rotation=90)
  ax.set_yticks(range(m.shape[0]), [f"{s:.3f}" for s in m.sum(axis=1)], fontsize=7)
  ax.set_xlabel("column sums", fontsize=8)
  ax.set_ylabel("row sums", fontsize=8)
  ax.set_title(title, fontsize=9)


# %% [markdown]
# ## 1. Sinkhorn: from logits to a doubly stochastic matrix
#
# `ops.sinkhorn_knopp(logits, num_iters=20, eps=1e-6)` runs DeepSeek's sequence (docs/math.md §3): a
# softmax over each column, then alternating row and column normalizations. Rows are normalized last,
# so the row sums are 1 up to `eps`, and whatever error the truncation leaves sits in the column sums.
# We project 4096 random $4\times 4$ logit matrices at once (any leading axes work). Below, the first
# one, its exponential (positive, but with arbitrary row and column sums), and its projection. The tick
# labels are the row sums (left) and the column sums (bottom).

# %%
projected = ops.sinkhorn_knopp(UNIT)  # 20 iterations, eps = 1e-6: the library's defaults
logits, h = UNIT[0], projected[0]

fig, axes = plt.subplots(1, 3, figsize=(12, 4))
show_matrix(axes[0], logits, "logits")
show_matrix(axes[1], jnp.exp(logits), "exp(logits)")
show_matrix(axes[2], h, "Sinkhorn(logits), 20 iterations")
fig.tight_layout()
plt.show()

row_error = float(jnp.max(jnp.abs(h.sum(axis=1) - 1)))
column_error = float(jnp.max(jnp.abs(h.sum(axis=0) - 1)))
print(f"max |row sum - 1| = {row_error:.1e}, max |column sum - 1| = {column_error:.1e}, "
      f"min entry = {float(h.min()):.3f}")
assert row_error < 1e-5 and column_error < 1e-3 and float(h.min()) > 0

# %% [markdown]
# ## 2. mHC-lite: a convex combination of permutations
#
# By the Birkhoff-von Neumann theorem, the doubly stochastic $n\times n$ matrices are exactly the convex
# combinations of the $n!$ permutation matrices $\Pi_k$. mHC-lite uses the theorem directly: the projection
# gives $n!$ logits, and
#
# $$H_\text{res} = \sum_k w_k \Pi_k, \qquad w = \mathrm{softmax}(\text{logits}).$$
#
# Every $\Pi_k$ has unit row and column sums, so every convex combination has them as well, to float
# rounding. There are no iterations and no truncation error. The price is $n!$ coefficients (24 at
# $n = 4$) for a polytope of dimension $(n-1)^2 = 9$, which is why the library caps mHC-lite at $n \le 5$.
# `permutation_matrices(4)` lists the 24 vertices, with the identity first:

# %%
perms = permutation_matrices(N)  # [24, N, N]
rows, cols = 3, 8
mosaic = np.full((rows * (N + 1) - 1, cols * (N + 1) - 1), np.nan)  # one image, a gap between matrices
for k, perm in enumerate(perms):
  r, c = divmod(k, cols)
  mosaic[r * (N + 1):r * (N + 1) + N, c * (N + 1):c * (N + 1) + N] = perm
fig, ax = plt.subplots(figsize=(12, 4.2))
ax.imshow(mosaic, cmap="Greys", vmin=-0.15, vmax=1)
for k in range(len(perms)):
  r, c = divmod(k, cols)
  ax.text(c * (N + 1) + (N - 1) / 2, r * (N + 1) - 0.7, f"k = {k}", ha="center", fontsize=8)
ax.set_axis_off()
ax.set_title(f"the {len(perms)} permutation matrices of n = {N}: the vertices of the Birkhoff polytope", pad=18)
plt.show()

# %% [markdown]
# A random mixture: softmax weights over the 24 vertices, and the matrix they make.

# %%
z = 2.0 * np.random.default_rng(1).standard_normal(len(perms))
weights = np.exp(z) / np.exp(z).sum()  # softmax
mixture = np.einsum("k,kij->ij", weights, perms)

fig, (ax_w, ax_m) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [2, 1]})
ax_w.bar(range(len(perms)), weights)
ax_w.set(xlabel="permutation k", ylabel="weight $w_k$", title="softmax weights (they sum to 1)")
show_matrix(ax_m, mixture, r"$\sum_k w_k \Pi_k$")
fig.tight_layout()
plt.show()

# %% [markdown]
# The library computes these maps per token, from the same normalized projection of the flattened
# stream state that mHC uses (`ops.mhc_lite_coefficients`, whose `phi` has $2n + n!$ columns). Here it is
# next to mHC's Sinkhorn maps (`ops.mhc_coefficients`), on random stream states and random projections.
# The states have shape `[60, 64, N, C]`: section 4 reuses the maps as 60 sublayers of 64 tokens each
# (the ops take any leading axes). Both land on the polytope. Sinkhorn leaves a small error in the column
# sums after its 20 iterations; the mixture is exact to float32 rounding.

# %%
S, T, C = 60, 64, 32
keys = jax.random.split(jax.random.PRNGKey(2), 6)
x = jax.random.normal(keys[0], (S, T, N, C))  # a random stream state per sublayer and token
gates = jnp.ones(3)  # (alpha_pre, alpha_post, alpha_res)
k_mhc, k_lite = ops.num_coefficients(N), ops.num_lite_coefficients(N)
# phi ~ N(0, 1/(N*C)), so that the projected logits are about N(0, 1)
_, _, h_mhc = ops.mhc_coefficients(x, jax.random.normal(keys[1], (N * C, k_mhc)) / math.sqrt(N * C), gates,
                                   jax.random.normal(keys[2], (k_mhc,)))
_, _, h_lite = ops.mhc_lite_coefficients(x, jax.random.normal(keys[3], (N * C, k_lite)) / math.sqrt(N * C),
                                         gates, jax.random.normal(keys[4], (k_lite,)))

print(f"over {S * T} tokens:    {'max |row sum - 1|':>18} {'max |col sum - 1|':>18} {'min entry':>10}")
errors = {}
for name, maps in (("mHC (Sinkhorn, 20 it.)", h_mhc), ("mHC-lite (mixture)", h_lite)):
  err = analysis.doubly_stochastic_error(maps)  # per sublayer, over its tokens
  errors[name] = (float(err["row_error"].max()), float(err["column_error"].max()), float(err["min_entry"].min()))
  print(f"{name:22} {errors[name][0]:18.1e} {errors[name][1]:18.1e} {errors[name][2]:10.2e}")
assert max(errors["mHC-lite (mixture)"][:2]) < 1e-5 and errors["mHC-lite (mixture)"][2] > 0

# %% [markdown]
# ## 3. How fast Sinkhorn converges
#
# To watch the error iteration by iteration, here is the same sequence written out in numpy, in float64
# and with `eps = 0` (the paper's Eq. 9), so that we see the iteration itself rather than rounding:
# a softmax over each column, then a row pass, then alternating column and row passes. The next cell
# checks it against `ops.sinkhorn_knopp` at 20 iterations.

# %%
def sinkhorn_errors(logits, iterations):
  """Sinkhorn (DeepSeek's sequence, eps = 0) on a batch of logits [..., N, N] in float64: the final
  matrices and, after every iteration, the worst |row sum - 1| and |column sum - 1| over the batch."""
  m = np.exp(logits - logits.max(axis=-2, keepdims=True))
  m = m / m.sum(axis=-2, keepdims=True)  # the column softmax
  errors = []
  for k in range(iterations):
    if k:
      m = m / m.sum(axis=-2, keepdims=True)  # column pass
    m = m / m.sum(axis=-1, keepdims=True)  # row pass
    errors.append((np.abs(m.sum(axis=-1) - 1).max(), np.abs(m.sum(axis=-2) - 1).max()))
  return m, np.array(errors)


unit = np.asarray(UNIT, np.float64)
with jax.enable_x64(True):
  library = np.asarray(ops.sinkhorn_knopp(jnp.asarray(unit), num_iters=20, eps=0.0))
np.testing.assert_allclose(sinkhorn_errors(unit, 20)[0], library, rtol=1e-12, atol=1e-14)
print("the numpy loop matches ops.sinkhorn_knopp (float64, eps = 0, 20 iterations)")

# %% [markdown]
# The error falls geometrically with the number of iterations, at a rate that depends on the matrix.
# Large logits make $\exp(\text{logits})$ nearly a permutation pattern with tiny entries elsewhere,
# and convergence slows down. Below: the worst error over 4096 random $4\times4$ logit matrices at
# several scales, against the number of iterations. The row error (dotted) stays at rounding level,
# because rows are normalized last. The column error (solid) is the truncation error. The vertical line
# marks the 20 iterations that mHC uses. The star is the library's default at scale 1 (float32,
# `eps = 1e-6`, 20 iterations): it sits on the float64 curve, so at 20 iterations the truncation, not
# `eps` or float32 rounding, sets the error.

# %%
SCALES = (0.5, 1.0, 2.0, 4.0, 8.0)
ITERATIONS = 100
convergence = {scale: sinkhorn_errors(scale * unit, ITERATIONS)[1] for scale in SCALES}
default_error = float(jnp.max(jnp.abs(projected.sum(axis=-2) - 1)))  # section 1's: float32, eps = 1e-6

fig, ax = plt.subplots(figsize=(8, 5))
steps = np.arange(1, ITERATIONS + 1)
for c, scale in enumerate(SCALES):
  ax.plot(steps, np.maximum(convergence[scale][:, 1], 1e-17), "-", color=f"C{c}",
          label=f"logits x {scale}: column error")
  ax.plot(steps, np.maximum(convergence[scale][:, 0], 1e-17), ":", color=f"C{c}")
ax.plot([20], [default_error], "*", color="black", markersize=10,
        label="library default, logits x 1 (float32, eps = 1e-6)")
ax.axvline(20, color="black", linewidth=0.8, linestyle=":")
ax.set(xscale="log", yscale="log", xlabel="Sinkhorn iterations", ylabel="max |sum - 1| over 4096 matrices",
       title="Sinkhorn-Knopp convergence, float64, eps = 0 (dotted: row error)")
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=8)
plt.show()

for scale in SCALES:
  print(f"logits x {scale}: column error after 20 iterations {convergence[scale][19, 1]:.1e}")
print(f"library default (float32, eps = 1e-6), logits x 1: {default_error:.1e}")
assert convergence[1.0][19, 1] < convergence[8.0][19, 1]  # larger logits converge more slowly
assert max(convergence[s][:, 0].max() for s in SCALES) < 1e-12  # rows exact (normalized last)

# %% [markdown]
# ## 4. Gains under composition
#
# The residual path of a deep model applies one $H_\text{res}$ per sublayer. The forward composite
# $P_l = H_l H_{l-1} \cdots H_0$ maps the input to sublayer $l$'s output, and the backward composite
# $Q_l = H_{S-1} \cdots H_l$ maps sublayer $l$'s input to the top (docs/math.md §7; `analysis.composites`
# computes both with an associative scan). A product of doubly stochastic matrices is doubly stochastic:
# $(AB)\mathbf{1} = A\mathbf{1} = \mathbf{1}$ and $\mathbf{1}^\top AB = \mathbf{1}^\top$. So mHC's
# composite gains stay at 1 at any depth, up to Sinkhorn's truncation, and mHC-lite's up to rounding. An
# unconstrained map near the identity has no such bound, and its small deviations compound.
#
# We take $S = 60$ sublayers of random maps for 64 tokens, in four families. Each family has one set of
# random weights, and every sublayer and token has its own random stream state (section 2's), so the maps
# differ from sublayer to sublayer (in a network they would also differ through each sublayer's weights):
#
# * **HC**, `ops.hc_coefficients`: dynamic HC at its identity initialization ($a_\text{res} = I$) with
#   random dynamic weights $w$, at two gate scales $s_\alpha$. Per token,
#   $H_\text{res} = (s_\alpha \tanh(\bar{x} w_\text{res}) + I)^\top$;
# * **mHC**, `ops.mhc_coefficients`: Sinkhorn of random projections, 20 iterations (section 2's maps);
# * **mHC-lite**, `ops.mhc_lite_coefficients`: softmax mixtures of the 24 permutations (section 2's maps).

# %%
a_pre, b_post, a_res = ops.hc_static_init(N, 0)  # a_res = I
w = jax.random.normal(keys[5], (C, N + 2)) / math.sqrt(C)
families = {  # each [S, T, N, N]: sublayers in depth order, then tokens
    "HC, s_alpha = 0.1": ops.hc_coefficients(x, a_pre, b_post, a_res, w, 0.1, 0.1)[2],
    "HC, s_alpha = 0.3": ops.hc_coefficients(x, a_pre, b_post, a_res, w, 0.3, 0.3)[2],
    "mHC (Sinkhorn)": h_mhc,  # section 2's maps
    "mHC-lite (permutations)": h_lite,
}
gains = {}
for name, maps in families.items():  # maps: [S, T, N, N], sublayers in depth order
  p, q = analysis.composites(maps)
  gains[name] = {"forward": np.asarray(analysis.gain_forward(p)),  # [S, T]: gain_fwd(P_l) per token
                 "backward": np.asarray(analysis.gain_backward(q))}  # [S, T]: gain_bwd(Q_l) per token

fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
depth = np.arange(S)
for ax, direction, title in zip(axes, ("forward", "backward"),
                                ("forward: gain_fwd(P_l), input -> sublayer l",
                                 "backward: gain_bwd(Q_l), sublayer l -> top")):
  for c, (name, g) in enumerate(gains.items()):
    ax.plot(depth, g[direction].mean(axis=1), color=f"C{c}", label=f"{name} (token mean)")
    ax.fill_between(depth, g[direction].min(axis=1), g[direction].max(axis=1), color=f"C{c}", alpha=0.2)
  ax.axhline(1.0, color="gray", linewidth=0.8, linestyle=":")
  ax.set(yscale="log", xlabel="sublayer l", title=title)
  ax.grid(alpha=0.3, which="both")
axes[0].set_ylabel("composite Amax gain (band: min-max over 64 tokens)")
axes[0].legend(fontsize=8)
fig.tight_layout()
plt.show()

for name, g in gains.items():
  print(f"{name:24} largest composite gain over depth and tokens: forward {g['forward'].max():9.4g}, "
        f"backward {g['backward'].max():9.4g}")

# %% [markdown]
# On a log axis the constrained families are flat at 1. Their deviation from 1 shows what is left.
#
# * mHC's forward gain falls slowly below 1. Each row sum is $1 - O(\epsilon)$ (`eps = 1e-6` in every
#   normalization), and these deficits compound: about $6\cdot10^{-5}$ at depth 60.
# * mHC's backward gain is off by the size of one map's column error (section 2), and it does not grow
#   with depth. The bound $\mathrm{gain_{bwd}}(Q_l) \le \prod_k (1 + \delta_k)$ of docs/math.md §7, with
#   $\delta_k$ the column error of $H_k$, would allow growth, but it is loose here. To first order, the
#   column sums of $Q_l$ are $\mathbf{1}^\top + \sum_k e_k^\top H_{k-1} \cdots H_l$, where $e_k$ is
#   $H_k$'s column-sum error. Each $e_k$ sums to about 0, because the rows (and so the total of all
#   entries) are exact. The nearly doubly stochastic products that follow it mix it towards the
#   uniform vector, and a vector that sums to 0 mixes away.
# * mHC-lite stays at float32 rounding.

# %%
fig, ax = plt.subplots(figsize=(8, 4.5))
for c, name in enumerate(families):
  if name.startswith("mHC"):
    for direction, style in (("forward", "-"), ("backward", "--")):
      deviation = np.abs(gains[name][direction] - 1).max(axis=1)
      ax.plot(depth, np.maximum(deviation, 1e-9), style, color=f"C{c}", label=f"{name}, {direction}")
ax.set(yscale="log", xlabel="sublayer l", ylabel="max over tokens of |composite gain - 1|",
       title="how far the constrained composites are from gain 1 (floored at 1e-9)")
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=8)
plt.show()

assert gains["HC, s_alpha = 0.3"]["forward"][-1].mean() > 10  # unconstrained: blows up
assert abs(gains["mHC-lite (permutations)"]["forward"] - 1).max() < 1e-4
assert abs(gains["mHC (Sinkhorn)"]["backward"] - 1).max() < 0.05

# %% [markdown]
# Gain 1 does not mean the composite is the identity. A product of doubly stochastic matrices with
# positive entries tends to the uniform matrix $\frac{1}{n}\mathbf{1}\mathbf{1}^\top$, so after many
# random mHC maps every stream holds the average of all of them. The total is preserved, but the streams
# lose their identity. HC's composites have no fixed total and grow instead. The library's
# `analysis.plot_maps` shows one token's single maps $H_l$ (top) and forward composites $P_l$ (bottom) at
# the first, middle and last sublayer:

# %%
for name, file in (("HC, s_alpha = 0.3", "maps_hc.png"), ("mHC (Sinkhorn)", "maps_mhc.png")):
  print(f"{name}, token 0")
  display(Image(filename=analysis.plot_maps(families[name][:, 0], FIGURES / file)))
