"""One process of a two-process data-parallel job on this machine (run by tests/test_multihost.py).

    XLA_FLAGS=--xla_force_host_platform_device_count=2 \\
    python tests/multihost_worker.py --coordinator 127.0.0.1:PORT --num_processes 2 \\
        --process_id I --mode pmap --workdir DIR --out DIR/params_I.npz

Joins the job through ``parallel.maybe_initialize_distributed`` (gloo CPU collectives), trains
the test config of ``parallel_common`` for 2 steps on its own rows of fixed global batches, saves
an Orbax checkpoint (``checkpoint.save`` of ``parallel.to_global``), restores it into a fresh
state, takes a third step, and writes the parameters after the restore and after step 3.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

# parallel_common sits next to this file; the repository root holds configs/ and gantl_jax/.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from gantl_jax.training import checkpoint  # noqa: E402
from gantl_jax.training import parallel  # noqa: E402
import parallel_common as common  # noqa: E402


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--coordinator", required=True)
  ap.add_argument("--num_processes", type=int, required=True)
  ap.add_argument("--process_id", type=int, required=True)
  ap.add_argument("--mode", choices=("jit", "pmap"), required=True)
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--out", required=True)
  ap.add_argument("--late_s", type=float, default=0.0,
                  help="sleep between compiling and the first collective, as a slower process")
  args = ap.parse_args()

  parallel.maybe_initialize_distributed(ml_collections.ConfigDict(dict(
      coordinator_address=args.coordinator, num_processes=args.num_processes,
      process_id=args.process_id, distributed=False, cpu_collectives="")))
  assert jax.process_count() == args.num_processes, jax.process_count()
  assert jax.process_index() == args.process_id

  batches = common.global_batches()
  run = common.Run(args.mode, jax.devices(), jax.process_index(), jax.process_count())
  # Compile ahead, then meet (one process may compile, or read the compilation cache, much faster).
  run.step.lower(run.state, run.place(batches[0]), 0).compile()
  time.sleep(args.late_s)
  parallel.wait_for_all_processes("compiled")
  run.run(2, batches)
  saved = common.params_of(run.state, args.mode)

  # Every process takes part in the save (Orbax coordinates the writes of replicated arrays).
  manager = checkpoint.make_manager(os.path.join(args.workdir, "checkpoints"))
  checkpoint.save(manager, parallel.to_global(run.state, args.mode, run.mesh),
                  data_state={"step": 2}, meta={"test": "multihost"})
  manager.wait_until_finished()

  fresh = parallel.create_state(run.nets, seed=123, mode="jit", mesh=run.mesh)
  restored, data_state, _ = checkpoint.restore(manager, fresh)
  manager.close()
  assert data_state == {"step": 2}, data_state
  run.state = parallel.from_global(restored, args.mode)
  after_restore = common.params_of(run.state, args.mode)
  run.run(3, batches)

  out = {f"restored|{k}": v for k, v in after_restore.items()}
  out.update({f"saved|{k}": v for k, v in saved.items()})
  out.update({f"step3|{k}": v for k, v in run.snapshots[3].items()})
  out["devices"] = np.asarray([jax.device_count(), jax.local_device_count()])
  out["first_step_seconds"] = np.asarray(run.first_step_seconds)
  np.savez(args.out, **out)
  print(f"process {jax.process_index()}: done", flush=True)


if __name__ == "__main__":
  main()
