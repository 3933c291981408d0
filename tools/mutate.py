"""Mutation audit of the test suite: hand-chosen bugs in the core must each make a test fail.

Each mutation replaces one code snippet of the library with a plausible bug (a flipped sign, a
wrong normaliser, an off-by-one quota, a too-permissive or too-strict discovery rule, a wrong
keep-mask slice, ...), in a temporary copy of the repository, and runs only the test files that
should catch it. A mutation is *killed* when those tests fail; every mutation must be killed.

Mutations are located by a code snippet searched across all of ``hesso_jax/**/*.py`` (not a fixed
file path, so modules can move); a snippet that is not found, or found more than once, is an error
naming the mutation, so it can be updated when the code changes.

Usage (from the repository root)::

    python tools/mutate.py                  # all mutations, kill table as text and JSON
    python tools/mutate.py --list           # names and where each snippet is found
    python tools/mutate.py -k saliency      # only mutations whose name contains 'saliency'
    python tools/mutate.py --json out.json  # also write the table to a file

Exit status: 0 when every selected mutation is killed, 1 when one survives, 2 on a snippet error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "hesso_jax"
COPY = ("hesso_jax", "tests", "experiments", "pyproject.toml")

OPTIM = ["tests/test_selection_reference.py", "tests/test_hesso.py", "tests/test_saliency.py"]
CRIC = ["tests/test_cric.py"]
DISCOVERY = ["tests/test_discovery.py", "tests/test_compress_control_flow.py"]


@dataclasses.dataclass(frozen=True)
class Mutation:
  """Replace ``snippet`` (unique across the package) by ``replacement``; ``tests`` must fail.

  ``alternatives`` are further (snippet, replacement) pairs for other spellings of the same code
  (e.g. before and after a refactoring); exactly one of all the snippets must be found, once.
  """

  name: str
  what: str
  snippet: str
  replacement: str
  tests: tuple[str, ...]
  alternatives: tuple[tuple[str, str], ...] = ()

  def pairs(self) -> tuple[tuple[str, str], ...]:
    return ((self.snippet, self.replacement),) + self.alternatives


MUTATIONS = (
  # --- HESSO: saliency, selection, schedule ----------------------------------------------------
  Mutation(
    "saliency_sign",
    "HESSO scores with d = u instead of d = -u",
    "d = jax.tree_util.tree_map(lambda a: -a, uu)",
    "d = jax.tree_util.tree_map(lambda a: a, uu)",
    tuple(OPTIM),
    (
      (
        "as for the base optimizer alone.\n"
        "      uu, _ = base.update(updates, state.base_state, params, **extra_args)\n"
        "      return jax.tree_util.tree_map(jnp.negative,",
        "as for the base optimizer alone.\n"
        "      uu, _ = base.update(updates, state.base_state, params, **extra_args)\n"
        "      return jax.tree_util.tree_map(lambda a: a,",
      ),
    ),
  ),
  Mutation(
    "saliency_normalisation",
    "criteria divided by their max instead of their L2 norm",
    "return v / jnp.where(m > 0, norm, 1.0)",
    "return v / jnp.where(m > 0, m, 1.0)",
    tuple(OPTIM),
  ),
  Mutation(
    "avg_magnitude_size",
    "avg_magnitude not divided by the group size",
    "return jnp.sqrt(st.xx) / st.size",
    "return jnp.sqrt(st.xx)",
    tuple(OPTIM),
  ),
  Mutation(
    "cosine_offset",
    "cosine_similarity without its + 1 offset",
    "st.xd / (jnp.sqrt(st.xx) * jnp.sqrt(st.dd) + eps) + 1.0",
    "st.xd / (jnp.sqrt(st.xx) * jnp.sqrt(st.dd) + eps)",
    tuple(OPTIM),
  ),
  Mutation(
    "forgetting_factor",
    "forgetting factor (T-j-1)/T instead of (T-j-1)/(T-j)",
    "factor = (T - j - 1).astype(jnp.float32) / (T - j).astype(jnp.float32)",
    "factor = (T - j - 1).astype(jnp.float32) / T.astype(jnp.float32)",
    tuple(OPTIM),
    (
      (
        "return (length - j - 1).astype(jnp.float32) / (length - j).astype(jnp.float32)",
        "return (length - j - 1).astype(jnp.float32) / length.astype(jnp.float32)",
      ),
    ),
  ),
  Mutation(
    "zero_mask",
    "pruned groups no longer held at exactly zero",
    "new = jnp.where(z, -xx, new)",
    "new = jnp.where(z, new, new)",
    tuple(OPTIM),
  ),
  Mutation(
    "quota_per_period",
    "cumulative period target (R//K + 1)*(k+1) instead of (R//K)*(k+1)",
    "through_k = jnp.where(k < K - 1, (R // K) * (k + 1), R)",
    "through_k = jnp.where(k < K - 1, (R // K + 1) * (k + 1), R)",
    tuple(OPTIM),
    (("(R // sched.K) * (sched.k + 1), R)", "(R // sched.K + 1) * (sched.k + 1), R)"),),
  ),
  Mutation(
    "space_cap",
    "a space may lose all its groups (no multiple_of groups kept)",
    "cap_s = jnp.maximum(sizes - m - removed_s, 0)",
    "cap_s = jnp.maximum(sizes - removed_s, 0)",
    tuple(OPTIM),
  ),
  Mutation(
    "target_rounding",
    "R = floor(G * s) without the float32 tolerance (10 * 0.7 -> 6)",
    "jnp.floor(num_groups * s * (1.0 + 1e-6))",
    "jnp.floor(num_groups * s)",
    tuple(OPTIM),
  ),
  Mutation(
    "multiple_of_rounding",
    "kept count rounded down instead of up to a multiple",
    "kept2 = jnp.where(rem == 0, kept, jnp.minimum(have, kept - rem + m))",
    "kept2 = jnp.where(rem == 0, kept, jnp.maximum(kept - rem, 0))",
    tuple(OPTIM),
  ),
  # --- HESSO-CRIC --------------------------------------------------------------------------------
  Mutation(
    "cric_restore",
    "CRIC never restores the cache at cycle boundaries / termination",
    "restore_now = meas | boundary",
    "restore_now = meas",
    tuple(CRIC),
    (
      ("restore_when=ph.meas | ph.boundary)", "restore_when=ph.meas)"),
      ("restore_when=ph.meas | ph.boundary,", "restore_when=ph.meas,"),
    ),
  ),
  Mutation(
    "cric_loss_criterion",
    "CRIC's final ranking ignores the probes' loss criterion",
    "final = mean_score + loss_w * loss_criterion(",
    "final = mean_score + 0.0 * loss_criterion(",
    tuple(CRIC),
    (("final = mean_score + loss_weight * unit * cost", "final = mean_score + 0.0 * unit * cost"),),
  ),
  # --- discovery rules ---------------------------------------------------------------------------
  Mutation(
    "literal_is_zero",
    "every literal is treated as zero (relu(x @ W + 1.0) prunable)",
    "return bool(np.all(np.asarray(val) == 0))",
    "return True",
    tuple(DISCOVERY),
  ),
  Mutation(
    "add_verdict",
    "add/sub/max/min zero where ANY operand is zero (like mul)",
    '"add", "sub", "max", "min", "add_any", "or", "xor")(Rule(_nary_atoms, _add_like_zeros))',
    '"add", "sub", "max", "min", "add_any", "or", "xor")(Rule(_nary_atoms, _mul_like_zeros))',
    tuple(DISCOVERY),
  ),
  Mutation(
    "max_verdict",
    "max alone treated like mul (max(h, 0.5) zero where h is)",
    'register("add", "sub", "max", "min", "add_any", "or", "xor")(Rule(_nary_atoms, '
    "_add_like_zeros))",
    'register("add", "sub", "min", "add_any", "or", "xor")(Rule(_nary_atoms, '
    '_add_like_zeros))\nregister("max")(Rule(_nary_atoms, _mul_like_zeros))',
    tuple(DISCOVERY),
  ),
  Mutation(
    "mul_verdict",
    "mul never keeps an operand's zeros (gated hidden units unprunable)",
    "    out |= set(z)\n  return [frozenset(out)]",
    "    out &= set(z)\n  return [frozenset(out)]",
    tuple(DISCOVERY),
  ),
  Mutation(
    "dot_general_verdict",
    "dot_general may contract channels that are not zero",
    "_contract_check(\n"
    "    ctx, eqn, zin[0], zin[1], ctx.atoms.leafset([la[i] for i in lc]), "
    '"dot_general", fold=True\n'
    "  )",
    "pass",
    tuple(DISCOVERY),
  ),
  Mutation(
    "conv_verdict",
    "conv may contract input channels that are not zero",
    '_contract_check(ctx, eqn, zin[0], zin[1], rin_leaves, "conv_general_dilated")',
    "pass",
    tuple(DISCOVERY),
  ),
  Mutation(
    "reshape_verdict",
    "reshape drops the zero-set (conv -> flatten -> dense unprunable)",
    'register("reshape")(Rule(_reshape_atoms, _keep_zeros))',
    'register("reshape")(Rule(_reshape_atoms, no_zeros))',
    tuple(DISCOVERY),
  ),
  Mutation(
    "concatenate_verdict",
    "concatenate drops the zero-set (DenseNet groups unprunable)",
    "    if ok:\n      out.add(leaf)",
    "    if ok:\n      pass",
    tuple(DISCOVERY),
  ),
  # --- surgery -----------------------------------------------------------------------------------
  Mutation(
    "prune_keep_slice",
    "prune keeps the first k channels instead of the kept ones",
    "jnp.take(jnp.asarray(x), jnp.asarray(np.flatnonzero(mask)), axis=a)",
    "jnp.take(jnp.asarray(x), jnp.asarray(np.arange(int(mask.sum()))), axis=a)",
    ("tests/test_prune.py",),
  ),
  Mutation(
    "compress_keep_slice",
    "compress keeps the first k channels instead of the kept ones",
    "x = jax.numpy.take(x, np.nonzero(m)[0], axis=ax)",
    "x = jax.numpy.take(x, np.arange(int(m.sum())), axis=ax)",
    ("tests/test_compress_control_flow.py", "tests/test_compress.py"),
  ),
)


class SnippetError(RuntimeError):
  """A mutation's snippet is missing from, or not unique in, the package."""


def locate(root: pathlib.Path, m: Mutation) -> tuple[pathlib.Path, str, str]:
  """(file relative to ``root``, snippet, replacement): the one snippet of ``m`` found, once."""
  sources = {p.relative_to(root): p.read_text() for p in sorted((root / PACKAGE).rglob("*.py"))}
  hits = [
    (rel, snip, rep, text.count(snip))
    for snip, rep in m.pairs()
    for rel, text in sources.items()
    if snip in text
  ]
  if not hits:
    listed = "\n".join(f"    {snip!r}" for snip, _ in m.pairs())
    raise SnippetError(
      f"mutation {m.name!r}: snippet not found in {PACKAGE}/**/*.py:\n{listed}\n"
      "  update the snippet in tools/mutate.py"
    )
  if len(hits) > 1 or hits[0][3] > 1:
    where = ", ".join(f"{rel} ({n}x {snip[:40]!r})" for rel, snip, _, n in hits)
    raise SnippetError(
      f"mutation {m.name!r}: snippet not unique: {where}\n  make it longer in tools/mutate.py"
    )
  return hits[0][:3]


def run_one(m: Mutation, *, timeout: float, python: str) -> dict:
  """Apply ``m`` to a temporary copy of the repository and run its tests there."""
  rel, snippet, replacement = locate(ROOT, m)
  with tempfile.TemporaryDirectory(prefix=f"mutate_{m.name}_") as tmp:
    tmp = pathlib.Path(tmp)
    for name in COPY:
      src = ROOT / name
      if src.is_dir():
        shutil.copytree(src, tmp / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
      elif src.exists():
        shutil.copy2(src, tmp / name)
    target = tmp / rel
    target.write_text(target.read_text().replace(snippet, replacement))
    env = dict(os.environ, PYTHONPATH=str(tmp), PYTHONDONTWRITEBYTECODE="1")
    cmd = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *m.tests]
    t0 = time.time()
    try:
      proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
      rc, out = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as e:
      rc, out = (
        None,
        (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""),
      )
  failed = [l.split(" ")[1] for l in out.splitlines() if l.startswith("FAILED ")]
  # killed = the tests ran and at least one failed (pytest rc 1); a collection or usage error
  # (rc 2..4) does not count: the mutation must break behaviour, not the import
  return dict(
    name=m.name,
    what=m.what,
    file=str(rel),
    tests=list(m.tests),
    rc=rc,
    killed=rc == 1,
    first_failure=failed[0] if failed else None,
    seconds=round(time.time() - t0, 1),
  )


def table(rows: list[dict]) -> str:
  w = max(len(r["name"]) for r in rows)
  lines = [f"{'mutation':<{w}}  {'verdict':<8} {'secs':>6}  first failing test", "-" * (w + 60)]
  for r in rows:
    verdict = "killed" if r["killed"] else ("TIMEOUT" if r["rc"] is None else "SURVIVED")
    lines.append(f"{r['name']:<{w}}  {verdict:<8} {r['seconds']:>6}  {r['first_failure'] or '-'}")
  n = sum(r["killed"] for r in rows)
  lines.append(f"{n}/{len(rows)} mutations killed")
  return "\n".join(lines)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("-k", default="", help="only mutations whose name contains this")
  ap.add_argument("--list", action="store_true", help="list mutations and their files, run none")
  ap.add_argument("--json", help="also write the results to this file")
  ap.add_argument("--timeout", type=float, default=900, help="seconds per mutation")
  ap.add_argument("--python", default=sys.executable)
  args = ap.parse_args(argv)
  selected = [m for m in MUTATIONS if args.k in m.name]
  try:
    files = {m.name: locate(ROOT, m)[0] for m in selected}
  except SnippetError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.list:
    for m in selected:
      print(f"{m.name:<24} {files[m.name]}  ({m.what}) -> {' '.join(m.tests)}")
    return 0
  rows = []
  for m in selected:
    rows.append(run_one(m, timeout=args.timeout, python=args.python))
    r = rows[-1]
    print(
      f"[{len(rows)}/{len(selected)}] {r['name']}: {'killed' if r['killed'] else 'SURVIVED'} "
      f"({r['seconds']} s)",
      flush=True,
    )
  print(table(rows))
  print(json.dumps(rows))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
  return 0 if all(r["killed"] for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
