"""Data module: the whole-document split, byte tokens, and the grain training pipeline
(determinism, checkpoint/resume, real windows)."""

import collections
import json
import math
import pickle

import numpy as np
import pytest

from mhc_jax.train import corpus, data


def _docs(sizes, seed=0):
  """Synthetic documents with distinct random lowercase text."""
  rng = np.random.default_rng(seed)
  return [corpus.Document(f"doc{i:02d}", bytes(rng.integers(97, 123, size).astype(np.uint8)))
          for i, size in enumerate(sizes)]


def _text_tokens(n=5000, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(32, 127, n).astype(np.uint8)


def _take(it, n):
  return [next(it) for _ in range(n)]


# ----------------------------------------------------------------------------------------------
# The shared corpus (skipped where it is absent)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_docs():
  folder = corpus.default_corpus_dir()
  if folder is None:
    pytest.skip("no shared/data/text folder and MHC_JAX_DATA unset: shared corpus tests skipped")
  return corpus.load_documents()


def test_shared_corpus_holds_out_default_documents(shared_docs):
  names = [d.name for d in shared_docs]
  assert names == sorted(names) and len(set(names)) == len(names)
  assert {n.split("/")[0] for n in names} == {"shakespeare", "gutenberg"}
  assert all(b"\r\n" not in d.data for d in shared_docs)
  train, val = data.split_documents(shared_docs)
  assert [d.name for d in val] == sorted(data.DEFAULT_VAL_NAMES)
  by_name = {d.name: d for d in shared_docs}
  assert all(by_name[d.name].data == d.data for d in train + val)  # whole, unchanged documents
  assert sorted(d.name for d in train + val) == names
  again = data.split_documents(list(reversed(shared_docs)))
  assert [d.name for d in again[0]] == [d.name for d in train]


def test_shared_corpus_val_text_never_in_train(shared_docs):
  train, val = data.split_documents(shared_docs)
  train_bytes = data.concat_tokens(train).tobytes()
  val_bytes = data.concat_tokens(val).tobytes()
  for doc in val:
    mid = len(doc.data) // 2
    probe = doc.data[mid:mid + 300]
    assert probe in val_bytes and probe not in train_bytes, doc.name
  control = train[len(train) // 2].data  # the same probe of a training document is found
  assert control[len(control) // 2:len(control) // 2 + 300] in train_bytes


def test_text_data_on_shared_corpus(shared_docs):
  d = data.text_data_from_documents(shared_docs, seq_len=128, batch_size=4, seed=1)
  train, val = data.split_documents(shared_docs)
  stats = d.stats()
  assert stats["documents"] == len(shared_docs)
  assert stats["train_bytes"] == sum(len(x.data) for x in train) + 2 * (len(train) - 1)
  assert stats["val_bytes"] == sum(len(x.data) for x in val) + 2 * (len(val) - 1)
  counts, n = collections.Counter(d.val_tokens.tobytes()), len(d.val_tokens)
  reference = -sum(c / n * math.log2(c / n) for c in counts.values())
  assert stats["val_unigram_bits_per_byte"] == pytest.approx(reference, rel=1e-12)
  batch = next(d.train_iterator())
  assert batch.shape == (4, 129) and batch.dtype == np.int32
  assert len(d.eval_batches(3)) == 3


# ----------------------------------------------------------------------------------------------
# Split
# ----------------------------------------------------------------------------------------------


def test_split_holds_out_whole_documents_deterministically():
  docs = _docs([1000 + 137 * i for i in range(20)])
  train, val = data.split_documents(docs, val_fraction=0.2)
  assert train and val
  assert {d.name for d in train}.isdisjoint(d.name for d in val)
  originals = {d.name: d.data for d in docs}
  assert all(originals[d.name] == d.data for d in train + val)
  assert len(train) + len(val) == len(docs)
  fraction = sum(len(d.data) for d in val) / sum(len(d.data) for d in docs)
  assert 0.1 < fraction < 0.3
  rng = np.random.default_rng(1)
  shuffled = [docs[i] for i in rng.permutation(len(docs))]
  again = data.split_documents(shuffled, val_fraction=0.2)
  assert [d.name for d in again[1]] == [d.name for d in val]
  assert [d.name for d in again[0]] == [d.name for d in train]


def test_split_keeps_one_document_in_each_split():
  docs = _docs([5000, 7000])
  train, val = data.split_documents(docs, val_fraction=0.01)
  assert len(train) == 1 and len(val) == 1
  assert val[0].name == "doc00"  # the one closer to the (tiny) target size


def test_split_uses_default_names_only_when_all_present():
  docs = _docs([300] * 4)
  named = [corpus.Document(n, d.data) for n, d in zip(data.DEFAULT_VAL_NAMES + ("a/x", "b/y"), docs)]
  _, val = data.split_documents(named)
  assert [d.name for d in val] == sorted(data.DEFAULT_VAL_NAMES)
  train, val = data.split_documents(named[1:])  # one default name missing: hash-based choice
  assert len(train) >= 1 and len(val) >= 1
  assert data.split_documents(list(reversed(named[1:])))[1] == val
  _, val = data.split_documents(named, val_names=["a/x"])
  assert [d.name for d in val] == ["a/x"]


def test_split_single_document_splits_its_tail():
  doc = _docs([1234])[0]
  train, val = data.split_documents([doc], val_fraction=0.1)
  cut = 1234 - round(1234 * 0.1)
  assert train[0].data == doc.data[:cut] and val[0].data == doc.data[cut:]
  assert train[0].name == f"doc00[:{cut}]" and val[0].name == f"doc00[{cut}:]"


def test_split_errors_name_the_bad_value():
  docs = _docs([100, 100])
  with pytest.raises(ValueError, match="nope"):
    data.split_documents(docs, val_names=["nope"])
  with pytest.raises(ValueError, match="val_fraction=1.5"):
    data.split_documents(docs, val_fraction=1.5)
  with pytest.raises(ValueError, match="no training document"):
    data.split_documents(docs, val_names=["doc00", "doc01"])


# ----------------------------------------------------------------------------------------------
# Tokens
# ----------------------------------------------------------------------------------------------


def test_encode_decode_round_trip():
  text = "Hello, wörld — ñ\n"
  tokens = data.encode(text)
  assert tokens.dtype == np.uint8 and list(tokens) == list(text.encode("utf-8"))
  assert data.decode(tokens) == text
  assert data.decode(tokens.astype(np.int32)) == text
  assert data.decode(np.array([0xC3], np.uint8)) == "\ufffd"
  with pytest.raises(ValueError, match="256"):
    data.decode(np.array([65, 300]))


def test_unigram_entropy_matches_reference():
  tokens = data.encode("the quick brown fox jumps over the lazy dog, twice over")
  counts = collections.Counter(tokens.tolist())
  reference = -sum(c / len(tokens) * math.log2(c / len(tokens)) for c in counts.values())
  assert data.unigram_entropy_bits(tokens) == pytest.approx(reference, rel=1e-12)
  assert data.unigram_entropy_bits(np.arange(256)) == pytest.approx(math.log2(256))


# ----------------------------------------------------------------------------------------------
# Training pipeline
# ----------------------------------------------------------------------------------------------


def test_iterator_is_deterministic_per_seed():
  tokens = _text_tokens()
  a = _take(data.make_train_iterator(tokens, 16, 4, seed=3), 10)
  b = _take(data.make_train_iterator(tokens, 16, 4, seed=3), 10)
  c = _take(data.make_train_iterator(tokens, 16, 4, seed=4), 10)
  np.testing.assert_array_equal(np.stack(a), np.stack(b))
  assert not np.array_equal(np.stack(a), np.stack(c))


def test_iterator_resumes_from_saved_state():
  tokens = _text_tokens()
  it = data.make_train_iterator(tokens, 16, 4, seed=0)
  _take(it, 5)
  state = json.loads(json.dumps(it.get_state()))  # checkpoints store it as JSON
  expected = _take(it, 3)
  fresh = data.make_train_iterator(tokens, 16, 4, seed=0)
  fresh.set_state(state)
  np.testing.assert_array_equal(np.stack(_take(fresh, 3)), np.stack(expected))
  unresumed = _take(data.make_train_iterator(tokens, 16, 4, seed=0), 3)
  assert not np.array_equal(np.stack(unresumed), np.stack(expected))


def test_windows_are_training_substrings():
  tokens = _text_tokens(3000)
  haystack = tokens.tobytes()
  for batch in _take(data.make_train_iterator(tokens, 32, 8, seed=0), 5):
    assert batch.shape == (8, 33) and batch.dtype == np.int32
    for row in batch:
      assert row.astype(np.uint8).tobytes() in haystack


def test_iterator_is_infinite_and_reaches_every_offset():
  n, seq_len = 256, 4  # 252 offsets = 63 windows of 4: window index = offset // 4, no wrap-around
  tokens = np.arange(n, dtype=np.uint8)  # distinct values: a window's first token is its offset
  windows = data.num_train_windows(n, seq_len)
  epoch = data.train_epoch_elements(n, seq_len)
  assert windows == 63 and epoch % windows == 0 and epoch >= data.MIN_EPOCH_ELEMENTS
  batches = _take(data.make_train_iterator(tokens, seq_len, 16, seed=0), 3 * epoch // 16 + 1)
  rows = np.concatenate(batches)
  np.testing.assert_array_equal(rows, rows[:, :1] + np.arange(seq_len + 1))
  assert set(rows[:, 0].tolist()) == set(range(n - seq_len))
  index = rows[:, 0] // seq_len
  first, second = index[:epoch], index[epoch:2 * epoch]
  # Every epoch is a permutation of the repeated windows, in a new order each epoch.
  np.testing.assert_array_equal(np.bincount(first, minlength=windows), epoch // windows)
  np.testing.assert_array_equal(np.bincount(second, minlength=windows), epoch // windows)
  assert not np.array_equal(first, second)


def test_window_transform_pickles():
  tokens = _text_tokens(500)
  transform = data.RandomWindow(tokens, 10)
  clone = pickle.loads(pickle.dumps(transform))
  a = transform.random_map(3, np.random.default_rng(0))
  b = clone.random_map(3, np.random.default_rng(0))
  np.testing.assert_array_equal(a, b)


def test_seq_len_too_long_names_the_values():
  tokens = _text_tokens(50)
  with pytest.raises(ValueError, match=r"seq_len=50.*only 50 tokens"):
    data.make_train_iterator(tokens, 50, 2, seed=0)
  with pytest.raises(ValueError, match="batch_size=0"):
    data.make_train_iterator(tokens, 8, 0, seed=0)
  with pytest.raises(ValueError, match=r"seq_len=60.*only 50 tokens"):
    data.eval_batches(tokens, 60, 2, 1)


def test_eval_batches_cover_data_from_the_start():
  tokens = _text_tokens(1000)
  seq_len, batch_size = 10, 4
  batches = data.eval_batches(tokens, seq_len, batch_size, max_batches=5)
  assert len(batches) == 5 and all(b.shape == (4, 11) and b.dtype == np.int32 for b in batches)
  rows = np.concatenate(batches)
  for k, row in enumerate(rows):
    np.testing.assert_array_equal(row, tokens[k * seq_len:k * seq_len + seq_len + 1])
  targets = np.concatenate([row[1:] for row in rows])  # predicted tokens: contiguous, no overlap
  np.testing.assert_array_equal(targets, tokens[1:1 + len(targets)])
  all_batches = data.eval_batches(tokens, seq_len, batch_size, max_batches=100)
  assert len(all_batches) == (len(tokens) - 1) // seq_len // batch_size
  short = data.eval_batches(tokens[:35], seq_len, batch_size, max_batches=2)
  assert len(short) == 1 and short[0].shape == (3, 11)


# ----------------------------------------------------------------------------------------------
# User sources (reading them: test_corpus.py)
# ----------------------------------------------------------------------------------------------


def test_user_file_source_trains_on_its_head(tmp_path):
  text = "".join(f"line {i}: some words of text\n" for i in range(200))
  path = tmp_path / "story.txt"
  path.write_text(text)
  docs = corpus.load_documents(path)
  assert [d.name for d in docs] == ["story"] and docs[0].data == text.encode()
  d = data.prepare_data(str(path), seq_len=32, batch_size=2, seed=0, verbose=False)
  assert d.train_tokens.tobytes() + d.val_tokens.tobytes() == text.encode()
  assert len(d.val_tokens) == round(len(text) * 0.1)
  batch = next(d.train_iterator())
  assert all(row.astype(np.uint8).tobytes() in d.train_tokens.tobytes() for row in batch)


def test_prepare_data_rejects_seq_len_longer_than_val(tmp_path):
  (tmp_path / "big.txt").write_text("x" * 5000)
  (tmp_path / "small.txt").write_text("y" * 40)
  with pytest.raises(ValueError, match=r"seq_len=64.*validation data has only 40"):
    data.prepare_data(str(tmp_path), seq_len=64, batch_size=2, val_names=["small"], verbose=False)


def test_rows_of_a_batch_read_by_separate_iterators_join_into_the_batch():
  """A process's share (a block of rows) of every batch, and the position counts global batches."""
  tokens = np.random.default_rng(0).integers(0, 256, 20_000).astype(np.uint8)
  whole = data.make_train_iterator(tokens, 16, 8, seed=3)
  parts = [data.make_train_iterator(tokens, 16, 8, seed=3, rows=slice(2 * i, 2 * i + 2)) for i in range(4)]
  for _ in range(3):
    np.testing.assert_array_equal(np.concatenate([next(p) for p in parts]), next(whole))
  assert parts[1].get_state() == whole.get_state()
  resumed = data.make_train_iterator(tokens, 16, 8, seed=3, rows=slice(4, 8))  # another split, same position
  resumed.set_state(whole.get_state())
  np.testing.assert_array_equal(next(resumed), next(whole)[4:8])
  with pytest.raises(ValueError, match="must be one of the equal blocks"):
    data.make_train_iterator(tokens, 16, 8, seed=3, rows=slice(1, 4))
