"""Offline data loaders for the experiments. Nothing here ever touches the network.

* :func:`load_digits`   -- scikit-learn's bundled 8x8 digits (1797 images, 10 classes), NHWC float32.
* :func:`load_mnist1d`  -- MNIST-1D *generated* from the ``mnist1d`` package's templates
  (``make_dataset``; never ``get_dataset``, which downloads), cached as ``.npz``.
* :func:`load_stdlib_text` -- character-level text: a fixed list of the Python standard library's
  own source files, a char vocabulary and a train/val split; :func:`text_batches` samples windows.
* :func:`batches` -- a seeded mini-batch iterator over (x, y) numpy arrays.

Every loader returns plain numpy arrays.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Iterator

import numpy as np

__all__ = [
    "Dataset", "TextData", "load_digits", "load_mnist1d", "load_stdlib_text", "batches",
    "text_batches", "cache_dir", "STDLIB_FILES",
]


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A supervised classification dataset as numpy arrays."""

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  name: str = ""

  @property
  def input_shape(self) -> tuple[int, ...]:
    return tuple(self.x_train.shape[1:])


def cache_dir() -> pathlib.Path:
  """Where generated arrays are cached: $HESSO_JAX_CACHE or ~/.cache/hesso_jax."""
  d = pathlib.Path(os.environ.get("HESSO_JAX_CACHE", pathlib.Path.home() / ".cache" / "hesso_jax"))
  d.mkdir(parents=True, exist_ok=True)
  return d


# ------------------------------------------------------------------------------------------------
# (a) scikit-learn digits
# ------------------------------------------------------------------------------------------------


def load_digits(test_size: float = 0.25, seed: int = 0) -> Dataset:
  """scikit-learn's bundled 8x8 digits as NHWC float32 in [0, 1], stratified split.

  1797 images of 10 classes; with the default ``test_size=0.25`` that is 1347 train / 450 test.
  """
  from sklearn.datasets import load_digits as _sk_load_digits
  from sklearn.model_selection import train_test_split

  bunch = _sk_load_digits()
  x = (bunch.images.astype(np.float32) / 16.0)[..., None]  # (N, 8, 8, 1), pixel values 0..16
  y = bunch.target.astype(np.int32)
  x_tr, x_te, y_tr, y_te = train_test_split(
      x, y, test_size=test_size, random_state=seed, stratify=y)
  return Dataset(x_tr, y_tr, x_te, y_te, num_classes=10, name="digits")


# ------------------------------------------------------------------------------------------------
# (b) MNIST-1D, generated offline
# ------------------------------------------------------------------------------------------------


def load_mnist1d(num_samples: int = 5000, seed: int = 42, *, channels_last: bool = True,
                 use_cache: bool = True) -> Dataset:
  """MNIST-1D generated from the package's templates (no download).

  Returns x of shape (N, 40, 1) (``channels_last``) or (N, 40), float32, standardised by the
  generator; labels int32 in [0, 10). Defaults give 4000 train / 1000 test, the original split.
  """
  path = cache_dir() / f"mnist1d_n{num_samples}_s{seed}.npz"
  if use_cache and path.exists():
    z = np.load(path)
    x_tr, y_tr, x_te, y_te = z["x"], z["y"], z["x_test"], z["y_test"]
  else:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    state = np.random.get_state()  # make_dataset reseeds numpy's global RNG; put it back after
    try:
      d = make_dataset(args)
    finally:
      np.random.set_state(state)
    x_tr, y_tr = d["x"].astype(np.float32), d["y"].astype(np.int32)
    x_te, y_te = d["x_test"].astype(np.float32), d["y_test"].astype(np.int32)
    if use_cache:
      tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
      np.savez(tmp, x=x_tr, y=y_tr, x_test=x_te, y_test=y_te)
      os.replace(tmp, path)
  if channels_last:
    x_tr, x_te = x_tr[..., None], x_te[..., None]
  return Dataset(x_tr, y_tr, x_te, y_te, num_classes=10, name="mnist1d")


# ------------------------------------------------------------------------------------------------
# (c) character-level text from the standard library's own sources
# ------------------------------------------------------------------------------------------------

# A fixed list (relative to the directory of ``os.py``): plain-Python modules present in every
# CPython 3.10+ install. Missing files are skipped (but at least one must exist).
STDLIB_FILES = (
    "os.py", "functools.py", "collections/__init__.py", "textwrap.py", "string.py",
    "contextlib.py", "dataclasses.py", "abc.py", "heapq.py", "bisect.py", "shlex.py",
    "fnmatch.py", "glob.py", "copy.py", "random.py", "statistics.py", "fractions.py",
    "argparse.py", "enum.py", "json/decoder.py", "json/encoder.py", "queue.py",
)


@dataclasses.dataclass(frozen=True)
class TextData:
  """Character-level corpus: integer-encoded train/val arrays and the vocabulary."""

  train: np.ndarray          # int32 token ids
  val: np.ndarray            # int32 token ids
  chars: tuple[str, ...]     # id -> char
  files: tuple[str, ...]     # the source files actually read

  @property
  def vocab_size(self) -> int:
    return len(self.chars)

  @property
  def stoi(self) -> dict[str, int]:
    return {c: i for i, c in enumerate(self.chars)}

  def encode(self, s: str) -> np.ndarray:
    st = self.stoi
    return np.asarray([st[c] for c in s], np.int32)

  def decode(self, ids) -> str:
    return "".join(self.chars[int(i)] for i in np.asarray(ids).reshape(-1))


def stdlib_dir() -> pathlib.Path:
  return pathlib.Path(os.__file__).resolve().parent


def read_stdlib_text(files=STDLIB_FILES, max_chars: int | None = None) -> tuple[str, tuple[str, ...]]:
  root = stdlib_dir()
  parts, used = [], []
  for rel in files:
    p = root / rel
    if p.is_file():
      parts.append(p.read_text(encoding="utf-8", errors="replace"))
      used.append(str(p))
  if not parts:
    raise FileNotFoundError(f"none of the standard-library files {files} exist under {root}")
  text = "\n".join(parts)
  if max_chars is not None:
    text = text[:max_chars]
  return text, tuple(used)


def load_stdlib_text(val_fraction: float = 0.1, max_chars: int | None = None,
                     files=STDLIB_FILES) -> TextData:
  """Python-stdlib source as a char-level corpus; the last ``val_fraction`` is validation."""
  text, used = read_stdlib_text(files, max_chars)
  chars = tuple(sorted(set(text)))
  stoi = {c: i for i, c in enumerate(chars)}
  ids = np.fromiter((stoi[c] for c in text), dtype=np.int32, count=len(text))
  n_val = int(len(ids) * val_fraction)
  return TextData(train=ids[:len(ids) - n_val], val=ids[len(ids) - n_val:], chars=chars, files=used)


def text_batches(ids: np.ndarray, batch_size: int, seq_len: int, seed: int = 0,
                 num_batches: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Random windows: yields (x, y) int32 of shape (batch, seq_len); y is x shifted by one."""
  if len(ids) <= seq_len + 1:
    raise ValueError(f"text of {len(ids)} tokens is too short for seq_len={seq_len}")
  rng = np.random.default_rng(seed)
  offs = np.arange(seq_len + 1)
  i = 0
  while num_batches is None or i < num_batches:
    starts = rng.integers(0, len(ids) - seq_len - 1, size=batch_size)
    w = ids[starts[:, None] + offs[None, :]]
    yield w[:, :-1], w[:, 1:]
    i += 1


# ------------------------------------------------------------------------------------------------
# batching
# ------------------------------------------------------------------------------------------------


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int = 0, *, shuffle: bool = True,
            drop_last: bool = True, epochs: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Mini-batches of (x, y); reshuffled every epoch with a seeded RNG; ``epochs=None``: forever."""
  n = len(x)
  if n != len(y):
    raise ValueError(f"x and y lengths differ: {n} vs {len(y)}")
  bs = min(batch_size, n)
  rng = np.random.default_rng(seed)
  e = 0
  while epochs is None or e < epochs:
    idx = rng.permutation(n) if shuffle else np.arange(n)
    stop = n - (n % bs) if drop_last else n
    for s in range(0, stop, bs):
      j = idx[s:s + bs]
      yield x[j], y[j]
    e += 1
