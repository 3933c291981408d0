"""hesso_jax.examples: the tutorials' shared data loader, batch iterator and CNN."""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hesso_jax import examples


def test_batches_cover_every_example_once_per_epoch_and_stop_after_steps():
  x, y = np.arange(20.0).reshape(10, 2), np.arange(10)
  got = list(examples.batches(x, y, 5, seed=3, steps=4))
  assert len(got) == 4 and all(xb.shape == (5, 2) and yb.shape == (5,) for xb, yb in got)
  for xb, yb in got:
    np.testing.assert_array_equal(xb[:, 0], 2.0 * yb)  # rows stay paired with their labels
  for epoch in (got[:2], got[2:]):
    assert sorted(np.concatenate([yb for _, yb in epoch]).tolist()) == list(range(10))
  again = [yb for _, yb in examples.batches(x, y, 5, seed=3, steps=4)]
  assert all(np.array_equal(a, b) for a, (_, b) in zip(again, got, strict=True))


def test_batches_drop_the_incomplete_batch_and_validate():
  x, y = np.zeros((7, 1)), np.arange(7)
  assert all(len(yb) == 3 for _, yb in examples.batches(x, y, 3, steps=5))
  with pytest.raises(ValueError, match="lengths differ"):
    next(examples.batches(x, y[:3], 2))
  with pytest.raises(ValueError, match="batch_size"):
    next(examples.batches(x, y, 8))


def test_load_digits_layouts_agree_and_are_scaled():
  d, f = examples.load_digits(), examples.load_digits(flat=True)
  np.testing.assert_array_equal(d.x_train.reshape(len(d.x_train), -1), f.x_train)
  np.testing.assert_array_equal(d.y_test, f.y_test)
  assert d.x_train.min() >= 0.0 and d.x_train.max() == 1.0 and set(d.y_train) == set(range(10))
  with pytest.raises(ValueError, match="test_size"):
    examples.load_digits(test_size=1.5)


def test_load_digits_without_scikit_learn_says_what_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "sklearn", None)
  monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
  with pytest.raises(ImportError, match=r"hesso-jax\[examples\]"):
    examples.load_digits()


def test_digits_cnn_shapes():
  model = examples.DigitsCNN(features=(4, 8, 8), hidden=16)
  v = model.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1)))
  assert model.apply(v, jnp.zeros((3, 8, 8, 1))).shape == (3, 10)
  assert set(v) == {"params", "batch_stats"}
