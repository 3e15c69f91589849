"""Time of one evaluation of the training loop's hook: G-EMA samples, then SWD (and KID / FID).

    python benchmarks/bench_eval.py [--config configs/demo_anime.py] [--num_fake 1000]
        [--num_real 5000] [--repeats 3] [--inception_weights PATH]

The generator is the config's, freshly initialised (the time does not depend on its weights).
The real images are the transfer study's: ``--num_real`` held-out images of the config's domain
(``eval.heldout``), prepared and their statistics cached by a first, untimed evaluation,
which also compiles the sampler. Then, ``--repeats`` times: generating ``--num_fake`` samples
alone, and the whole evaluation as the loop runs it (``metrics.run_evaluators``: sampling, the
fakes' SWD descriptors, the comparison with the cached reals). Prints one JSON line with the
medians and the seconds per 1,000 samples.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402

from gantl_jax import config as config_lib  # noqa: E402
from gantl_jax import metrics  # noqa: E402
from gantl_jax.data import pipeline  # noqa: E402
from gantl_jax.training import parallel  # noqa: E402
from gantl_jax.training import state as state_lib  # noqa: E402


def load_config(path: str):
  spec = importlib.util.spec_from_file_location("bench_config", path if os.path.isabs(path) else os.path.join(REPO, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default="configs/demo_anime.py")
  p.add_argument("--num_fake", type=int, default=1000)
  p.add_argument("--num_real", type=int, default=5000)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--inception_weights", default="", help="also time KID and FID")
  args = p.parse_args()
  config = load_config(args.config)
  config.transfer.source = ""
  config.eval.update(metrics="swd,kid,fid" if args.inception_weights else "swd", every_kimg=1.0,
                     num_fake=args.num_fake, num_real=args.num_real, heldout=True,
                     inception_weights=args.inception_weights)
  config = config_lib.resolve(config, jax.device_count())
  nets = state_lib.build_networks(config)
  mesh = parallel.make_mesh()
  g_ema = parallel.create_state(nets, 0, "jit", mesh).g_ema.variables
  e = config.eval
  reals = metrics.prepare_reals(
      config, pipeline.prepare(config.data, resolution=config.model.resolution, verbose=False), verbose=False)
  evaluators = metrics.get_evaluators(e)

  def fakes(num):
    return parallel.sample_batches(nets, g_ema, mesh, num=num, batch_size=e.batch_size, seed=e.seed)

  t = time.perf_counter()
  values = metrics.run_evaluators(evaluators, fakes, reals, e)
  first = time.perf_counter() - t
  sample_s, eval_s = [], []
  for _ in range(args.repeats):
    t = time.perf_counter()
    for _ in fakes(e.num_fake):
      pass
    sample_s.append(time.perf_counter() - t)
    t = time.perf_counter()
    metrics.run_evaluators(evaluators, fakes, reals, e)
    eval_s.append(time.perf_counter() - t)
  per_1000 = 1000 / e.num_fake
  print(json.dumps(dict(
      bench="eval", config=args.config, resolution=config.model.resolution, metrics=list(evaluators),
      num_fake=e.num_fake, num_real=reals.num_examples, devices=jax.device_count(), cpus=os.cpu_count(),
      first_eval_s=round(first, 2), sample_s=round(statistics.median(sample_s), 2),
      eval_s=round(statistics.median(eval_s), 2), eval_s_per_1000=round(statistics.median(eval_s) * per_1000, 2),
      sample_s_per_1000=round(statistics.median(sample_s) * per_1000, 2),
      **{k: round(v, 3) for k, v in values.items()})), flush=True)


if __name__ == "__main__":
  main()
