"""Offline data for the examples: scikit-learn's bundled digits and a mini-batch iterator."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np


class Digits(NamedTuple):
  """The digits split into train and test arrays (images float32 in [0, 1], labels int32)."""

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray


def load_digits(test_size: float = 0.25, seed: int = 0, *, flat: bool = False) -> Digits:
  """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), stratified split; no download.

  Args:
    test_size: fraction of the images held out (the default gives 1347 train / 450 test).
    seed: seed of the split.
    flat: ``False`` gives NHWC images ``(N, 8, 8, 1)`` for a CNN; ``True`` gives ``(N, 64)``
      vectors for an MLP.

  Returns:
    A :class:`Digits` of numpy arrays.

  Raises:
    ImportError: scikit-learn is not installed (it ships the data).
    ValueError: ``test_size`` is not in (0, 1).

  Example:

  >>> from hesso_jax.examples import load_digits
  >>> data = load_digits()
  >>> data.x_train.shape, data.x_test.shape, data.x_train.dtype
  ((1347, 8, 8, 1), (450, 8, 8, 1), dtype('float32'))
  >>> load_digits(flat=True).x_train.shape
  (1347, 64)
  """
  if not 0.0 < test_size < 1.0:
    raise ValueError(f"test_size must be in (0, 1), got {test_size}")
  try:
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split
  except ImportError as e:
    raise ImportError(
      "hesso_jax.examples.load_digits needs scikit-learn, which ships the digits data: "
      'pip install scikit-learn  (or pip install "hesso-jax[examples]")'
    ) from e
  bunch = sk_load_digits()
  x = bunch.images.astype(np.float32) / 16.0  # pixel values 0..16
  x = x.reshape(len(x), -1) if flat else x[..., None]
  y = bunch.target.astype(np.int32)
  x_tr, x_te, y_tr, y_te = train_test_split(
    x, y, test_size=test_size, random_state=seed, stratify=y
  )
  return Digits(x_tr, y_tr, x_te, y_te)


def batches(
  x: np.ndarray, y: np.ndarray, batch_size: int, *, seed: int = 0, steps: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Shuffled mini-batches ``(x[idx], y[idx])``, reshuffled each epoch with a seeded RNG.

  Only full batches are yielded (one compiled step shape). ``steps=None`` never stops; otherwise
  exactly ``steps`` batches. The same seed gives the same sequence, so two runs (dense and
  pruned, or an interrupted and a resumed one) see the same data.

  Raises:
    ValueError: ``x`` and ``y`` differ in length, or ``batch_size`` is not in [1, len(x)].

  Example (5 examples, batches of 2: two per epoch, the fifth example waits for the next epoch):

  >>> import numpy as np
  >>> from hesso_jax.examples import batches
  >>> x, y = np.arange(10.0).reshape(5, 2), np.arange(5)
  >>> [yb.tolist() for _, yb in batches(x, y, 2, seed=0, steps=3)]
  [[2, 4], [3, 0], [4, 1]]
  """
  n = len(x)
  if n != len(y):
    raise ValueError(f"x and y lengths differ: {n} vs {len(y)}")
  if not 1 <= batch_size <= n:
    raise ValueError(f"batch_size must be in [1, {n}], got {batch_size}")
  rng = np.random.default_rng(seed)
  done = 0
  while steps is None or done < steps:
    perm = rng.permutation(n)
    for s in range(0, n - batch_size + 1, batch_size):
      if steps is not None and done >= steps:
        return
      idx = perm[s : s + batch_size]
      yield x[idx], y[idx]
      done += 1
