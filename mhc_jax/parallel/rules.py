"""Logical axis names, and the rule sets that map them to mesh axes (DP, FSDP, FSDP+TP).

Every parameter of the model carries logical axis names as nnx metadata
(``variable.get_metadata()["logical_axes"]``, one name or None per array axis):

  layers         the stacked-blocks axis (split over the pipeline stages)
  vocab          the vocabulary (embedding rows, unembedding columns)
  embed          d_model, the width C of one stream
  stream_embed   the N*C rows of mHC's phi and the stream head's phi (N streams of width C)
  coefficients   the K = N*N + 2N columns of phi, and mHC's bias
  heads          attention's fused q/k/v columns and its output rows (all heads)
  mlp            the MLP's hidden width
  norm           RMSNorm scales
  None           never sharded (gates, HC's static parts, scalars)

A rule set is a tuple of ``(logical name, mesh axis or tuple of mesh axes)``, MaxText-style;
names not listed are replicated. ``batch`` names the global batch's rows: the data-parallel
axes. The mesh axes are ``STAGE_AXIS`` (pipeline stages) followed by ``MESH_AXES`` = (data,
fsdp, tensor); an axis of size 1 shards nothing, so every rule set runs on every mesh. Every
rule set puts the blocks' ``layers`` axis on the stages: each stage holds its own blocks.
"""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

STAGE_AXIS = "stage"
MESH_AXES = ("data", "fsdp", "tensor")
LOGICAL_AXES = ("layers", "vocab", "embed", "stream_embed", "coefficients", "heads", "mlp", "norm")
METADATA_KEY = "logical_axes"

_BATCH = ("batch", ("data", "fsdp"))
_STAGES = ("layers", STAGE_AXIS)
RULE_SETS = {
    # Data parallel: parameters and optimizer state replicated, the batch split.
    "dp": (_BATCH, _STAGES),
    # Fully sharded data parallel: parameters, gradients and optimizer state split over fsdp on
    # their d_model axis (all-gathered for use), the batch split over data and fsdp.
    "fsdp": (_BATCH, _STAGES, ("embed", "fsdp"), ("stream_embed", "fsdp")),
    # FSDP plus Megatron-style tensor parallelism: attention heads, the MLP's hidden width and
    # the vocabulary split over tensor.
    "fsdp_tp": (_BATCH, _STAGES, ("embed", "fsdp"), ("stream_embed", "fsdp"), ("heads", "tensor"),
                ("mlp", "tensor"), ("vocab", "tensor")),
}


def logical_axes(variable: nnx.Variable) -> tuple:
  """The logical names of ``variable``'s axes; raises if it has none."""
  names = variable.get_metadata().get(METADATA_KEY)
  if names is None:
    raise ValueError(f"{type(variable).__name__} of shape {variable.shape} has no {METADATA_KEY!r} "
                     "metadata: every parameter needs logical axis names to be sharded")
  return tuple(names)


def spec(names, rules, shape=None, mesh=None, what: str = "array") -> PartitionSpec:
  """The PartitionSpec of an array with logical axis ``names`` under ``rules``.

  ``names`` may be shorter than the array's rank (a stacking transform that added unnamed
  leading axes): those axes are replicated. With ``shape`` and ``mesh``, a dimension that the
  mesh axes do not divide raises a ValueError that names it.
  """
  table = dict(rules)
  names = tuple(names)
  if shape is not None:
    names = (None,) * (len(shape) - len(names)) + names
  axes = tuple(table.get(n) if n is not None else None for n in names)
  if shape is not None and mesh is not None:
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    for dim, (n, a) in enumerate(zip(names, axes)):
      ways = 1
      for m in (a,) if isinstance(a, str) else (a or ()):
        ways *= sizes[m]
      if shape[dim] % ways:
        raise ValueError(f"{what} of shape {tuple(shape)}: axis {dim} ({n!r}, {shape[dim]}) does not "
                         f"split evenly over mesh axes {a} ({ways} devices); change the mesh or the model")
  return PartitionSpec(*axes)


def param_shardings(abstract_params: nnx.State, rules, mesh) -> dict:
  """``NamedSharding`` for every parameter, as a pure dict (``nnx.to_pure_dict`` layout)."""
  def sharding(path, variable):
    where = "/".join(str(getattr(k, "key", k)) for k in path)
    return NamedSharding(mesh, spec(logical_axes(variable), rules, variable.shape, mesh, f"parameter {where}"))

  shardings = jax.tree_util.tree_map_with_path(sharding, abstract_params,
                                               is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.to_pure_dict(shardings)


def batch_axes(rules) -> tuple[str, ...]:
  """The mesh axes that split a batch's rows (the ``batch`` rule)."""
  axes = dict(rules).get("batch") or ()
  return (axes,) if isinstance(axes, str) else tuple(axes)


def batch_spec(rules) -> PartitionSpec:
  """Rows of a batch split over the ``batch`` rule's mesh axes; the sequence whole."""
  return PartitionSpec(batch_axes(rules) or None, None)
