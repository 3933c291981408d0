"""Small, offline building blocks for the tutorials, the README quickstart and the docs.

Nothing here is needed to *use* hesso_jax; it exists so that the notebooks in ``colab/`` and the
quickstart share one copy of their data loader and model instead of three:

* :func:`load_digits` -- scikit-learn's bundled 8x8 digits (no download), NHWC ``float32``.
* :func:`batches` -- seeded, shuffled mini-batches over numpy arrays.
* :class:`DigitsCNN` -- a conv-BN-ReLU flax.linen CNN for the digits (nothing HESSO-specific).

The loader needs scikit-learn (``pip install "hesso-jax[examples]"``); it is imported inside the
function, so ``import hesso_jax.examples`` works without it.
"""

from hesso_jax.examples._data import Digits, batches, load_digits
from hesso_jax.examples._models import DigitsCNN

__all__ = ["Digits", "DigitsCNN", "batches", "load_digits"]
