"""Training-step speed of the official PyTorch StyleGAN2-ADA at configs/bench32.py's or
configs/bench256.py's settings, on CPU or one CUDA GPU.

    /tmp/official/venv/bin/python benchmarks/official_bench.py --official_src /tmp/official/src \
        --steps 16 --repeats 3
    python3 benchmarks/official_bench.py --official_src .official/stylegan2-ada-pytorch \
        --config bench256 --device cuda --precision mixed

The yardstick for the ratio of this project's step to the official code's on the same machine.
Not part of the package or its tests: it needs torch and a copy of NVlabs/stylegan2-ada-pytorch,
neither of which the project depends on. It imports only the official public classes
(``training.networks.Generator`` / ``Discriminator``, ``training.loss.StyleGAN2Loss``) and drives
them the way the official ``training/training_loop.py`` does for one GPU, minus the data loader,
logging and snapshots:

- G and D as the official ``train.py`` builds them (G 'skip', D 'resnet', no labels), at bench32:
  32 px, batch 16, z_dim = w_dim = 512, 2 mapping layers (lr multiplier 0.01), channel_base 4096
  and channel_max 128 (128 channels at every resolution), minibatch-stddev group 4, no
  augmentation; or at bench256: 256 px, batch 32, channel_base 16384, channel_max 512, the rest
  alike;
- ``--precision``: ``fp32`` (the official ``--fp32=1``: ``num_fp16_res=0``, ``conv_clamp=None``,
  TF32 off), ``tf32`` (the same with ``--allow-tf32=1``: the arithmetic of XLA's default precision
  for float32 on NVIDIA GPUs) or ``mixed`` (the official default: fp16 in the 4 highest
  resolutions, ``conv_clamp=256``, TF32 off); on CUDA ``cudnn.benchmark`` is on, as the official
  default;
- ``StyleGAN2Loss`` with style mixing 0.9, R1 gamma 0.01 (bench32) or 0.4096 (bench256, the
  'auto' heuristic), path length weight 2 with batch shrink 2;
- the four phases of the lazy schedule per step, each with its own zero_grad, backward,
  nan_to_num of the gradients and optimizer step: Gmain, Greg every 4 steps, Dmain, Dreg every 16
  steps, with gain = the phase's interval; Adam(lr 0.0025, betas (0, 0.99), eps 1e-8), lr and
  betas scaled by interval / (interval + 1) for the lazily regularised networks, as the official;
- fresh latents for every phase each step, and the G-EMA update after each step (ema_kimg =
  batch * 10 / 32, ramp-up 0.05).

Reals are uniform noise in [-1, 1], as in ``gantl_jax.cli.bench``. It runs ``--warmup_steps``
scheduled steps first (default 16: one full period, so every phase has run and allocated), then
times ``--steps`` steps ``--repeats`` times; each timed run starts at a multiple of 16 steps, so
16 steps hold 1 R1 and 4 path-length phases, like ours; on CUDA it synchronises the device before
reading each clock. Prints one JSON line with the keys of ``gantl_jax.cli.bench`` where they apply,
which of the official CUDA kernels (``bias_act``, ``upfirdn2d``: built on first use with ninja
and nvcc, else the official code falls back to its reference implementations) were in use, and
whether its ``conv2d_gradfix`` op ran (only on the torch versions it names, 1.7-1.9).

Where ``requests`` (imported by ``dnnlib.util`` for downloads only) or ``distutils`` (gone from
Python 3.12; ``dnnlib.util`` takes ``strtobool`` from it) cannot be imported, a stand-in is
registered in ``sys.modules`` before the official code is imported; the record says so
(``import_stand_ins``). Nothing the timed step runs comes from them.

On CPU the official custom ops (``bias_act``, ``upfirdn2d``) run their reference
implementations and ``conv2d_gradfix`` falls back to ``torch.nn.functional.conv2d`` (so R1 and
path length also compute weight gradients): that is what a CPU user of the official code gets.

The throwaway environment it was run in (outside the repository):

    # the official code, via the search tool's fetch of github:NVlabs/stylegan2-ada-pytorch
    # (commit d72cc7d041b42ec8e806021a205ed9349f87c6a4), unpacked unchanged:
    mkdir -p /tmp/official/src
    git --git-dir=/work/.mirror/NVlabs+stylegan2-ada-pytorch/repo archive HEAD | tar -x -C /tmp/official/src
    python3 -m venv /tmp/official/venv
    /tmp/official/venv/bin/pip install /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl numpy
    /tmp/official/venv/bin/pip install requests   # dnnlib/util.py imports it

(the CPU wheel of torch 2.13.0 from the box's local wheel folder, numpy 2.4.6; the official code
ran on it unpatched). Results and their reading: docs/bench.md, "The official code on this box".
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import sys
import time


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--official_src", required=True, help="Root of an unpacked stylegan2-ada-pytorch.")
  p.add_argument("--config", choices=sorted(CONFIGS), default="bench32",
                 help="Settings of configs/bench32.py or configs/bench256.py.")
  p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                 help="auto: cuda where torch sees a GPU, else cpu.")
  p.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32",
                 help="fp32, tf32 or mixed (the official default: fp16 in the 4 highest "
                 "resolutions, conv_clamp 256).")
  p.add_argument("--steps", type=int, default=16, help="Timed steps per repeat (a multiple of 16 "
                 "keeps the regularisation mix exact).")
  p.add_argument("--repeats", type=int, default=3, help="Timing repeats; the median is reported.")
  p.add_argument("--warmup_steps", type=int, default=16, help="Untimed scheduled steps first.")
  p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default).")
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args(argv)


# configs/bench32.py over configs/base.py.
BENCH32 = dict(resolution=32, batch=16, z_dim=512, w_dim=512, mapping_layers=2, mapping_lr_mul=0.01,
               channel_base=4096, channel_max=128, mbstd_group_size=4, r1_gamma=0.01, r1_interval=16,
               pl_weight=2.0, pl_interval=4, pl_batch_shrink=2, pl_decay=0.01,
               style_mixing_prob=0.9, lr=0.0025, betas=(0.0, 0.99), eps=1e-8, ema_rampup=0.05)
# configs/bench256.py over configs/base.py (R1 gamma: 0.0002 * 256 ** 2 / 32).
BENCH256 = dict(BENCH32, resolution=256, batch=32, channel_base=16384, channel_max=512, r1_gamma=0.4096)
CONFIGS = dict(bench32=BENCH32, bench256=BENCH256)
# --precision: (num_fp16_res, conv_clamp, allow_tf32), as the official train.py sets them.
PRECISIONS = dict(fp32=(0, None, False), tf32=(0, None, True), mixed=(4, 256, False))


def register_import_stand_ins() -> list[str]:
  """Stand-ins for the modules ``dnnlib.util`` imports but the timed step never uses, where they
  are missing: ``requests`` (downloads) and ``distutils.util`` (``strtobool``; setuptools'
  vendored copy where there is one). Returns the names stood in for."""
  import importlib
  import types
  stood_in = []
  try:
    importlib.import_module("requests")
  except ImportError:
    sys.modules["requests"] = types.ModuleType("requests")
    stood_in.append("requests")
  try:
    importlib.import_module("distutils.util")
  except ImportError:
    try:
      util = importlib.import_module("setuptools._distutils.util")
    except ImportError:
      util = types.ModuleType("distutils.util")
      util.strtobool = lambda v: {"y": 1, "yes": 1, "t": 1, "true": 1, "on": 1, "1": 1, "n": 0, "no": 0,
                                  "f": 0, "false": 0, "off": 0, "0": 0}[v.lower()]
    package = types.ModuleType("distutils")
    package.util = util
    sys.modules.update({"distutils": package, "distutils.util": util})
    stood_in.append("distutils")
  return stood_in


class Trainer:
  """The official one-GPU training loop's per-step work on ``device``, at the settings ``s`` with
  ``num_fp16_res`` and ``conv_clamp``."""

  def __init__(self, torch, s: dict, seed: int, device=None, num_fp16_res: int = 0, conv_clamp=None):
    from torch_utils.ops import conv2d_gradfix, grid_sample_gradfix
    from training import loss as loss_lib
    from training import networks

    self.torch, self.s = torch, s
    torch.manual_seed(seed)
    conv2d_gradfix.enabled = True       # as training_loop.py sets them (a no-op on CPU)
    grid_sample_gradfix.enabled = True
    device = device or torch.device("cpu")
    self.device = device
    common = dict(c_dim=0, img_resolution=s["resolution"], img_channels=3)
    arch = dict(channel_base=s["channel_base"], channel_max=s["channel_max"], num_fp16_res=num_fp16_res,
                conv_clamp=conv_clamp)
    self.G = networks.Generator(
        z_dim=s["z_dim"], w_dim=s["w_dim"],
        mapping_kwargs=dict(num_layers=s["mapping_layers"], lr_multiplier=s["mapping_lr_mul"]),
        synthesis_kwargs=arch, **common).train().requires_grad_(False).to(device)
    self.D = networks.Discriminator(
        epilogue_kwargs=dict(mbstd_group_size=s["mbstd_group_size"]), **arch,
        **common).train().requires_grad_(False).to(device)
    self.G_ema = copy.deepcopy(self.G).eval()  # as training_loop.py makes it
    self.loss = loss_lib.StyleGAN2Loss(
        device=device, G_mapping=self.G.mapping, G_synthesis=self.G.synthesis, D=self.D,
        style_mixing_prob=s["style_mixing_prob"], r1_gamma=s["r1_gamma"],
        pl_batch_shrink=s["pl_batch_shrink"], pl_decay=s["pl_decay"], pl_weight=s["pl_weight"])
    # (name, module, optimizer, interval): main phases every step, reg phases lazily, sharing the
    # network's optimizer whose lr and betas are scaled by interval / (interval + 1).
    self.phases = []
    for name, module, interval in (("G", self.G, s["pl_interval"]), ("D", self.D, s["r1_interval"])):
      ratio = interval / (interval + 1)
      opt = torch.optim.Adam(module.parameters(), lr=s["lr"] * ratio,
                             betas=[b ** ratio for b in s["betas"]], eps=s["eps"])
      self.phases += [(name + "main", module, opt, 1), (name + "reg", module, opt, interval)]
    gen = torch.Generator().manual_seed(seed)
    self.real = (torch.rand([s["batch"], 3, s["resolution"], s["resolution"]], generator=gen) * 2 - 1).to(device)
    self.real_c = torch.zeros([s["batch"], 0], device=device)
    self.ema_kimg = s["batch"] * 10 / 32
    self.step_index = 0
    self.cur_nimg = 0

  def step(self):
    """One training step: every phase due at this step, then the G-EMA update."""
    torch, s, b = self.torch, self.s, self.s["batch"]
    all_z = torch.randn([len(self.phases) * b, s["z_dim"]], device=self.device).split(b)
    gen_c = torch.zeros([b, 0], device=self.device)
    for (name, module, opt, interval), gen_z in zip(self.phases, all_z):
      if self.step_index % interval != 0:
        continue
      opt.zero_grad(set_to_none=True)
      module.requires_grad_(True)
      self.loss.accumulate_gradients(phase=name, real_img=self.real, real_c=self.real_c,
                                     gen_z=gen_z, gen_c=gen_c, sync=True, gain=interval)
      module.requires_grad_(False)
      for param in module.parameters():
        if param.grad is not None:
          torch.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5, out=param.grad)
      opt.step()
    with torch.no_grad():
      ema_nimg = min(self.ema_kimg * 1000, self.cur_nimg * s["ema_rampup"])
      beta = 0.5 ** (b / max(ema_nimg, 1e-8))
      for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
        p_ema.copy_(p.lerp(p_ema, beta))
      for b_ema, b_src in zip(self.G_ema.buffers(), self.G.buffers()):
        b_ema.copy_(b_src)
    self.cur_nimg += b
    self.step_index += 1


def main(argv=None):
  args = parse_args(argv)
  load_at_start = os.getloadavg()[0]
  sys.path.insert(0, os.path.abspath(args.official_src))
  stand_ins = register_import_stand_ins()
  import torch
  if args.threads:
    torch.set_num_threads(args.threads)
  device_type = args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
  device = torch.device(device_type)
  num_fp16_res, conv_clamp, allow_tf32 = PRECISIONS[args.precision]
  # As training_loop.py sets them (torch's own default differs for cuDNN's TF32).
  torch.backends.cudnn.benchmark = True
  torch.backends.cuda.matmul.allow_tf32 = allow_tf32
  torch.backends.cudnn.allow_tf32 = allow_tf32
  s = CONFIGS[args.config]
  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
  trainer = Trainer(torch, s, args.seed, device, num_fp16_res, conv_clamp)
  for _ in range(args.warmup_steps):
    trainer.step()
  sync()
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    for _ in range(args.steps):
      trainer.step()
    sync()
    times.append(time.perf_counter() - t0)
  sec = statistics.median(times)
  images_per_s = args.steps * s["batch"] / sec
  from torch_utils.ops import bias_act, conv2d_gradfix, upfirdn2d
  on_cuda = device.type == "cuda"
  record = dict(
      config=f"{args.config} (official stylegan2-ada-pytorch)", resolution=s["resolution"],
      batch=s["batch"], steps=args.steps, repeats=args.repeats,
      warmup_steps=args.warmup_steps, images_per_s=round(images_per_s, 2),
      sec_per_kimg=round(1000 / images_per_s, 1), step_ms_median=round(1000 * sec / args.steps, 1),
      step_ms_all=[round(1000 * t / args.steps, 1) for t in times],
      precision=args.precision, num_fp16_res=num_fp16_res, conv_clamp=conv_clamp, allow_tf32=allow_tf32,
      device=torch.cuda.get_device_name(device) if on_cuda else "cpu",
      device_peak_mb=round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1) if on_cuda else None,
      cuda_kernels=dict(bias_act=bias_act._plugin is not None, upfirdn2d=upfirdn2d._plugin is not None)
      if on_cuda else None,
      # Its own conv2d gradient op (no weight gradients in R1 and path length) only on the torch
      # versions it names; otherwise torch.nn.functional.conv2d.
      conv2d_gradfix=conv2d_gradfix._should_use_custom_op(trainer.real),
      import_stand_ins=stand_ins,
      peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      torch=torch.__version__, threads=torch.get_num_threads(),
      cpu_capability=torch.backends.cpu.get_cpu_capability(),
      load_avg_1m_start=round(load_at_start, 2), load_avg_1m=round(os.getloadavg()[0], 2))
  print(json.dumps(record), flush=True)


if __name__ == "__main__":
  main()
