"""Byte-level training data: a whole-document train / validation split and grain pipelines.

The documents come from :mod:`mhc_jax.train.corpus` (a text file or folder, or the default corpus).
Validation holds out whole documents, so no validation text is ever trained on. Tokens are bytes
(vocabulary 256). Training batches come from a grain pipeline that is infinite, deterministic given
its seed, and checkpointable through ``get_state()`` / ``set_state()``.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
import dataclasses
import hashlib
import math
import sys

import grain
import numpy as np

from mhc_jax.train.corpus import Document, PathLike, load_documents
from mhc_jax.validation import check_int, check_number

VOCAB_SIZE = 256
DOC_SEPARATOR = b"\n\n"  # between documents in a token stream
DEFAULT_VAL_NAMES = ("shakespeare/julius_caesar", "gutenberg/carroll-alice")


def _log(message: str) -> None:
  print(f"mhc_jax.data: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Train / validation split
# ---------------------------------------------------------------------------------------------


def _stable_hash(name: str) -> str:
  return hashlib.sha256(name.encode("utf-8")).hexdigest()


def _choose_val_names(docs: Sequence[Document], val_fraction: float) -> set[str]:
  """Walks the documents in hash order, taking each one that brings the val bytes closer to
  ``val_fraction`` of all bytes; at least one document is taken and at least one left."""
  target = val_fraction * sum(len(d.data) for d in docs)
  order = sorted(docs, key=lambda d: (_stable_hash(d.name), d.name))
  chosen, size = set(), 0
  for doc in order:
    if len(chosen) == len(docs) - 1:
      break
    if abs(size + len(doc.data) - target) < abs(size - target):
      chosen.add(doc.name)
      size += len(doc.data)
  if not chosen:  # every document is much larger than the target: take the closest one
    chosen.add(min(order, key=lambda d: abs(len(d.data) - target)).name)
  return chosen


def split_documents(docs: Iterable[Document], val_names: str | Iterable[str] | None = None,
                    val_fraction: float = 0.1) -> tuple[list[Document], list[Document]]:
  """Splits into ``(train, val)`` by whole documents, each list sorted by name.

  ``val_names`` given: exactly those documents are held out. Otherwise ``DEFAULT_VAL_NAMES`` when
  all of them are present, else a deterministic choice by a hash of the names that holds out about
  ``val_fraction`` of the bytes. Fallback for a single document: its last ``val_fraction`` of bytes
  becomes the validation document ``"name[cut:]"`` and the rest the training one ``"name[:cut]"``.
  """
  docs = list(docs)
  check_number("val_fraction", val_fraction, high=1.0, low_open=True)
  if not docs:
    raise ValueError("split_documents got no documents")
  names = [d.name for d in docs]
  duplicates = sorted(n for n, count in collections.Counter(names).items() if count > 1)
  if duplicates:
    raise ValueError(f"duplicate document names: {duplicates}")
  if val_names is not None:
    chosen = {val_names} if isinstance(val_names, str) else set(val_names)
    missing = sorted(chosen - set(names))
    if not chosen:
      raise ValueError(f"val_names={val_names!r} is empty")
    if missing:
      raise ValueError(f"val_names: {missing} not among the {len(names)} documents "
                       f"(e.g. {sorted(names)[:3]})")
    if chosen >= set(names):
      raise ValueError(f"val_names={sorted(chosen)!r} leaves no training document")
  elif len(docs) == 1:
    return _split_tail(docs[0], val_fraction)
  elif set(DEFAULT_VAL_NAMES) <= set(names):
    chosen = set(DEFAULT_VAL_NAMES)
  else:
    chosen = _choose_val_names(docs, val_fraction)
  docs.sort(key=lambda d: d.name)
  return [d for d in docs if d.name not in chosen], [d for d in docs if d.name in chosen]


def _split_tail(doc: Document, val_fraction: float) -> tuple[list[Document], list[Document]]:
  """One document: the last ``val_fraction`` of its bytes (at least one) is validation."""
  n = len(doc.data)
  if n < 2:
    raise ValueError(f"document {doc.name!r} has {n} byte(s); too short to split off validation")
  cut = min(max(n - round(n * val_fraction), 1), n - 1)
  return ([Document(f"{doc.name}[:{cut}]", doc.data[:cut])],
          [Document(f"{doc.name}[{cut}:]", doc.data[cut:])])


# ---------------------------------------------------------------------------------------------
# Byte tokens
# ---------------------------------------------------------------------------------------------


def encode(text: str) -> np.ndarray:
  """UTF-8 bytes of ``text`` as a uint8 array (vocabulary 256)."""
  return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()


def decode(tokens: np.ndarray | Sequence[int]) -> str:
  """Text of a 1-D array of byte tokens (invalid UTF-8 becomes U+FFFD)."""
  array = np.asarray(tokens)
  if array.ndim != 1:
    raise ValueError(f"decode expects a 1-D token array, got shape {array.shape}")
  if array.size and (not np.issubdtype(array.dtype, np.integer)
                     or array.min() < 0 or array.max() >= VOCAB_SIZE):
    raise ValueError(f"decode expects integer byte tokens in [0, {VOCAB_SIZE}), got dtype "
                     f"{array.dtype} with range [{array.min()}, {array.max()}]")
  return array.astype(np.uint8).tobytes().decode("utf-8", errors="replace")


def concat_tokens(docs: Iterable[Document]) -> np.ndarray:
  """The documents' bytes joined by ``DOC_SEPARATOR``, as a read-only uint8 array."""
  return np.frombuffer(DOC_SEPARATOR.join(d.data for d in docs), dtype=np.uint8)


def unigram_entropy_bits(tokens: np.ndarray) -> float:
  """Entropy of the empirical byte distribution in bits per byte (a unigram baseline for bpb)."""
  array = np.asarray(tokens).ravel()
  if array.size == 0:
    raise ValueError("unigram_entropy_bits got no tokens")
  counts = np.bincount(array.astype(np.int64), minlength=VOCAB_SIZE)
  p = counts[counts > 0] / array.size
  return float(-(p * np.log2(p)).sum())


# ---------------------------------------------------------------------------------------------
# Pipelines
# ---------------------------------------------------------------------------------------------


def _check_positive_int(name: str, value) -> None:
  """``check_int(name, value, 1)``, also taking numpy integers (array sizes, shapes)."""
  check_int(name, int(value) if isinstance(value, np.integer) else value, 1)


def _check_tokens(tokens, seq_len: int, what: str) -> np.ndarray:
  _check_positive_int("seq_len", seq_len)
  array = np.asarray(tokens)
  if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
    raise ValueError(f"{what} tokens must be a 1-D integer array, got shape {array.shape} "
                     f"dtype {array.dtype}")
  if seq_len + 1 > len(array):
    raise ValueError(f"seq_len={seq_len} needs windows of seq_len+1={seq_len + 1} tokens, but the "
                     f"{what} data has only {len(array)} tokens")
  return array


def _derive_seed(seed: int, purpose: str) -> int:
  """A 32-bit seed for one random stage, derived from the user seed (any int) and a label."""
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
    raise ValueError(f"seed={seed!r} must be an integer")
  digest = hashlib.sha256(f"{int(seed)}:{purpose}".encode()).digest()
  return int.from_bytes(digest[:4], "little")


# grain's index shuffle costs about 30 ms per epoch however short the epoch is (~1 ms per element
# for 30 windows), so short corpora repeat their windows within an epoch up to this many elements.
MIN_EPOCH_ELEMENTS = 4096


class RandomWindow(grain.transforms.RandomMap):
  """Window index ``i`` -> the ``seq_len + 1`` tokens at offset ``i * seq_len + jitter`` (int32).

  The index is taken modulo ``num_train_windows``; the jitter is uniform in ``[0, seq_len)`` and
  the offset wraps modulo the number of valid offsets, so every offset is possible and the
  windows of one pass cover about every token once.
  """

  def __init__(self, tokens: np.ndarray, seq_len: int):
    self.tokens = tokens
    self.seq_len = seq_len
    self.num_offsets = len(tokens) - seq_len  # valid starts: 0 .. len - seq_len - 1
    self.num_windows = num_train_windows(len(tokens), seq_len)

  def random_map(self, element: int, rng: np.random.Generator) -> np.ndarray:
    window = int(element) % self.num_windows
    start = (window * self.seq_len + int(rng.integers(self.seq_len))) % self.num_offsets
    return self.tokens[start:start + self.seq_len + 1].astype(np.int32)


def num_train_windows(num_tokens: int, seq_len: int) -> int:
  """Distinct window indices of the training pipeline: one pass covers about every token once."""
  return math.ceil((num_tokens - seq_len) / seq_len)


def train_epoch_elements(num_tokens: int, seq_len: int) -> int:
  """Elements per shuffled epoch: the windows, repeated up to ``MIN_EPOCH_ELEMENTS``."""
  windows = num_train_windows(num_tokens, seq_len)
  return windows * max(1, math.ceil(MIN_EPOCH_ELEMENTS / windows))


_NO_THREADS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


def _check_rows(rows: slice | None, batch_size: int) -> tuple[int, int]:
  """``(block, blocks)``: ``rows`` as the block-th of ``blocks`` equal blocks of a global batch."""
  if rows is None:
    return 0, 1
  start, stop = rows.start or 0, batch_size if rows.stop is None else rows.stop
  size = stop - start
  if rows.step not in (None, 1) or size < 1 or batch_size % size or start % size or stop > batch_size:
    raise ValueError(f"rows={rows} must be one of the equal blocks of a batch of {batch_size} rows")
  return start // size, batch_size // size


def make_train_dataset(tokens: np.ndarray, seq_len: int, batch_size: int, seed: int, *,
                       rows: slice | None = None,
                       read_options: grain.ReadOptions | None = None) -> grain.IterDataset:
  """The training pipeline as a grain ``IterDataset`` (e.g. to add ``.mp_prefetch(...)``).

  Window indices are shuffled per epoch (``MapDataset.shuffle`` + ``repeat``, reseeded each
  epoch), turned into windows with a random jitter by ``RandomWindow`` and batched into int32
  ``[batch_size, seq_len + 1]``. ``rows`` (a block of equal size, e.g. ``slice(4, 8)`` of 16)
  keeps only those rows of every global batch, and reads only their windows: a process's share
  in multi-process training. The position (``get_state()``) counts global batches whatever the
  rows, so a run resumes exactly on any number of processes. ``read_options`` defaults to no
  reader threads (slicing in-memory tokens is cheap).
  """
  array = _check_tokens(tokens, seq_len, "training")
  _check_positive_int("batch_size", batch_size)
  block, blocks = _check_rows(rows, batch_size)
  windows = (grain.MapDataset.range(train_epoch_elements(len(array), seq_len))
             .shuffle(seed=_derive_seed(seed, "shuffle"))
             .repeat()
             .random_map(RandomWindow(array, seq_len), seed=_derive_seed(seed, "offset")))
  # Global batch j is blocks j*blocks .. j*blocks + blocks - 1 of batch_size // blocks windows each.
  batches = windows.batch(batch_size // blocks, drop_remainder=True)
  if blocks > 1:
    batches = batches[block::blocks]
  return batches.to_iter_dataset(read_options or _NO_THREADS)


def make_train_iterator(tokens: np.ndarray, seq_len: int, batch_size: int, seed: int, *,
                        rows: slice | None = None,
                        read_options: grain.ReadOptions | None = None) -> grain.DatasetIterator:
  """An infinite iterator of int32 batches ``[batch_size, seq_len + 1]`` of random windows.

  Deterministic given ``seed``. The position is ``it.get_state()`` (a JSON-able dict, e.g.
  ``{"next_index": 7}``); ``set_state`` on any iterator made from the same arguments resumes the
  exact stream. See ``make_train_dataset`` for the pipeline and ``rows``.
  """
  return iter(make_train_dataset(tokens, seq_len, batch_size, seed, rows=rows, read_options=read_options))


def eval_batches(tokens: np.ndarray, seq_len: int, batch_size: int,
                 max_batches: int) -> list[np.ndarray]:
  """Fixed int32 batches ``[batch_size, seq_len + 1]`` from the start of ``tokens``.

  Window ``k`` is ``tokens[k * seq_len : k * seq_len + seq_len + 1]``: consecutive windows share
  one boundary token, so the predicted tokens (all but the first of each window) never overlap
  and cover the data contiguously. Only full batches are returned, up to ``max_batches``, except
  that data shorter than one batch gives a single smaller batch.
  """
  array = _check_tokens(tokens, seq_len, "validation")
  _check_positive_int("batch_size", batch_size)
  _check_positive_int("max_batches", max_batches)
  num_windows = min((len(array) - 1) // seq_len, batch_size * max_batches)
  starts = np.arange(num_windows) * seq_len
  windows = array[starts[:, None] + np.arange(seq_len + 1)].astype(np.int32)
  if num_windows < batch_size:
    return [windows]
  return [windows[i:i + batch_size] for i in range(0, num_windows - batch_size + 1, batch_size)]


# ---------------------------------------------------------------------------------------------
# One call for the training loop
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class TextData:
  """Train and validation byte tokens of a corpus, with the pipeline settings."""

  train_tokens: np.ndarray
  val_tokens: np.ndarray
  train_documents: tuple[str, ...]
  val_documents: tuple[str, ...]
  seq_len: int
  batch_size: int
  seed: int

  def train_iterator(self, read_options: grain.ReadOptions | None = None, *,
                     rows: slice | None = None) -> grain.DatasetIterator:
    """A fresh training iterator of ``rows`` of every batch (see ``make_train_iterator``)."""
    return make_train_iterator(self.train_tokens, self.seq_len, self.batch_size, self.seed, rows=rows,
                               read_options=read_options)

  def eval_batches(self, max_batches: int) -> list[np.ndarray]:
    """Fixed validation batches (see ``eval_batches``)."""
    return eval_batches(self.val_tokens, self.seq_len, self.batch_size, max_batches)

  def stats(self) -> dict:
    """Documents and bytes per split, and the unigram entropy of each split in bits per byte."""
    return {
        "documents": len(self.train_documents) + len(self.val_documents),
        "train_documents": len(self.train_documents),
        "val_documents": len(self.val_documents),
        "train_bytes": int(len(self.train_tokens)),
        "val_bytes": int(len(self.val_tokens)),
        "train_unigram_bits_per_byte": unigram_entropy_bits(self.train_tokens),
        "val_unigram_bits_per_byte": unigram_entropy_bits(self.val_tokens),
        "val_names": list(self.val_documents),
    }


def text_data_from_documents(docs: Sequence[Document], seq_len: int, batch_size: int, seed: int,
                             *, val_names: str | Iterable[str] | None = None,
                             val_fraction: float = 0.1) -> TextData:
  """Splits ``docs`` by document (see ``split_documents``) into train / val token arrays, checking
  that both are long enough for ``seq_len``."""
  _check_positive_int("seq_len", seq_len)
  _check_positive_int("batch_size", batch_size)
  _derive_seed(seed, "check")
  train_docs, val_docs = split_documents(docs, val_names=val_names, val_fraction=val_fraction)
  return TextData(train_tokens=_check_tokens(concat_tokens(train_docs), seq_len, "training"),
                  val_tokens=_check_tokens(concat_tokens(val_docs), seq_len, "validation"),
                  train_documents=tuple(d.name for d in train_docs),
                  val_documents=tuple(d.name for d in val_docs),
                  seq_len=int(seq_len), batch_size=int(batch_size), seed=int(seed))


def prepare_data(source: PathLike | None = None, seq_len: int = 256, batch_size: int = 16,
                 seed: int = 0, *, val_names: str | Iterable[str] | None = None,
                 val_fraction: float = 0.1, cache_dir: PathLike | None = None,
                 verbose: bool = True) -> TextData:
  """Loads ``source`` (see ``load_documents``; None or ``""`` is the default corpus) and splits it
  (see ``text_data_from_documents``). The loop uses ``.train_iterator()`` / ``.eval_batches(n)``."""
  _check_positive_int("seq_len", seq_len)
  _check_positive_int("batch_size", batch_size)
  _derive_seed(seed, "check")
  docs = load_documents(source, cache_dir=cache_dir)
  data = text_data_from_documents(docs, seq_len, batch_size, seed, val_names=val_names,
                                  val_fraction=val_fraction)
  if verbose:
    _log(f"{len(docs)} documents: train {len(data.train_documents)} "
         f"({len(data.train_tokens):,} bytes), val {len(data.val_documents)} "
         f"({len(data.val_tokens):,} bytes: {', '.join(data.val_documents)})")
  return data


__all__ = ["DEFAULT_VAL_NAMES", "DOC_SEPARATOR", "MIN_EPOCH_ELEMENTS", "RandomWindow", "TextData",
           "VOCAB_SIZE", "concat_tokens", "decode", "encode", "eval_batches", "make_train_dataset",
           "make_train_iterator", "num_train_windows", "prepare_data", "split_documents",
           "text_data_from_documents", "train_epoch_elements", "unigram_entropy_bits"]
