"""Corpus: documents from a file or folder, and the default corpus fetched into a cache (with fake
downloaders: no network)."""

import collections
import gzip
import pathlib

import pytest

from mhc_jax.train import corpus, data


def test_user_folder_source(tmp_path):
  (tmp_path / "sub").mkdir()
  (tmp_path / "a.txt").write_bytes(b"first line\r\nsecond line\r\n")
  (tmp_path / "sub" / "b.md").write_text("# Title\n\nbody text\n")
  (tmp_path / "c.txt.gz").write_bytes(gzip.compress(b"caf\xe9 in latin-1\n"))
  (tmp_path / "skip.bin").write_bytes(b"binary")
  (tmp_path / ".hidden.txt").write_text("hidden")
  docs = corpus.load_documents(str(tmp_path))
  assert [d.name for d in docs] == ["a", "c", "sub/b.md"]
  assert docs[0].data == b"first line\nsecond line\n"
  assert docs[1].data == "caf\ufffd in latin-1\n".encode()
  assert docs[2].data == b"# Title\n\nbody text\n"


def test_missing_and_empty_sources(tmp_path, monkeypatch):
  missing = tmp_path / "no_such_corpus"
  with pytest.raises(FileNotFoundError, match="no_such_corpus"):
    corpus.load_documents(str(missing))
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "blank.txt").write_text("")
  with pytest.raises(ValueError, match="empty.*holds no text"):
    corpus.load_documents(str(tmp_path / "empty"))
  monkeypatch.setenv(corpus.DATA_ENV, str(missing))
  with pytest.raises(FileNotFoundError, match="MHC_JAX_DATA"):
    corpus.load_documents()



# ----------------------------------------------------------------------------------------------
# Fetch path (fake downloaders: no network)
# ----------------------------------------------------------------------------------------------


def test_fetch_writes_cache_and_second_call_reads_it(tmp_path, monkeypatch):
  monkeypatch.delenv(corpus.DATA_ENV, raising=False)
  monkeypatch.setattr(corpus, "_find_shared_corpus", lambda: None)
  calls = collections.Counter()
  npm_available = False

  def fake_plays(workdir: pathlib.Path):
    calls["plays"] += 1
    assert workdir.is_dir()
    return {"julius_caesar": b"Friends, Romans\r\ncountrymen\r\n", "tempest": b"Full fathom five\n"}

  def fake_books(workdir: pathlib.Path):
    calls["books"] += 1
    return {"carroll-alice": b"Down the rabbit hole\n"} if npm_available else None

  monkeypatch.setattr(corpus, "FETCHERS", {"shakespeare": fake_plays, "gutenberg": fake_books})
  cache = tmp_path / "cache" / "corpus"
  docs = corpus.load_documents(cache_dir=str(cache))
  assert [(d.name, d.data) for d in docs] == [
      ("shakespeare/julius_caesar", b"Friends, Romans\ncountrymen\n"),
      ("shakespeare/tempest", b"Full fathom five\n")]
  cached = (cache / "shakespeare" / "tempest.txt.gz").read_bytes()
  assert gzip.decompress(cached) == b"Full fathom five\n"
  assert calls == {"plays": 1, "books": 1}
  assert sorted(p.name for p in cache.iterdir()) == ["shakespeare"]  # no temp folders left

  npm_available = True  # a skipped part is fetched on a later call; a cached one is not
  docs = corpus.load_documents(cache_dir=str(cache))
  assert calls == {"plays": 1, "books": 2}
  assert [d.name for d in docs] == ["gutenberg/carroll-alice", "shakespeare/julius_caesar",
                                    "shakespeare/tempest"]

  assert cache.name == "corpus"
  monkeypatch.setenv(corpus.CACHE_ENV, str(cache.parent))  # the package cache holds it in corpus/
  again = corpus.load_documents()
  assert calls == {"plays": 1, "books": 2}
  assert [(d.name, d.data) for d in again] == [(d.name, d.data) for d in docs]
  _, val = data.split_documents(again)
  assert [d.name for d in val] == sorted(data.DEFAULT_VAL_NAMES)


def test_failed_fetch_leaves_no_cache(tmp_path, monkeypatch):
  def broken(workdir):
    raise RuntimeError("network down")

  monkeypatch.setattr(corpus, "FETCHERS", {"shakespeare": broken})
  with pytest.raises(RuntimeError, match="network down"):
    corpus.ensure_cached_corpus(tmp_path / "cache")
  assert list((tmp_path / "cache").iterdir()) == []
