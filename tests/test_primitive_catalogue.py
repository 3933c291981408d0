"""The primitive catalogue: every primitive models emit has a rule or a documented verdict."""

import jax.numpy as jnp
import pytest

import hesso_jax as hj
from hesso_jax.discovery import catalogue
from hesso_jax.discovery import rules as R


@pytest.fixture(scope="module")
def table():
  return catalogue.collect()


def test_every_catalogued_call_traces(table):
  errors = {k: v for k, v in table.items() if k.startswith("<error>")}
  assert not errors, errors


def test_every_emitted_primitive_has_a_rule_or_a_documented_verdict(table):
  unknown = {p: calls for p, calls in table.items() if catalogue.verdict(p) is None}
  assert not unknown, ("primitives without a discovery rule or a BLOCKING verdict (add a rule in "
                       f"hesso_jax/discovery/rules.py or document why they block): {unknown}")


def test_catalogue_covers_the_primitives_models_need(table):
  # the calls the catalogue was built for: if a spec silently stopped emitting these, the
  # catalogue would no longer check what it claims to
  for prim in ("stack", "tile", "unstack", "dot_general", "conv_general_dilated", "gather",
               "reduce_window_max", "scan", "cholesky", "fft", "scatter"):
    assert prim in table, prim


def test_a_missing_rule_is_reported():
  saved = R.RULES.pop("stack")
  try:
    assert catalogue.verdict("stack") is None
  finally:
    R.RULES["stack"] = saved
  assert catalogue.verdict("stack") == "rule"


def test_blocking_verdicts_are_documented_and_name_themselves_in_reasons():
  assert all(isinstance(why, str) and len(why) > 20 for why in R.BLOCKING.values())
  p = {"w1": jnp.ones((4, 8)), "w2": jnp.ones((8, 2))}

  def fn(p, x):
    return jnp.fft.fft(x @ p["w1"]).real @ p["w2"]

  space = hj.discover(fn, p, jnp.ones((3, 4)))
  eights = [s for s in space.channel_spaces if s.size == 8]  # w1's outputs, w2's inputs
  assert len(eights) == 2 and all(not s.prunable for s in eights)
  assert all(s.reason.startswith("passes through 'fft' (Fourier transform") for s in eights)
