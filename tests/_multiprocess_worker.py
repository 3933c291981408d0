"""The README's pod recipe with several JAX processes on localhost, for tests/test_multiprocess.py.

Each phase is one or two fresh Python processes on CPU, started by :func:`results`:

* ``train`` — 2 processes x 4 devices (``jax.distributed`` over 127.0.0.1, gloo collectives), one
  global ``(2, 4)`` ``('data', 'model')`` mesh. Per kind (HESSO, HESSO-CRIC): abstract discovery,
  sharded init, the uninterrupted run (each process feeds only its rows of every batch through
  ``jax.make_array_from_process_local_data``); then a fresh run that ``hj.save_checkpoint``\\ s
  mid-pruning from both processes and takes one more step. Then both processes print ``READY``
  and wait; the driver SIGKILLs them (no cleanup, no ``jax.distributed.shutdown``).
* ``resume`` — 2 new processes x 4 devices restore the checkpoints into the same 2x4 layout and
  finish the runs.
* ``single`` — 1 process x 8 devices, the same ``(2, 4)`` mesh: the uninterrupted reference run,
  and the 2-process checkpoints restored into this one process and finished.

Process 0 of each phase writes ``<phase>_<kind>.npz`` (the final params, the whole optimizer state
and, for ``train``, the state saved in the checkpoint, all gathered to host); every process writes
``<phase>_p<i>.json`` (its view: device counts, the space fingerprint, layout checks). The tests
compare the files. Run by hand::

    python tests/_multiprocess_worker.py driver WORKDIR     # all three phases, prints a summary
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np

KINDS = ("hesso", "cric")
BATCH = 32  # global batch; every process of a 2-process run feeds 16 rows
READY = "READY_TO_BE_KILLED"
TIMEOUT_S = 600  # hard limit per phase (a loaded 2-core machine); every process is killed at it
LOCAL_DEVICES = {"train": 4, "resume": 4, "single": 8}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_T0 = time.monotonic()


def _log(msg: str) -> None:
  """A timestamped line in this process's log (the driver shows the logs when a phase fails)."""
  print(f"[{time.monotonic() - _T0:6.1f}s] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------
# one training process
# ----------------------------------------------------------------------------------------------


def _start_jax(phase: str, process_id: int, port: int):
  """Import JAX for ``phase``: simulated CPU devices; the distributed runtime for 2 processes."""
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + f" --xla_force_host_platform_device_count={LOCAL_DEVICES[phase]}")
  import jax

  if phase != "single":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
                               initialization_timeout=90, heartbeat_timeout_seconds=60,
                               shutdown_timeout_seconds=30)
  return jax


class _Run:
  """Model, data, search space, optimizer and jitted step of one kind, built like the README."""

  def __init__(self, kind: str):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    import hesso_jax as hj

    class CNN(nn.Module):
      @nn.compact
      def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), name="conv0")(x))
        x = nn.relu(nn.Conv(16, (3, 3), strides=(2, 2), name="conv1")(x))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(32, name="fc")(x))
        return nn.Dense(10, name="head")(x)

    self.kind, self.model = kind, CNN()
    x_spec = jax.ShapeDtypeStruct((BATCH, 8, 8, 1), jnp.float32)
    abs_vars = jax.eval_shape(self.model.init, jax.random.key(0), x_spec)
    self.space = hj.discover(self.model.apply, abs_vars, x_spec).subtree("params")  # abstract
    base = optax.sgd(0.1, momentum=0.9)
    if kind == "hesso":
      self.tx = hj.hesso(base, self.space, target_group_sparsity=0.5, warmup_steps=2,
                         pruning_steps=8, pruning_periods=2)
      self.steps, self.save_at = 12, 7  # periods at steps 2-5 and 6-9: some pruned + redundant
    else:
      kw = dict(start_cric_step=2, sampling_steps=3, max_cycle_period=2, hybrid_training_steps=3,
                trial_sparsities=(0.5,))
      self.tx = hj.hesso_cric(base, self.space, target_group_sparsity=0.5, **kw)
      sched = hj.optim.cric.cric_schedule(self.space, **kw)
      self.steps, self.save_at = sched["latest_done"] + 2, sched["cycles_start"] + 1  # mid-cycle

    self.mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    self.p_sh = hj.param_shardings(abs_vars["params"], self.mesh)
    self.abs_params = hj.abstract_like(abs_vars["params"], self.p_sh)
    self.s_sh = hj.opt_state_shardings(self.tx, self.abs_params)
    self.b_sh = NamedSharding(self.mesh, P("data"))
    model, tx = self.model, self.tx
    from _multidevice_worker import make_step  # this script's folder (tests/) is on sys.path

    self.step = make_step(model, tx, in_shardings=(self.p_sh, self.s_sh, self.b_sh, self.b_sh),
                          out_shardings=(self.p_sh, self.s_sh))
    self._init = jax.jit(lambda k: model.init(k, jnp.zeros(x_spec.shape))["params"],
                         out_shardings=self.p_sh)
    self._init_state = jax.jit(tx.init, out_shardings=self.s_sh)
    rows = sorted({(s[0].start or 0, s[0].stop or BATCH) for s in
                   self.b_sh.addressable_devices_indices_map((BATCH, 8, 8, 1)).values()})
    self.rows = slice(rows[0][0], rows[-1][1])  # this process's share of every batch
    if any(a[1] != b[0] for a, b in zip(rows[:-1], rows[1:])):
      raise RuntimeError(f"process {jax.process_index()} holds non-contiguous batch rows {rows}")

  def init(self):
    import jax

    params = self._init(jax.random.key(0))
    return params, self._init_state(params)

  def batch(self, t: int):
    """Batch ``t``: a pure function of the step; this process only materialises its own rows."""
    rng = np.random.default_rng(t)
    x = rng.normal(size=(BATCH, 8, 8, 1)).astype(np.float32)
    w = np.random.default_rng(12345).normal(size=(64, 10)).astype(np.float32)
    y = np.argmax(x.reshape(BATCH, -1) @ w, axis=1).astype(np.int32)
    import jax

    mk = jax.make_array_from_process_local_data
    return (mk(self.b_sh, x[self.rows], (BATCH, 8, 8, 1)), mk(self.b_sh, y[self.rows], (BATCH,)))

  def run(self, params, state, start: int, stop: int):
    for t in range(start, stop):
      params, state = self.step(params, state, *self.batch(t))
    return params, state


def _gather(tree) -> dict:
  """Every leaf as a host NumPy array of its global value, keyed by key path.

  One jitted copy to a replicated layout for the whole tree (one compile, not one per leaf), then
  every process reads its local replica.
  """
  import jax

  from hesso_jax.sharding import replicated

  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  if jax.process_count() > 1:
    mesh = jax.make_mesh((jax.device_count(),), ("all",))
    tree = jax.jit(lambda t: t, out_shardings=replicated(mesh))(tree)
  leaves = jax.tree_util.tree_leaves(tree)
  return {jax.tree_util.keystr(p): np.asarray(x) for (p, _), x in zip(flat, leaves, strict=True)}


def _dump(workdir: str, name: str, **trees) -> None:
  import jax

  arrays = {f"{k}{p}": v for k, tree in trees.items() for p, v in _gather(tree).items()}
  if jax.process_index() == 0:
    np.savez(os.path.join(workdir, name + ".npz"), **arrays)


def _layout_ok(tree, shardings) -> bool:
  import jax

  return all(x.sharding.is_equivalent_to(s, x.ndim) for x, s in zip(
      jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(shardings), strict=True))


def _view(r: _Run) -> dict:
  import jax

  from hesso_jax.checkpoint import space_fingerprint

  return {"fingerprint": space_fingerprint(r.space)["sha256"], "num_groups": r.space.num_groups,
          "rows": [r.rows.start, r.rows.stop], "steps": r.steps, "save_at": r.save_at,
          "local_devices": jax.local_device_count(), "devices": jax.device_count(),
          "processes": jax.process_count()}


def phase_train(workdir: str) -> dict:
  import jax

  import hesso_jax as hj

  view = {}
  for kind in KINDS:
    r = _Run(kind)
    params, state = r.init()
    _log(f"train {kind}: set up")
    v = _view(r)
    v["params_sharded_across_processes"] = sum(
        not x.is_fully_addressable for x in jax.tree_util.tree_leaves(params))
    pa, sa = r.run(params, state, 0, r.steps)  # uninterrupted
    _dump(workdir, f"train_{kind}", params=pa, state=sa)
    _log(f"train {kind}: uninterrupted run done")
    params, state = r.init()  # the run that is killed: saved mid-pruning
    pb, sb = r.run(params, state, 0, r.save_at)
    hj.save_checkpoint(os.path.join(workdir, "ckpt_" + kind), r.save_at, pb, sb, space=r.space)
    _dump(workdir, f"saved_{kind}", params=pb, state=sb)
    v["pruned_at_save"] = int(np.sum(np.asarray(hj.pruned_mask(sb))))
    v["redundant_at_save"] = int(np.sum(np.asarray(hj.redundant_mask(sb))))
    jax.block_until_ready(r.run(pb, sb, r.save_at, r.save_at + 1))  # training goes on ...
    _log(f"train {kind}: saved at step {r.save_at}")
    view[kind] = v
  return view


def _other_layouts(r: _Run) -> dict:
  """Param shardings of two more restore targets: a (4, 2) mesh and a single device."""
  import jax
  from jax.sharding import AxisType, SingleDeviceSharding

  import hesso_jax as hj

  mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
  one = SingleDeviceSharding(jax.devices()[-1])
  return {"mesh4x2": hj.param_shardings(r.abs_params, mesh),
          "onedevice": jax.tree_util.tree_map(lambda _: one, r.abs_params)}


def phase_restore(workdir: str, phase: str) -> dict:
  """``resume`` (2 processes) or ``single`` (1 process): reference run (single only), resume."""
  import hesso_jax as hj

  view = {}
  for kind in KINDS:
    r = _Run(kind)
    v = _view(r)
    _log(f"{phase} {kind}: set up")
    if phase == "single":
      params, state = r.init()
      pa, sa = r.run(params, state, 0, r.steps)
      _dump(workdir, f"single_{kind}", params=pa, state=sa)
      _log(f"single {kind}: reference run done")
    d = os.path.join(workdir, "ckpt_" + kind)
    v["latest_step"] = hj.latest_step(d)
    abs_s = hj.abstract_opt_state(r.tx, r.abs_params)
    pr, sr = hj.restore_checkpoint(d, v["latest_step"], r.abs_params, abs_s, space=r.space)
    v["restored_layout_ok"] = _layout_ok(pr, r.p_sh) and _layout_ok(sr, r.s_sh)
    _dump(workdir, f"restored_{phase}_{kind}", params=pr, state=sr)
    pr, sr = r.run(pr, sr, v["latest_step"], r.steps)
    _dump(workdir, f"resumed_{phase}_{kind}", params=pr, state=sr)
    _log(f"{phase} {kind}: restored and finished")
    if phase == "single":
      for name, p_sh in _other_layouts(r).items():  # any layout: another mesh, one device
        abs_p = hj.abstract_like(r.abs_params, p_sh)
        pr, sr = hj.restore_checkpoint(d, None, abs_p, hj.abstract_opt_state(r.tx, abs_p))
        _dump(workdir, f"restored_{name}_{kind}", params=pr, state=sr)
    view[kind] = v
  return view


def _watchdog(limit_s: float) -> None:
  """Exit hard when the driver is gone (orphaned) or after ``limit_s``: never a leftover process."""
  import threading

  parent = os.getppid()

  def watch():
    while time.monotonic() - _T0 < limit_s and os.getppid() == parent:
      time.sleep(0.5)
    print("watchdog: driver gone or time limit reached; exiting", flush=True)
    os._exit(3)

  threading.Thread(target=watch, daemon=True).start()


def worker_main(argv: list[str]) -> None:
  phase, workdir, pid, port = argv[0], argv[1], int(argv[2]), int(argv[3])
  _watchdog(TIMEOUT_S + 30)
  jax = _start_jax(phase, pid, port)
  _log(f"{phase}: jax started, {jax.process_count()} process(es), {jax.device_count()} devices")
  view = phase_train(workdir) if phase == "train" else phase_restore(workdir, phase)
  view["process_index"] = jax.process_index()
  with open(os.path.join(workdir, f"{phase}_p{pid}.json"), "w") as f:
    json.dump(view, f)
  if phase == "train":
    print(READY, flush=True)
    time.sleep(TIMEOUT_S)  # the driver SIGKILLs this process now
    raise SystemExit("train: not killed by the driver")
  print("DONE", flush=True)


# ----------------------------------------------------------------------------------------------
# driver: start the phases with hard timeouts, never leave a process behind
# ----------------------------------------------------------------------------------------------


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(phase: str, workdir: str, nproc: int) -> tuple[list, list]:
  port = _free_port()
  extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
  path = os.pathsep.join([ROOT] + extra)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", PYTHONPATH=path)
  env.pop("XLA_FLAGS", None)
  procs, logs = [], []
  for i in range(nproc):
    log = open(os.path.join(workdir, f"{phase}_p{i}.log"), "w+")  # noqa: SIM115 (closed below)
    procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), phase, workdir,
                                   str(i), str(port)], stdout=log, stderr=subprocess.STDOUT,
                                  env=env, cwd=ROOT))
    logs.append(log)
  return procs, logs


def _tail(log, n: int = 4000) -> str:
  log.flush()
  log.seek(0)
  return log.read()[-n:]


def run_phase(phase: str, workdir: str, nproc: int, *, kill_on: str | None = None,
              timeout: float = TIMEOUT_S) -> dict:
  """Run ``nproc`` processes of ``phase``; with ``kill_on``, SIGKILL all once each printed it.

  Returns ``{"seconds", "returncodes"}``; raises (after killing every process) on a failure or
  when ``timeout`` is reached.
  """
  t0 = time.monotonic()
  procs, logs = _launch(phase, workdir, nproc)
  try:
    while True:
      if kill_on is not None and all(kill_on in _tail(lg, 10**6) for lg in logs):
        for p in procs:
          p.send_signal(signal.SIGKILL)
        for p in procs:
          p.wait(timeout=30)
        break
      codes = [p.poll() for p in procs]
      if any(c not in (None, 0) for c in codes) or (kill_on and any(c is not None for c in codes)):
        raise RuntimeError(f"{phase}: a process failed (returncodes {codes})")
      if all(c == 0 for c in codes):
        break
      if time.monotonic() - t0 > timeout:
        raise RuntimeError(f"{phase}: timed out after {timeout:.0f}s")
      time.sleep(0.2)
  except BaseException as e:
    msg = "\n".join(f"--- {phase} process {i} ---\n{_tail(lg)}" for i, lg in enumerate(logs))
    raise RuntimeError(f"{e}\n{msg}") from e
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait(timeout=30)
    for lg in logs:
      lg.close()
  return {"seconds": time.monotonic() - t0, "returncodes": [p.returncode for p in procs]}


def results(workdir: str) -> dict:
  """All three phases in ``workdir``; returns timings, return codes and every process's view."""
  out = {"train": run_phase("train", workdir, 2, kill_on=READY),
         "resume": run_phase("resume", workdir, 2),
         "single": run_phase("single", workdir, 1)}
  for phase, n in (("train", 2), ("resume", 2), ("single", 1)):
    out[phase]["views"] = []
    for i in range(n):
      with open(os.path.join(workdir, f"{phase}_p{i}.json")) as f:
        out[phase]["views"].append(json.load(f))
  return out


def load(workdir: str, name: str) -> dict:
  with np.load(os.path.join(workdir, name + ".npz")) as z:
    return {k: z[k] for k in z.files}


if __name__ == "__main__":
  if sys.argv[1] == "driver":
    os.makedirs(sys.argv[2], exist_ok=True)
    print(json.dumps(results(sys.argv[2]), indent=1))
  else:
    sys.path.insert(0, ROOT)  # this checkout's hesso_jax, whatever is installed
    worker_main(sys.argv[1:])
