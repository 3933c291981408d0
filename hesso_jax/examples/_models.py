"""A small flax.linen CNN for the digits (an ordinary model: nothing HESSO-specific inside)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax


class DigitsCNN(nn.Module):
  """conv-BN-ReLU x len(features), 2x2 max-pools after the second and third, a hidden dense layer.

  For 8x8x1 inputs with the defaults: 8x8x16 -> 8x8x32 -> pool 4x4 -> 4x4x64 -> pool 2x2 ->
  flatten 256 -> ``hidden`` -> ``num_classes``. Batch-norm running statistics live in the
  ``'batch_stats'`` collection: call ``apply(..., train=True, mutable=['batch_stats'])`` to train.
  """

  features: Sequence[int] = (16, 32, 64)
  hidden: int = 64
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for i, f in enumerate(self.features):
      x = nn.Conv(f, (3, 3), padding="SAME", name=f"conv{i}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"bn{i}")(x)
      x = nn.relu(x)
      if i >= 1:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))  # NHWC flatten: the channel is the fastest axis
    x = nn.relu(nn.Dense(self.hidden, name="fc")(x))
    return nn.Dense(self.num_classes, name="head")(x)
