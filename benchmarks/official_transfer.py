"""Our few-shot transfer against the official stylegan2-ada-pytorch's, from the same source, on the
same target images, with the same hyper-parameters, scored by the same evaluators.

    P=/work/main/.venv/bin/python T=/tmp/off_tl/venv/bin/python S=/tmp/off_tl/src
    $P benchmarks/official_transfer.py --check --out OUT --torch_python $T --official_src $S
    $P benchmarks/official_transfer.py --side official --seed 0 --kimg 4 --aug ada --out OUT \
        --torch_python $T --official_src $S
    $P benchmarks/official_transfer.py --side ours --seed 0 --kimg 4 --aug ada --out OUT
    $P benchmarks/official_transfer.py --report --out OUT

The target (``--target``) is 'anime' (the 10 synthetic images of configs/demo_anime.py, the
default) or a folder with ``shots/`` (trained on) and ``held_out/`` (scored against), e.g.
``--target targets/twemoji_faces --config configs/twemoji_faces.py``; give the same --target,
--config and --source to every step of one OUT. ``--config`` is our side's config (its training
settings must be this script's constants; the data and target keys are set here), ``--source``
both sides' starting point (default: the config's transfer.source).

``--check`` writes the source (``--source``) as official state dicts
(the importer's ada-pytorch mapping run backwards: :func:`to_official`), loads them into the
official ``Generator`` and ``Discriminator`` and prints the max abs difference of their images (on
the same z, constant noise) and logits from ours. ``--side official`` trains the official networks
with the official ``training/training_loop.py`` (run on CPU: the few CUDA-only lines are replaced
at import, :data:`CPU_PATCHES`), reads its snapshots back with ``gantl_jax.cli.import_stylegan2``
and scores them; ``--side ours`` trains with ``launch.py --config <--config>`` and scores its
checkpoints. Each side writes into OUT/<side>_<aug>_seed<N>/ and appends one record per
scored snapshot (and one with the run's ADA p) to OUT/results.jsonl, so sides and seeds can be run
one at a time, in any order. ``--report`` draws OUT's curves (SWD, diversity, ADA p against kimg)
and the samples of the last snapshot of each run at the same seeds into docs/ (names with
``--tag``: official_transfer_<tag>_curves.png).

Scores (:func:`score`): SWD x 10^3 of ``--num_eval`` G-EMA samples against as many held-out
'anime' images (``synthetic.render`` from ``data.checks.HELD_OUT_START``) or every image of a
folder target's held_out/ (up to ``--num_eval``), and the diagnostics of
``launch.py --mode compare`` (``compare._diagnostics``: intra-cluster diversity and the ratio to
held-out reals, copies, correspondence with the source on the same latents; pyramid distance).

The throwaway environment for the official side (outside the repository):

    mkdir -p /tmp/off_tl/src
    git --git-dir=/work/.mirror/NVlabs+stylegan2-ada-pytorch/repo archive HEAD | tar -x -C /tmp/off_tl/src
    python3 -m venv /tmp/off_tl/venv
    /tmp/off_tl/venv/bin/pip install /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl \
        numpy pillow scipy click requests psutil

(stylegan2-ada-pytorch commit d72cc7d041b42ec8e806021a205ed9349f87c6a4, fetched with the search
tool's ``fetch``). The script's own imports are the standard library; gantl_jax is imported by the
parts run with this project's Python, torch by the parts run with ``--torch_python``.
Settings and results: docs/official_transfer.md.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(REPO, "pretrained", "photo32")
CONFIG = os.path.join(REPO, "configs", "demo_anime.py")
ANIME = "anime"  # the synthetic target: demo_anime's first 10 images, held-out ones from synthetic.render
RESULTS = "results.jsonl"
NUM_SHOTS = 10
# The demo preset's values (configs/demo_anime.py over configs/demo_photo.py and configs/base.py;
# configs/twemoji_faces.py over noto_source.py has the same ones) that the official run is given;
# docs/official_transfer.md maps each to the official name.
BATCH = 32
MBSTD_GROUP = 4
R1_GAMMA = 0.0002 * 32 ** 2 / BATCH   # base.py's 'auto' (-1), as the official 'auto' config
R1_INTERVAL, PL_INTERVAL, PL_WEIGHT = 16, 4, 2.0
EMA_KIMG = BATCH * 10 / 32            # base.py's 'auto' (-1)
EMA_RAMPUP = 0.05                     # ours keeps it with a transfer source; official train.py drops it
STYLE_MIXING = 0.9
LR, BETAS, EPS = 0.0025, (0.0, 0.99), 1e-8
ADA_TARGET, ADA_INTERVAL, ADA_KIMG = 0.6, 4, 100.0
FREEZE_D_BLOCKS = 2                   # demo_anime: freeze.preset='freezed', d_blocks=2


# ---------------------------------------------------------------------------
# Our variables -> official state-dict names (the importer's ada-pytorch rules, backwards).


def to_official(variables: dict) -> dict:
  """Official state dict ({name: float32 array}) of our G or D variables (nested
  ``{'params', ['buffers']}`` of arrays): names are our paths with '.' for '/' and no collection;
  dense weights (in, out) -> [out, in], convolutions HWIO -> [out, in, kh, kw], the const
  [4, 4, C] -> [C, 4, 4]. The official modules' FIR ``resample_filter`` buffers are not among our
  variables (the model keeps them as constants): they keep their constructed values."""
  import numpy as np
  out = {}

  def walk(tree, path):
    for key, value in tree.items():
      if hasattr(value, "items"):
        walk(value, path + (key,))
        continue
      x = np.asarray(value, np.float32)
      name = ".".join(path + (key,))
      if x.ndim == 4:
        x = x.transpose(3, 2, 0, 1)
      elif x.ndim == 3:
        x = x.transpose(2, 0, 1)
      elif x.ndim == 2 and key == "weight":
        x = x.T
      # np.array, not ascontiguousarray: the latter turns the 0-d noise strengths into shape (1,).
      out[name] = np.array(x, np.float32, order="C")

  for collection in ("params", "buffers"):
    walk(variables.get(collection, {}), ())
  return out


def official_kwargs(hparams: dict, freeze_layers: int = 0) -> tuple[dict, dict]:
  """(G, D) constructor kwargs of ``training.networks`` for our model hyper-parameters, fp32 (no
  fp16 layers) like ours; ``freeze_layers``: the official FreezeD count."""
  common = dict(c_dim=0, img_resolution=hparams["resolution"], img_channels=hparams["img_channels"])
  arch = dict(channel_base=hparams["channel_base"], channel_max=hparams["channel_max"], num_fp16_res=0,
              conv_clamp=hparams.get("conv_clamp"))
  g = dict(z_dim=hparams["z_dim"], w_dim=hparams["w_dim"],
           mapping_kwargs=dict(num_layers=hparams["mapping_layers"], lr_multiplier=hparams["mapping_lr_mul"]),
           synthesis_kwargs=arch, **common)
  d = dict(block_kwargs=dict(freeze_layers=freeze_layers), mapping_kwargs={},
           epilogue_kwargs=dict(mbstd_group_size=hparams["mbstd_group_size"],
                                mbstd_num_channels=hparams["mbstd_num_channels"]), **arch, **common)
  return g, d


def freezed_layers(d_blocks: int) -> int:
  """The official ``--freezed`` count that freezes the same D blocks as our freeze preset
  'freezed' with ``d_blocks``: the official counts layers from the image side, 4 in the first
  resnet block (fromrgb, conv0, conv1, skip) and 3 in each next (conv0, conv1, skip)."""
  return 4 + 3 * (d_blocks - 1)


# ---------------------------------------------------------------------------
# This project's side (gantl_jax): export, scoring, our training run.


def export_source(source: str, out: str, num_check: int = 4) -> dict:
  """Writes the source's G-EMA and D as official state dicts (OUT/export/source.npz, names
  prefixed 'G.' and 'D.'), the constructor kwargs (kwargs.json) and our outputs on fixed inputs
  (reference.npz: z, our images with constant noise, our D logits on them) for the check."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from gantl_jax.cli import import_stylegan2
  from gantl_jax.training import checkpoint, runs
  from gantl_jax.models import stylegan2

  net = runs.load_network(source, flag="--source")
  hp = dict(net.hparams)
  # The group size is a training setting, not stored with the weights' hyper-parameters.
  hp.setdefault("mbstd_group_size", net.config.model.mbstd_group_size if net.config else MBSTD_GROUP)
  directory = os.path.dirname(net.where)
  d_net = stylegan2.discriminator_from_config(import_stylegan2.model_config(hp, conv_impl="auto"))
  template = jax.eval_shape(lambda: stylegan2.init_discriminator(d_net, jax.random.key(0)))
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  d_vars = checkpoint.read_network(directory, net.step, "d", jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), template))
  g_sd, d_sd = to_official(jax.device_get(net.variables)), to_official(jax.device_get(d_vars))
  z = np.random.default_rng(0).standard_normal((num_check, hp["z_dim"])).astype(np.float32)
  images = np.asarray(net.generator.apply(net.variables, jnp.asarray(z), noise_mode="const"))
  # A batch of one mbstd group, where every grouping of the minibatch-stddev agrees.
  logits = np.asarray(d_net.apply(d_vars, jnp.asarray(images[:hp["mbstd_group_size"]]), mbstd_num_shards=1))
  folder = os.path.join(out, "export")
  os.makedirs(folder, exist_ok=True)
  np.savez(os.path.join(folder, "source.npz"), **{f"G.{k}": v for k, v in g_sd.items()},
           **{f"D.{k}": v for k, v in d_sd.items()})
  np.savez(os.path.join(folder, "reference.npz"), z=z, images_nchw=images.transpose(0, 3, 1, 2),
           logits=logits)
  g_kwargs, d_kwargs = official_kwargs(hp)
  with open(os.path.join(folder, "kwargs.json"), "w") as f:
    json.dump(dict(hparams=hp, G=g_kwargs, D=d_kwargs, source=os.path.abspath(source), step=net.step), f, indent=1)
  return hp


def target_folders(target: str) -> tuple[str, str]:
  """(shots, held_out) subfolders of a folder ``target``; SystemExit naming --target when one is
  missing."""
  folders = tuple(os.path.join(os.path.abspath(target), name) for name in ("shots", "held_out"))
  for folder in folders:
    if not os.path.isdir(folder):
      raise SystemExit(f"error: --target {target}: no folder {folder}; give {ANIME!r} or a folder "
                       f"with shots/ (the training images) and held_out/ (the images to score against)")
  return folders


def target_name(target: str) -> str:
  """What the target is called in the report: 'anime' or the target folder's name."""
  return target if target == ANIME else os.path.basename(os.path.normpath(target))


def write_target_images(out: str, target: str = ANIME, config=None, seed: int = 0) -> str:
  """The official run's dataset folder, OUT/target/, of PNGs. The 'anime' target: the 10 training
  images of ``demo_anime`` with data.num_images=10 (``synthetic.render`` of 'anime' 0..9, data
  seed 0). A folder target: its shots as our data pipeline prepares them for ``config``
  (``pipeline.prepare_folder``: cropped, resized, alpha composited on white), so that both sides
  train on the same pixels."""
  import numpy as np
  from gantl_jax import images as image_io
  folder = os.path.join(out, "target")
  os.makedirs(folder, exist_ok=True)
  if target == ANIME:
    from gantl_jax.data import synthetic
    pixels = synthetic.render("anime", np.arange(NUM_SHOTS), resolution=32, seed=seed)
  else:
    from gantl_jax.data import pipeline
    prepared = pipeline.prepare_folder(target_folders(target)[0], data_config=config.data,
                                       resolution=config.model.resolution, key="--target",
                                       channels=config.model.img_channels, verbose=False)
    pixels = [prepared.data_source[i] for i in range(prepared.num_examples)]
  for i, image in enumerate(pixels):
    path = os.path.join(folder, f"{i:02d}.png")
    if not os.path.exists(path):  # another side's run may be reading them
      image_io.save_png(image, path)
  return folder


def config_overrides(target: str) -> dict:
  """Our side's overrides of its config file for ``target`` (flattened keys): the anime target
  takes 10 of demo_anime's images; a folder target trains on all of its shots (n_shot 0, as
  ``prepare_folder`` reads them for the official side) and names its held-out folder."""
  if target == ANIME:
    return {"data.num_images": NUM_SHOTS}
  target_folders(target)
  sys.path.insert(0, REPO)
  from benchmarks.transfer_study import target_overrides
  return target_overrides(target, 0)


def demo_config(config_path: str = CONFIG, target: str = ANIME):
  """Our side's config (``config_path``'s ``get_config()`` with :func:`config_overrides`): the
  target and scoring settings."""
  sys.path.insert(0, REPO)
  from benchmarks.transfer_study import load_config
  c = load_config(config_path)
  for key, value in config_overrides(target).items():
    section, name = key.split(".")
    c[section][name] = value
  return c


def held_out_reals(config, target: str, num_eval: int):
  """uint8 held-out images to score against: ``num_eval`` anime images (``synthetic.render`` from
  ``data.checks.HELD_OUT_START``), or every image of a folder target's held_out/ up to
  ``num_eval``, prepared by our data pipeline."""
  import numpy as np
  from gantl_jax.cli import compare
  from gantl_jax.data import checks, synthetic
  if target == ANIME:
    return synthetic.render("anime", np.arange(checks.HELD_OUT_START, checks.HELD_OUT_START + num_eval),
                            resolution=32, seed=0)
  reals, _ = compare.target_images(config, num_eval, held_out=True, real_folder=target_folders(target)[1])
  return reals


def score(network_path: str, num_eval: int, source_samples=None, config=None, target: str = ANIME,
          reals=None) -> dict:
  """SWD x 10^3 against the held-out images of ``target`` (:func:`held_out_reals`, or ``reals``)
  and compare.py's diagnostics (first 1000 samples) of the G-EMA at ``network_path``; samples are
  seeds 0..num_eval-1; ``config``: our side's (default :func:`demo_config` of ``target``)."""
  from gantl_jax.cli import compare, generate
  from gantl_jax.training import runs
  config = config if config is not None else demo_config(target=target)
  seeds = list(range(num_eval))
  samples = generate.seed_images(runs.load_network(network_path), seeds)
  if source_samples is None:
    source_samples = generate.seed_images(runs.load_network(config.transfer.source), seeds)
  if reals is None:
    reals = held_out_reals(config, target, num_eval)
  n = min(num_eval, compare.NUM_DIAGNOSTIC)
  out = dict(swd=compare._swd(samples, reals))  # pylint: disable=protected-access
  out.update(compare._diagnostics(config, source_samples[:n], samples[:n], reals[:n]))  # pylint: disable=protected-access
  return {k.removeprefix("transfer_"): float(v) for k, v in out.items()}


def _append(out: str, record: dict) -> None:
  from gantl_jax.training import jsonl
  jsonl.append(os.path.join(out, RESULTS), record)


def _score_all(args, run_name: str, snapshots: list[tuple[float, str]], meta: dict) -> None:
  from gantl_jax.cli import generate
  from gantl_jax.training import runs
  out, num_eval = args.out, args.num_eval
  source = runs.load_network(args.source, flag="--source")
  source_samples = generate.seed_images(source, list(range(num_eval)))
  config = demo_config(args.config, args.target)
  reals = held_out_reals(config, args.target, num_eval)
  for kimg, path in [(0.0, args.source)] + snapshots:
    t0 = time.time()
    values = score(path, num_eval, source_samples, config=config, target=args.target, reals=reals)
    record = dict(run=run_name, kimg=round(kimg, 3), path=path, num_eval=num_eval, **meta, **values,
                  score_seconds=round(time.time() - t0, 1))
    print(json.dumps(record), flush=True)
    _append(out, record)


def _train_once(cmd: list[str], run_dir: str) -> float:
  """Runs the training command unless ``run_dir`` holds its finished mark (then only the scoring
  runs again); returns the training seconds."""
  mark = os.path.join(run_dir, "trained.json")
  if os.path.exists(mark):
    with open(mark) as f:
      return json.load(f)["train_seconds"]
  t0 = time.time()
  print(" ".join(cmd), flush=True)
  subprocess.run(cmd, check=True)
  seconds = round(time.time() - t0, 1)
  with open(mark, "w") as f:
    json.dump(dict(command=cmd, train_seconds=seconds), f)
  return seconds


def run_ours(args) -> None:
  """Trains --config (demo_anime: 10 images; a folder --target: its shots) from --source for
  --kimg and scores each kept checkpoint."""
  from gantl_jax.training import checkpoint, jsonl
  name = f"ours_{args.aug}_seed{args.seed}"
  workdir = os.path.join(args.out, name)
  steps_per_snap = max(1, round(args.snap_kimg * 1000 / BATCH))
  overrides = [f"--config.{k}={v}" for k, v in config_overrides(args.target).items()]
  cmd = [sys.executable, os.path.join(REPO, "launch.py"), "--config", args.config,
         "--workdir", workdir, *overrides, f"--config.transfer.source={args.source}", f"--config.seed={args.seed}",
         f"--config.train.total_kimg={args.kimg}", f"--config.checkpoint.every_steps={steps_per_snap}",
         "--config.checkpoint.max_to_keep=1000", "--config.train.tensorboard=False",
         f"--config.train.log_every={max(1, steps_per_snap // 4)}", "--config.train.sample_every=0",
         f"--config.augment.kind={'ada' if args.aug == 'ada' else 'none'}",
         # Scored here on the same samples as the official side's, not by the loop's evaluators.
         "--config.eval.every_kimg=0", "--config.eval.metrics="]
  train_seconds = _train_once(cmd, workdir)
  ckpt = os.path.join(workdir, "checkpoints")
  snapshots = [(s * BATCH / 1000, os.path.join(ckpt, str(s))) for s in checkpoint.committed_steps(ckpt)]
  # ADA's p and its r_t = E[sign(D(real))] (None without ADA) at each logged step.
  p_curve = [dict(kimg=r["step"] * BATCH / 1000, p=r.get("aug_p", 0.0), rt=r.get("ada_rt"))
             for r in jsonl.read(os.path.join(workdir, "metrics.jsonl"))]
  meta = dict(side="ours", aug=args.aug, seed=args.seed, total_kimg=args.kimg, target=target_name(args.target))
  _append(args.out, dict(run=name, kind="run", **meta, train_seconds=round(train_seconds, 1), p_curve=p_curve))
  _score_all(args, name, snapshots, meta)


def run_official(args) -> None:
  """Exports the source, trains it with the official training loop in --torch_python, imports
  every snapshot with the importer and scores it."""
  name = f"official_{args.aug}_seed{args.seed}"
  run_dir = os.path.join(args.out, name)
  _export_once(args.source, args.out)
  data = write_target_images(args.out, args.target, demo_config(args.config, args.target))
  cmd = [args.torch_python, os.path.abspath(__file__), "--torch_stage", "train", "--out", args.out,
         "--official_src", args.official_src, "--seed", str(args.seed), "--kimg", str(args.kimg),
         "--aug", args.aug, "--snap_kimg", str(args.snap_kimg), "--data", data, "--run_dir", run_dir]
  train_seconds = _train_once(cmd, run_dir)
  with open(os.path.join(run_dir, "stats.jsonl")) as f:
    ticks = [json.loads(line) for line in f]
  snapshots = []
  for pkl in sorted(glob.glob(os.path.join(run_dir, "network-snapshot-*.pkl"))):
    kimg = int(os.path.basename(pkl)[len("network-snapshot-"):-len(".pkl")]) / 1000
    target = os.path.join(run_dir, "imported", os.path.basename(pkl)[:-4])
    if not os.path.isdir(target):
      subprocess.run([sys.executable, "-m", "gantl_jax.cli.import_stylegan2", pkl, target], check=True,
                     cwd=REPO, stdout=subprocess.DEVNULL)
    snapshots.append((kimg, target))
  # p and the mean sign of D's real logits over each tick (ADA's r_t, before its interval means).
  p_curve = [dict(kimg=t["Progress/kimg"]["mean"], p=t["Progress/augment"]["mean"],
                  rt=t.get("Loss/signs/real", {}).get("mean")) for t in ticks]
  meta = dict(side="official", aug=args.aug, seed=args.seed, total_kimg=args.kimg, target=target_name(args.target))
  _append(args.out, dict(run=name, kind="run", **meta, train_seconds=round(train_seconds, 1), p_curve=p_curve))
  _score_all(args, name, snapshots, meta)


def _export_once(source: str, out: str) -> None:
  """Exports ``source`` into OUT/export/ unless it holds that source's export already."""
  try:
    with open(os.path.join(out, "export", "kwargs.json")) as f:
      if json.load(f)["source"] == os.path.abspath(source) and os.path.exists(
          os.path.join(out, "export", "source.npz")):
        return
  except FileNotFoundError:
    pass
  export_source(source, out)


def check(args) -> None:
  """Exports the source and runs the official networks on it (in --torch_python)."""
  export_source(args.source, args.out)
  subprocess.run([args.torch_python, os.path.abspath(__file__), "--torch_stage", "verify", "--out", args.out,
                  "--official_src", args.official_src], check=True)


# ---------------------------------------------------------------------------
# The official side (torch, run with --torch_python).

# The CUDA-only lines of training/training_loop.py and what runs instead on CPU: nothing else of
# the loop changes (the official custom ops fall back to their reference implementations there).
CPU_PATCHES = (
    ("device = torch.device('cuda', rank)", "device = torch.device('cpu')"),
    ("phase.start_event = torch.cuda.Event(enable_timing=True)", "phase.start_event = None"),
    ("phase.end_event = torch.cuda.Event(enable_timing=True)", "phase.end_event = None"),
    (".pin_memory()", ""),
    ("torch.cuda.max_memory_allocated(device)", "0"),
    ("torch.cuda.reset_peak_memory_stats()", "pass"),
    # Snapshots named by images shown, not whole kimg, so that ticks under 1 kimg keep theirs.
    ("f'network-snapshot-{cur_nimg//1000:06d}.pkl'", "f'network-snapshot-{cur_nimg:09d}.pkl'"),
)


def _official_imports(official_src: str):
  import warnings
  # Said once per augmented batch: on torch > 1.9 the augmentation uses torch's own grid_sample.
  warnings.filterwarnings("ignore", message="grid_sample_gradfix not supported")
  sys.path.insert(0, os.path.abspath(official_src))
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from official_bench import register_import_stand_ins  # pylint: disable=import-outside-toplevel
  register_import_stand_ins()


def _cpu_training_loop(official_src: str):
  """training/training_loop.py with :data:`CPU_PATCHES` applied, as module
  ``training.training_loop``; each patched line must be found."""
  import importlib.util
  importlib.import_module("training")  # the package, for the module's own imports
  path = os.path.join(official_src, "training", "training_loop.py")
  with open(path, encoding="utf-8-sig") as f:  # the file starts with a byte-order mark
    text = f.read()
  for old, new in CPU_PATCHES:
    if old not in text:
      raise SystemExit(f"error: {path} has no {old!r}: not the commit this script was written for")
    text = text.replace(old, new)
  spec = importlib.util.spec_from_loader("training.training_loop", loader=None, origin=path)
  module = importlib.util.module_from_spec(spec)
  sys.modules["training.training_loop"] = module
  exec(compile(text, path, "exec"), module.__dict__)  # pylint: disable=exec-used
  return module


def _load_official(torch, folder: str, freeze_layers: int = 0):
  """Official G and D (fresh modules of the exported kwargs) holding the exported source."""
  import numpy as np
  from training import networks
  with open(os.path.join(folder, "kwargs.json")) as f:
    kw = json.load(f)
  g_kwargs, d_kwargs = official_kwargs(kw["hparams"], freeze_layers)
  G = networks.Generator(**g_kwargs).eval().requires_grad_(False)
  D = networks.Discriminator(**d_kwargs).eval().requires_grad_(False)
  with np.load(os.path.join(folder, "source.npz")) as f:
    arrays = {k: torch.from_numpy(f[k]) for k in f.files}
  for prefix, module in (("G.", G), ("D.", D)):
    sd = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    missing, unexpected = module.load_state_dict(sd, strict=False)
    left = [k for k in missing if not k.endswith("resample_filter")]
    if left or unexpected:
      raise SystemExit(f"error: official {prefix[0]} state dict: missing {left}, unexpected {unexpected}")
  return G, D, kw


def torch_verify(args) -> None:
  """Prints the max abs differences of the official G images and D logits from ours."""
  _official_imports(args.official_src)
  import numpy as np
  import torch
  folder = os.path.join(args.out, "export")
  G, D, kw = _load_official(torch, folder)
  with np.load(os.path.join(folder, "reference.npz")) as f:
    ref = {k: f[k] for k in f.files}
  z = torch.from_numpy(ref["z"])
  c = torch.zeros([len(z), 0])
  with torch.no_grad():
    images = G(z, c, truncation_psi=1, noise_mode="const").numpy()
    group = kw["hparams"]["mbstd_group_size"]
    logits = D(torch.from_numpy(ref["images_nchw"][:group]), c[:group]).numpy()
  record = dict(check="official G/D on our source", source=kw["source"], step=kw["step"],
                g_images_max_abs_diff=float(np.abs(images - ref["images_nchw"]).max()),
                g_images_range=[float(ref["images_nchw"].min()), float(ref["images_nchw"].max())],
                d_logits_max_abs_diff=float(np.abs(logits.reshape(-1) - ref["logits"].reshape(-1)).max()),
                d_logits=[round(float(x), 4) for x in ref["logits"].reshape(-1)], torch=torch.__version__)
  print(json.dumps(record), flush=True)
  with open(os.path.join(args.out, "mapping_check.json"), "w") as f:
    json.dump(record, f, indent=1)


def torch_train(args) -> None:
  """The official training loop from the exported source on the target folder (one CPU process)."""
  _official_imports(args.official_src)
  import pickle
  import copy
  import torch
  import dnnlib
  training_loop = _cpu_training_loop(args.official_src)
  # torch_utils.misc.InfiniteSampler passes the dataset to Sampler.__init__, which took it (and
  # ignored it) up to torch 2.1; later versions take no argument.
  torch.utils.data.Sampler.__init__ = lambda self, *unused_args, **unused_kwargs: None
  folder = os.path.join(args.out, "export")
  freeze = freezed_layers(FREEZE_D_BLOCKS)
  G, D, kw = _load_official(torch, folder, freeze)
  os.makedirs(args.run_dir, exist_ok=True)
  resume = os.path.join(args.run_dir, "source.pkl")
  with open(resume, "wb") as f:  # G starts from the source's G-EMA, as our transfer.g_from='g_ema'
    pickle.dump(dict(G=G, D=D, G_ema=copy.deepcopy(G), augment_pipe=None, training_set_kwargs=None), f)
  g_kwargs, d_kwargs = official_kwargs(kw["hparams"], freeze)
  for key in ("c_dim", "img_resolution", "img_channels"):  # the loop adds them from the dataset
    g_kwargs.pop(key), d_kwargs.pop(key)
  opt = dict(class_name="torch.optim.Adam", lr=LR, betas=list(BETAS), eps=EPS)
  c = dnnlib.EasyDict(
      run_dir=args.run_dir,
      training_set_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path=args.data,
                               use_labels=False, max_size=None, xflip=True,
                               resolution=kw["hparams"]["resolution"]),
      data_loader_kwargs=dict(pin_memory=False, num_workers=0),
      G_kwargs=dict(class_name="training.networks.Generator", **g_kwargs),
      D_kwargs=dict(class_name="training.networks.Discriminator", **d_kwargs),
      G_opt_kwargs=dict(opt), D_opt_kwargs=dict(opt),
      loss_kwargs=dict(class_name="training.loss.StyleGAN2Loss", r1_gamma=R1_GAMMA,
                       style_mixing_prob=STYLE_MIXING, pl_weight=PL_WEIGHT),
      random_seed=args.seed, batch_size=BATCH, batch_gpu=BATCH, ema_kimg=EMA_KIMG, ema_rampup=EMA_RAMPUP,
      G_reg_interval=PL_INTERVAL, D_reg_interval=R1_INTERVAL, total_kimg=args.kimg,
      kimg_per_tick=args.snap_kimg, image_snapshot_ticks=None, network_snapshot_ticks=1,
      resume_pkl=resume, metrics=[])
  if args.aug == "ada":
    c.update(augment_kwargs=dict(class_name="training.augment.AugmentPipe", xflip=1, rotate90=1, xint=1,
                                 scale=1, rotate=1, aniso=1, xfrac=1, brightness=1, contrast=1, lumaflip=1,
                                 hue=1, saturation=1),
             augment_p=0.0, ada_target=ADA_TARGET, ada_interval=ADA_INTERVAL, ada_kimg=ADA_KIMG)
  with open(os.path.join(args.run_dir, "training_options.json"), "w") as f:
    json.dump(c, f, indent=1)
  torch.set_num_threads(args.threads or torch.get_num_threads())
  training_loop.training_loop(**c)


# ---------------------------------------------------------------------------
# The report.


def read_results(out: str) -> list[dict]:
  path = os.path.join(out, RESULTS)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def latest(records: list[dict]) -> list[dict]:
  """The records of each run's newest run record and after (a rerun replaces a run's scores)."""
  last = {}
  for i, r in enumerate(records):
    if r.get("kind") == "run":
      last[r["run"]] = i
  return [r for i, r in enumerate(records) if r["run"] in last and i >= last[r["run"]]]


COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


def plot_curves(records: list[dict], path: str, target: str = ANIME) -> None:
  """Panels of SWD, diversity (intra-cluster) and ADA p against kimg, one line per run."""
  from PIL import Image, ImageDraw, ImageFont
  from transfer_study_report import _nice_ticks  # pylint: disable=import-outside-toplevel
  runs_ = sorted({r["run"] for r in records})
  panels = (("swd", f"SWD x10^3 vs held-out {target_name(target)}"), ("intra_cluster", "diversity (intra-cluster)"),
            ("p", "ADA p"))
  w, h, ml, mb, mt, legend = 360, 260, 60, 44, 30, 230
  image = Image.new("RGB", (ml + len(panels) * (w + ml) + legend, mt + h + mb), "white")
  draw, font = ImageDraw.Draw(image), ImageFont.load_default(size=12)
  series = {}
  for run in runs_:
    scored = sorted((r for r in records if r["run"] == run and r.get("kind") != "run"), key=lambda r: r["kimg"])
    info = next(r for r in records if r["run"] == run and r.get("kind") == "run")
    series[run] = dict(swd=[(r["kimg"], r["swd"]) for r in scored],
                       intra_cluster=[(r["kimg"], r["intra_cluster"]) for r in scored],
                       p=[(q["kimg"], q["p"]) for q in info["p_curve"]])
  x_hi = max([x for s in series.values() for v in s.values() for x, _ in v] + [1e-3])
  for p, (key, title) in enumerate(panels):
    left, top = ml + p * (w + ml), mt
    ys = [y for s in series.values() for _, y in s[key]] or [0.0, 1.0]
    lo, hi = min(0.0, min(ys)), max(max(ys) * 1.05, 0.01 if key == "p" else 1e-9)
    to_px = lambda x, y: (left + x / x_hi * w, top + h - (y - lo) / (hi - lo) * h)  # noqa: E731
    for t in _nice_ticks(lo, hi, 5):
      draw.line([to_px(0, t), to_px(x_hi, t)], fill="#e6e6e6")
      draw.text((left - 6, to_px(0, t)[1]), f"{t:g}", fill="black", font=font, anchor="rm")
    for t in _nice_ticks(0, x_hi):
      draw.text((to_px(t, lo)[0], top + h + 6), f"{t:g}", fill="black", font=font, anchor="mt")
    draw.rectangle([left, top, left + w, top + h], outline="black")
    draw.text((left + w / 2, top - 8), title, fill="black", font=font, anchor="md")
    draw.text((left + w / 2, top + h + 24), "kimg", fill="black", font=font, anchor="mt")
    for i, run in enumerate(runs_):
      points = [to_px(x, y) for x, y in series[run][key]]
      colour = COLOURS[i % len(COLOURS)]
      if len(points) > 1:
        draw.line(points, fill=colour, width=2)
      for x, y in points:
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
  for i, run in enumerate(runs_):
    y = mt + 10 + 18 * i
    x0 = image.width - legend + 10
    draw.line([(x0, y), (x0 + 22, y)], fill=COLOURS[i % len(COLOURS)], width=3)
    draw.text((x0 + 28, y), run, fill="black", font=font, anchor="lm")
  image.save(path)


def plot_samples(records: list[dict], path: str, seeds: int = 12, source: str = SOURCE, config=None) -> None:
  """One row per run: its last scored G-EMA at seeds 0..seeds-1, under the row of ``source`` and
  above the training images of ``config`` (default :func:`demo_config`); labelled and upscaled 4x."""
  import numpy as np
  from gantl_jax.cli import compare, generate
  from gantl_jax.training import runs
  from gantl_jax import images as image_io
  runs_ = sorted({r["run"] for r in records})
  seed_list = list(range(seeds))
  rows, labels = [generate.seed_images(runs.load_network(source), seed_list)], ["source"]
  for run in runs_:
    last = max((r for r in records if r["run"] == run and r.get("kind") != "run"), key=lambda r: r["kimg"])
    rows.append(generate.seed_images(runs.load_network(last["path"]), seed_list))
    labels.append(f"{run} {last['kimg']:g}k")
  shots, _ = compare.target_images(config if config is not None else demo_config(), NUM_SHOTS, held_out=False)
  shots = np.concatenate([shots, np.full((seeds - len(shots),) + shots.shape[1:], 255, np.uint8)])
  rows.append(shots)
  labels.append("10 target shots")
  grid = image_io.make_grid(np.concatenate(rows), seeds)
  image_io.save_png(compare._labelled(grid, tuple(labels), 32, 4), path)  # pylint: disable=protected-access


SUMMARY_KEYS = ("swd", "intra_cluster", "diversity_ratio", "copies", "correspondence", "final_p")


def summarise(records: list[dict]) -> dict:
  """{"<side> <aug>": {key: (median, min, max, count)}} over each run's last scored snapshot (and its
  final ADA p), for the keys of :data:`SUMMARY_KEYS`."""
  import statistics
  values = {}
  for run in sorted({r["run"] for r in records}):
    info = next(r for r in records if r["run"] == run and r.get("kind") == "run")
    last = max((r for r in records if r["run"] == run and r.get("kind") != "run"), key=lambda r: r["kimg"])
    row = dict(last, final_p=info["p_curve"][-1]["p"] if info["p_curve"] else 0.0)
    for key in SUMMARY_KEYS:
      if key in row:
        values.setdefault(f"{info['side']} {info['aug']}", {}).setdefault(key, []).append(row[key])
  return {side: {k: (statistics.median(v), min(v), max(v), len(v)) for k, v in keys.items()}
          for side, keys in values.items()}


def report(args) -> None:
  """Curves and samples of OUT's results into --docs, and a table on stdout."""
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  records = latest(read_results(args.out))
  if not records:
    raise SystemExit(f"error: {os.path.join(args.out, RESULTS)} holds no results: run a side first")
  os.makedirs(args.docs, exist_ok=True)
  stem = os.path.join(args.docs, "official_transfer" + (f"_{args.tag}" if args.tag else ""))
  plot_curves(records, stem + "_curves.png", args.target)
  plot_samples(records, stem + "_samples.png", source=args.source, config=demo_config(args.config, args.target))
  keys = ("swd", "intra_cluster", "diversity_ratio", "copies", "correspondence")
  print("| run | kimg | " + " | ".join(keys) + " | final p | train s |")
  print("|" + "---|" * (len(keys) + 4))
  for run in sorted({r["run"] for r in records}):
    info = next(r for r in records if r["run"] == run and r.get("kind") == "run")
    for r in sorted((r for r in records if r["run"] == run and r.get("kind") != "run"), key=lambda r: r["kimg"]):
      final_p = info["p_curve"][-1]["p"] if info["p_curve"] else 0.0
      print(f"| {run} | {r['kimg']:.2f} | " + " | ".join(f"{r.get(k, float('nan')):.4f}" for k in keys)
            + f" | {final_p:.3f} | {info['train_seconds']:.0f} |")
  print("\n| side | runs | " + " | ".join(SUMMARY_KEYS) + " |  (median (min-max) at each run's last snapshot)")
  print("|" + "---|" * (len(SUMMARY_KEYS) + 2))
  for side, stats in sorted(summarise(records).items()):
    count = max(n for _, _, _, n in stats.values())
    print(f"| {side} | {count} | " + " | ".join(
        f"{stats[k][0]:.4g} ({stats[k][1]:.4g}-{stats[k][2]:.4g})" if k in stats else "" for k in SUMMARY_KEYS) + " |")


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="Folder of the runs, the export and results.jsonl.")
  p.add_argument("--check", action="store_true", help="Only the mapping check (our source in the official G, D).")
  p.add_argument("--side", choices=("ours", "official"), help="Train and score one side.")
  p.add_argument("--report", action="store_true", help="Draw OUT's curves and samples into --docs.")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--kimg", type=float, default=1.0, help="Training length in thousands of real images.")
  p.add_argument("--snap_kimg", type=float, default=0.8,
                 help="kimg between scored snapshots (0.8 = 25 steps of 32).")
  p.add_argument("--aug", choices=("ada", "noaug"), default="ada")
  p.add_argument("--num_eval", type=int, default=1000, help="Samples and held-out images per score.")
  p.add_argument("--target", default=ANIME,
                 help=f"{ANIME!r} (synthetic) or a folder with shots/ (trained on) and held_out/ (scored against).")
  p.add_argument("--config", default=CONFIG, help="Our side's config file (default configs/demo_anime.py).")
  p.add_argument("--source", default="",
                 help="Both sides' starting checkpoint (default: --config's transfer.source).")
  p.add_argument("--tag", default="", help="--report: docs/official_transfer_<tag>_{curves,samples}.png.")
  p.add_argument("--torch_python", default="/tmp/off_tl/venv/bin/python")
  p.add_argument("--official_src", default="/tmp/off_tl/src")
  p.add_argument("--docs", default=os.path.join(REPO, "docs"))
  p.add_argument("--threads", type=int, default=0, help="torch threads of the official run (0: torch's default).")
  p.add_argument("--torch_stage", choices=("verify", "train"), help=argparse.SUPPRESS)
  p.add_argument("--data", help=argparse.SUPPRESS)
  p.add_argument("--run_dir", help=argparse.SUPPRESS)
  return p.parse_args(argv)


def resolve_setup(args) -> None:
  """Makes --config and --source absolute paths (--source defaults to the config's
  transfer.source) and checks --target."""
  args.config = os.path.abspath(args.config)
  if args.target != ANIME:
    target_folders(args.target)
    args.target = os.path.abspath(args.target)
  args.source = os.path.abspath(args.source or demo_config(args.config, args.target).transfer.source)


def main(argv=None) -> None:
  args = parse_args(argv)
  args.out = os.path.abspath(args.out)
  if not args.torch_stage:  # the stages run in --torch_python get their inputs from OUT
    resolve_setup(args)
  if args.torch_stage == "verify":
    torch_verify(args)
  elif args.torch_stage == "train":
    torch_train(args)
  elif args.check:
    check(args)
  elif args.side == "ours":
    run_ours(args)
  elif args.side == "official":
    run_official(args)
  elif args.report:
    report(args)
  else:
    raise SystemExit("error: give --check, --side ours|official or --report")


if __name__ == "__main__":
  main()
