"""Fast checks of the experiments package: real offline data, model shapes, the training loop."""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from experiments import data as D  # noqa: E402
from experiments import models as M  # noqa: E402
from experiments import train as T  # noqa: E402

CHANCE = 0.1  # ten classes in every classification task


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------


def test_digits_is_the_real_sklearn_set():
  ds = D.load_digits(test_size=0.25, seed=0)
  assert len(ds.x_train) + len(ds.x_test) == 1797
  assert ds.x_train.shape[1:] == (8, 8, 1) and ds.x_train.dtype == np.float32
  assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
  assert ds.num_classes == 10
  for y in (ds.y_train, ds.y_test):
    assert set(np.unique(y)) == set(range(10))
  # stratified: class proportions agree between the splits
  p_tr = np.bincount(ds.y_train, minlength=10) / len(ds.y_train)
  p_te = np.bincount(ds.y_test, minlength=10) / len(ds.y_test)
  assert np.abs(p_tr - p_te).max() < 0.01
  # fixed seed -> same split; and it is scikit-learn's data (first image of the bunch is a 0)
  again = D.load_digits(test_size=0.25, seed=0)
  np.testing.assert_array_equal(ds.x_test, again.x_test)
  from sklearn.datasets import load_digits
  b = load_digits()
  assert b.target[0] == 0
  all_x = np.concatenate([ds.x_train, ds.x_test])[..., 0]
  assert any(np.array_equal(b.images[0] / 16.0, im) for im in all_x)


def test_mnist1d_generated_offline_and_cached(tmp_path, monkeypatch):
  monkeypatch.setenv("HESSO_JAX_CACHE", str(tmp_path))
  state = np.random.get_state()
  ds = D.load_mnist1d()
  assert ds.x_train.shape == (4000, 40, 1) and ds.x_test.shape == (1000, 40, 1)
  assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
  assert set(np.unique(ds.y_train)) == set(range(10))
  assert np.isfinite(ds.x_train).all() and abs(ds.x_train.mean()) < 0.1
  # the generator's global reseeding does not leak
  np.testing.assert_array_equal(np.random.get_state()[1], state[1])
  assert list(tmp_path.glob("mnist1d_*.npz"))
  cached = D.load_mnist1d()
  np.testing.assert_array_equal(cached.x_train, ds.x_train)
  flat = D.load_mnist1d(channels_last=False)
  assert flat.x_test.shape == (1000, 40)


def test_stdlib_text_vocab_and_windows():
  td = D.load_stdlib_text(val_fraction=0.1)
  assert len(td.files) >= 10 and all(f.endswith(".py") for f in td.files)
  assert len(td.train) > 100_000 and len(td.val) > 10_000
  text, _ = D.read_stdlib_text()
  assert len(td.chars) == len(set(text)) == td.vocab_size
  assert max(td.train.max(), td.val.max()) < td.vocab_size
  assert td.decode(np.concatenate([td.train, td.val])) == text
  assert "def " in td.decode(td.train[:20_000])
  np.testing.assert_array_equal(td.encode("import os"), [td.stoi[c] for c in "import os"])
  x, y = next(D.text_batches(td.train, 4, 32, seed=0))
  assert x.shape == y.shape == (4, 32)
  train_text = td.decode(td.train)
  for i in range(4):
    assert td.decode(x[i]) in train_text
    assert td.decode(x[i])[1:] == td.decode(y[i])[:-1]
  # seeded
  x2, _ = next(D.text_batches(td.train, 4, 32, seed=0))
  np.testing.assert_array_equal(x, x2)


def test_batches_epochs_and_seed():
  x = np.arange(10)[:, None]
  y = np.arange(10)
  got = list(D.batches(x, y, 3, seed=1, epochs=1))
  assert len(got) == 3 and all(b[0].shape == (3, 1) for b in got)
  full = list(D.batches(x, y, 3, seed=1, epochs=1, drop_last=False))
  assert sorted(np.concatenate([b[1] for b in full]).tolist()) == list(range(10))
  again = list(D.batches(x, y, 3, seed=1, epochs=1))
  for (a, _), (b, _) in zip(got, again):
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,shape,out", [
    ("digits_cnn", (3, 8, 8, 1), (3, 10)),
    ("digits_resnet", (3, 8, 8, 1), (3, 10)),
    ("mnist1d", (3, 40, 1), (3, 10)),
    ("mnist1d_mlp", (3, 40, 1), (3, 10)),
])
def test_classifiers_forward(name, shape, out):
  m = M.get_model(name)
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  v = jax.eval_shape(lambda: T.init_variables(m, x))  # shapes only: fast
  assert jax.eval_shape(lambda v: m.apply(v, x, train=False), v).shape == out
  if "batch_stats" in v:
    y, upd = jax.eval_shape(lambda v: m.apply(v, x, train=True, mutable=["batch_stats"]), v)
    assert y.shape == out and "batch_stats" in upd


def test_resnet_has_projection_and_identity_shortcuts():
  v = jax.eval_shape(lambda: T.init_variables(M.ResNetSmall(), np.zeros((1, 8, 8, 1), np.float32)))
  p = v["params"]
  assert "proj" in p["stage1_block0"] and "proj" not in p["stage0_block1"]


def test_char_gpt_forward_and_causality():
  m = M.CharGPT(vocab_size=50, block_size=16, d_model=32, num_heads=4, num_layers=2)
  x = np.random.default_rng(0).integers(0, 50, size=(2, 16)).astype(np.int32)
  v = T.init_variables(m, x)
  for k in ("q", "k", "v", "o"):
    assert v["params"]["block0"]["attn"][k]["kernel"].shape == (32, 32)
  fwd = jax.jit(m.apply)
  y = fwd(v, x)
  assert y.shape == (2, 16, 50)
  x2 = x.copy()
  x2[:, -1] = (x2[:, -1] + 1) % 50  # changing the last token must not change earlier positions
  np.testing.assert_allclose(fwd(v, x2)[:, :-1], y[:, :-1], atol=1e-5)


# ------------------------------------------------------------------------------------------------
# training loop
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow  # trains a CNN for several epochs (~11 s)
def test_training_reduces_loss_and_records_history():
  ds = D.load_digits()
  m = M.DigitsCNN(features=(8, 16, 16), hidden=32)
  v = T.init_variables(m, ds.x_train[:2])
  seen = []
  cb = lambda step, var, st, loss: seen.append(step) or {"norm": float(optax.tree.norm(var["params"]))}
  r = T.train(m, v, optax.adam(3e-3), D.batches(ds.x_train, ds.y_train, 64), 60, callback=cb,
              log_every=15, progress=False)
  h = r.history
  assert h["step"] == list(range(1, 61)) and len(h["loss"]) == 60
  assert seen == h["cb_step"] == [15, 30, 45, 60] and len(h["norm"]) == 4
  assert np.mean(h["loss"][-10:]) < 0.5 * np.mean(h["loss"][:5])
  # batch stats were updated by the forward pass
  assert not np.allclose(r.variables["batch_stats"]["bn0"]["mean"], v["batch_stats"]["bn0"]["mean"])
  acc = T.evaluate_classifier(m, r.variables, ds.x_test, ds.y_test)["accuracy"]
  assert acc > 0.5


def test_train_step_passes_value_to_tx():
  """HESSO-CRIC reads the loss as ``value=``; the loop must always pass it."""
  got = {}

  def init(params):
    return optax.EmptyState()

  def update(g, s, params=None, *, value=None, **kw):
    got["value"] = value
    return jax.tree_util.tree_map(lambda x: -0.01 * x, g), s

  tx = optax.GradientTransformationExtraArgs(init, update)
  m = M.MNIST1DMLP(hidden=(8,))
  x = np.ones((4, 40, 1), np.float32)
  v = T.init_variables(m, x)
  step = T.make_train_step(m, tx)
  _, _, loss = step(v, tx.init(v["params"]), jnp.asarray(x), jnp.zeros((4,), jnp.int32))
  assert got["value"] is not None
  # plain optax transformations (no extra-args support) still work
  step2 = T.make_train_step(m, optax.identity())
  step2(v, optax.identity().init(v["params"]), jnp.asarray(x), jnp.zeros((4,), jnp.int32))


def test_char_lm_loss_decreases():
  td = D.load_stdlib_text(max_chars=50_000)
  m = M.CharGPT(vocab_size=td.vocab_size, block_size=32, d_model=32, num_heads=2, num_layers=1)
  v = T.init_variables(m, td.train[:32][None])
  r = T.train(m, v, optax.adam(3e-3), D.text_batches(td.train, 16, 32, seed=0), 60, progress=False)
  assert np.mean(r.history["loss"][-10:]) < np.mean(r.history["loss"][:5]) - 0.5
  ev = T.evaluate_lm(m, r.variables, td.val, 32, num_batches=2)
  assert np.isfinite(ev["perplexity"]) and ev["perplexity"] < td.vocab_size


def test_json_and_plots(tmp_path):
  hist = {"step": [1, 2, 3], "loss": [2.0, 1.0, 0.5], "cb_step": [3], "group_sparsity": [0.5]}
  p = T.write_json({"a": np.float32(1.5), "b": jnp.arange(3), "h": hist}, tmp_path / "r.json")
  assert json.loads(p.read_text())["b"] == [0, 1, 2]
  assert T.plot_history(hist, tmp_path / "h.png").stat().st_size > 1000
  rows = [{"optimizer": "dense", "group_sparsity": 0.0, "accuracy": 0.99},
          {"optimizer": "hesso", "group_sparsity": 0.5, "accuracy": 0.98}]
  assert T.plot_accuracy_vs_sparsity(rows, tmp_path / "a.png").stat().st_size > 1000


@pytest.mark.slow  # the whole CLI run (~15 s)
def test_run_cli_dense_small(tmp_path, monkeypatch):
  monkeypatch.setenv("HESSO_JAX_RESULTS", str(tmp_path))
  from experiments import run
  r = run.run("mnist1d_mlp", "dense", steps=30, small=True, progress=False)
  assert r["accuracy"] > 2 * CHANCE and r["steps"] == 30  # 30 steps already learn something
  assert list((tmp_path / "mnist1d_mlp").glob("dense_*.json"))
  assert list((tmp_path / "mnist1d_mlp").glob("*.png"))


# ------------------------------------------------------------------------------------------------
# glue with the library
# ------------------------------------------------------------------------------------------------


def _members(space):
  return sorted(
      (s.size, tuple(sorted((m.path, m.axis, m.role, m.outer, m.inner) for m in s.members)))
      for s in space.prunable_spaces)


@pytest.mark.parametrize("task,shape", [("digits_cnn", (2, 8, 8, 1)), ("mnist1d", (2, 40, 1)),
                                        ("mnist1d_mlp", (2, 40, 1))])
def test_hand_written_spaces_match_discovery(task, shape):
  import hesso_jax as hj
  m = M.get_model(task)
  x = np.zeros(shape, np.float32)
  v = jax.eval_shape(lambda: T.init_variables(m, x))
  manual = M.manual_space(task, m, v)
  found = hj.discover(M.inference_fn(m), v, x)
  assert _members(manual) == _members(found)


@pytest.mark.slow
def test_run_cli_hesso_small(tmp_path, monkeypatch):
  monkeypatch.setenv("HESSO_JAX_RESULTS", str(tmp_path))
  from experiments import run
  r = run.run("mnist1d_mlp", "hesso", 0.5, steps=30, small=True, progress=False)
  assert r["group_sparsity"] == 0.5 and r["params_kept"] < r["params_total"]
  assert r["history"]["group_sparsity"][-1] == 0.5
  assert r["accuracy"] > 2 * CHANCE


@pytest.mark.slow
def test_study_baselines_and_latency_small(tmp_path):
  """The seeded study end to end at CI size: every method's record, HESSO's architecture reused by
  scratch, the L1 mask obeying HESSO's multiple_of rule, exact compression, and the latency script
  reading the records back."""
  from experiments import latency, study

  out = tmp_path / "study"
  study.main(["--small", "--tasks", "mnist1d_mlp", "--sparsities", "0.5", "--seeds", "0",
              "--methods", "dense", "hesso", "scratch", "l1", "--out", str(out)])
  runs = {json.loads(p.read_text())["key"]["method"]: json.loads(p.read_text())
          for p in (out / "runs").glob("*.json")}
  assert set(runs) == {"dense", "hesso", "scratch", "l1"}
  summary = json.loads((out / "study.json").read_text())
  assert summary["provenance"]["packages"]["jax"] == jax.__version__
  assert runs["scratch"]["pruned"] == runs["hesso"]["pruned"]
  assert runs["hesso"]["compress_max_abs_diff"] < 1e-4
  assert runs["l1"]["compress_max_abs_diff"] < 1e-4
  t = study.Task("mnist1d_mlp", True, 0)
  ids = t.space_p.space_ids()

  def check_aligned(pruned, what):
    assert pruned.any(), what
    for s, sp in enumerate(t.space_p.prunable_spaces):
      removed = int(pruned[ids == s].sum())
      kept = sp.size - removed
      assert removed == 0 or (kept >= study.MULTIPLE_OF and kept % study.MULTIPLE_OF == 0), what

  for name in ("hesso", "l1"):
    check_aligned(np.asarray(runs[name]["pruned"], bool), name)
  for target in (23.0, 51.7, 77.7):  # FLOPs budgets off the aligned steps
    mask = study.l1_mask_at_flops(t, t.variables, target)
    check_aligned(mask, target)
    got = t.kept(t.variables, mask, zeroed=False)["flops_kept_pct"]
    assert abs(got - target) < 10.0, (target, got)
  latency.main(["--runs", str(out / "runs"), "--repeats", "2", "--inner", "1", "--batch", "32",
                "--out", str(out)])
  lat = json.loads((out / "latency.json").read_text())
  assert sorted(r["method"] for r in lat["rows"]) == ["hesso", "l1"]
  assert all(r["latency_ratio"] > 0 and r["dense_ms"] > 0 for r in lat["rows"])


def test_paired_differences_pair_by_seed_with_the_readme_signs(tmp_path):
  """experiments.paired pairs each method's run with HESSO's run of the same seed (a seed HESSO
  lacks is skipped), in points for accuracy and HESSO minus method (CRIC minus HESSO)."""
  from experiments import paired as P

  acc = {("hesso", 0): 0.90, ("hesso", 1): 0.80, ("l1", 0): 0.85, ("l1", 1): 0.82, ("l1", 2): 0.1,
         ("hesso_cric", 0): 0.95, ("hesso_cric", 1): 0.70}
  runs = tmp_path / "runs"
  runs.mkdir()
  for (m, seed), a in acc.items():
    key = {"task": "digits_cnn", "method": m, "sparsity": 0.5, "seed": seed}
    (runs / f"{m}_{seed}.json").write_text(json.dumps({"key": key, "accuracy": a}))
  key = {"task": "charlm", "method": "hesso", "sparsity": 0.3, "seed": 0}
  (runs / "lm_h.json").write_text(json.dumps({"key": key, "perplexity": 5.0}))
  key = {**key, "method": "scratch"}
  (runs / "lm_s.json").write_text(json.dumps({"key": key, "perplexity": 5.5}))
  rows = {(r["task"], r["method"]): r for r in P.paired_rows(P.load_runs(tmp_path))}
  l1 = rows[("digits_cnn", "l1")]
  assert l1["seeds"] == [0, 1]  # seed 2 has no HESSO run
  np.testing.assert_allclose(l1["per_seed"], [5.0, -2.0], atol=1e-9)
  np.testing.assert_allclose([l1["mean"], l1["std"]], [1.5, np.std([5.0, -2.0], ddof=1)])
  assert l1["first_better_in"] == 1
  cric = rows[("digits_cnn", "hesso_cric")]
  np.testing.assert_allclose(cric["per_seed"], [5.0, -10.0], atol=1e-9)  # CRIC minus HESSO
  lm = rows[("charlm", "scratch")]
  assert lm["per_seed"] == [-0.5] and lm["first_better_in"] == 1  # lower perplexity is better
