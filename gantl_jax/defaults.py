"""Defaults for every knob of a run, in one place: config files start from them (through
``configs/base.py``) and ``gantl_jax.config.upgrade`` fills the keys an older run lacks from them.

StyleGAN2-ADA's 'auto' configuration at the resolution set in ``model.resolution``. Negative
values of r1_gamma / ema_kimg mean 'auto' (the StyleGAN2-ADA heuristics), resolved at start.
"""
import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  """A fresh ConfigDict of every key with its default (documented beside it)."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict(dict(
      resolution=256,
      img_channels=3,
      z_dim=512,
      w_dim=512,
      mapping_layers=2,          # 8 in StyleGAN2 config F
      mapping_lr_mul=0.01,
      channel_base=16384,        # channels at res r: min(channel_base // r, channel_max)
      channel_max=512,
      # Clamp each conv layer's output (after bias and activation; not D's linear skips) to
      # +-conv_clamp, in every block of G and D whatever its dtype, as stylegan2-ada-pytorch
      # (which sets 256 with its fp16 mixed precision). None: no clamping.
      conv_clamp=config_dict.placeholder(float),
      mbstd_group_size=4,        # must divide the per-device batch
      mbstd_num_channels=1,
      # Which samples share an mbstd group: 'contiguous' (runs of consecutive samples; the
      # statistic does not depend on the device count) or 'strided' (as stylegan2-ada-pytorch,
      # within each device's batch; what imported official weights expect).
      mbstd_grouping="contiguous",
      conv_impl="auto",          # 'auto' | 'xla' | 'custom' (fast CPU gradients) | 'direct'
                                 # (XLA's strided / transposed convs for the resampling layers)
      compute_dtype="float32",   # 'float32' | 'bfloat16': the convolutions' dtype (parameters,
                                 # optimizer, losses and demodulation stay float32)
      # With compute_dtype='bfloat16': the N highest resolutions' blocks of G and D compute in
      # bf16, the others in float32 (the official num_fp16_res, which uses 4); 0 = every block.
      num_low_precision_res=0,
  ))

  c.train = ml_collections.ConfigDict(dict(
      batch_size=32,             # global batch, over all devices and hosts
      total_kimg=25000.0,        # run length in thousands of real images shown to D
      r1_gamma=-1.0,             # < 0: 0.0002 * resolution**2 / batch_size
      r1_interval=16,
      pl_weight=2.0,             # 0 disables path-length regularisation
      pl_interval=4,
      # The lazy phases' programs: 'separate' compiles one program per combination of lazy phases
      # the schedule runs (no dead branches); 'merged' one program for every step, each lazy
      # phase behind a lax.cond (fewer compiles); 'auto': merged on CPU, separate elsewhere.
      variant_programs="auto",
      pl_batch_shrink=2,
      pl_decay=0.01,
      style_mixing_prob=0.9,
      w_avg_beta=0.995,
      ema_kimg=-1.0,             # < 0: batch_size * 10 / 32
      ema_rampup=0.05,           # 0: no ramp-up
      log_every=100,             # steps between metric fetches (the only host syncs)
      sample_every=1000,         # steps between sample grids (0: only at the end)
      sample_grid=(8, 4),        # columns x rows of the fixed-latent sample grid
      sample_psi=1.0,            # truncation of the sample grid
      tensorboard=True,          # write TensorBoard event files (scalars, eval metrics, sample grids) to the workdir
      # JAX's persistent compilation cache: 'auto' = $JAX_COMPILATION_CACHE_DIR if set, else
      # ~/.cache/gantl_jax/jax_cache; a path; '' = off (every launch compiles its programs again).
      compile_cache_dir="auto",
  ))

  c.optim = ml_collections.ConfigDict(dict(
      g=dict(lr=0.0025, beta1=0.0, beta2=0.99, eps=1e-8),
      d=dict(lr=0.0025, beta1=0.0, beta2=0.99, eps=1e-8),
  ))

  # Freezing and lr multipliers: comma-separated regexes (re.search) over parameter paths such as
  # 'synthesis/b64/conv0/weight' (G) or 'b32/conv1/weight' (D). A preset resolves to regexes that
  # are merged with the explicit ones (gantl_jax/training/optim.py: preset_patterns). Frozen parameters get
  # a zero update and no optimizer state; XLA drops their weight-gradient computation.
  c.freeze = ml_collections.ConfigDict(dict(
      preset="none",             # none | freezed | freezeg | mapping_only | torgb_only | affine | noise (comma-joinable)
      d_blocks=2,                # freezed: D blocks frozen from the image side (b{R}, b{R/2}, ...)
      g_blocks=2,                # freezeg: lowest-resolution synthesis blocks frozen (b4, b8, ...)
      g_mapping=True,            # freezeg: also freeze the mapping network
      g="",
      d="",
      g_lr_mults="",             # 'regex=mult,regex=mult'
      d_lr_mults="",
  ))

  # Augmentation of every image D sees (reals and fakes, in G main, D main and R1), in
  # gantl_jax/fewshot/augment.py. 'ada': StyleGAN2-ADA's pipeline with its probability p adapted so that
  # E[sign(D(real))] stays near ada_target; 'fixed': the same pipeline at the constant p;
  # 'diffaug': DiffAugment's policies, applied to every image. p is logged as aug_p, the
  # controller's r_t as ada_rt (metrics.jsonl).
  c.augment = ml_collections.ConfigDict(dict(
      kind="none",               # 'none' | 'ada' | 'fixed' | 'diffaug'
      p=0.0,                     # 'fixed': the probability of each op; 'ada': its initial value (in [0, 1])
      pipeline="bgc",            # ada / fixed: 'bgc' (blit + geom + color) | 'bg' | 'blit' | 'geom' | 'color'
      ada_target=0.6,            # ada: the E[sign(D(real))] the controller aims at
      ada_interval=4,            # ada: steps between adjustments of p (sign means accumulated over them)
      ada_kimg=-1.0,             # ada: kimg for p to move by 1; -1: 500 from scratch, 100 with transfer.source
      diffaug_policy="color,translation,cutout",  # diffaug: comma-separated 'color', 'translation', 'cutout'
  ))

  # Few-shot regularisers and adapters (gantl_jax/fewshot/cdc.py, gantl_jax/fewshot/adapters.py); each is off by
  # default and compares with the transfer source, which the step reads from its `frozen` input.
  c.fewshot = ml_collections.ConfigDict(dict(
      cdc_weight=0.0,            # CDC (Ojha et al. 2021): weight of the cross-domain distance-consistency KL (paper: 1000); 0 = off
      cdc_batch=4,               # CDC: shared latents whose pairwise feature similarities are compared
      cdc_anchor_interval=0,     # CDC: every N-th step uses anchor latents and image-level D, the others patch-level D; 0 = image-level D always
      cdc_anchors=10,            # CDC: anchor latents of the anchor steps (official: n_train = 10, the number of shots)
      cdc_anchor_std=0.1,        # CDC: std of the gaussian offset of a latent from its anchor (official subspace_std)
      cdc_patch_resolution=0,    # CDC: side of D's patch-logit map, a D block output's (0 = resolution / 8, at least 4: 32 at 256 px, as official)
      ewc_weight=0.0,            # EWC (Li et al. 2020, gantl_jax/fewshot/ewc.py): weight of sum F * (theta - theta_source)^2 in G's loss; 0 = off
      adapter="none",            # 'none' | 'kernel_modulation' (source conv weights frozen, rank-1 modulation trained)
      adapter_fisher_quantile=0.0,  # kernel_modulation: adapt only layers above this Fisher-importance quantile, fine-tune the rest (0 = all)
      fisher_samples=1000,       # EWC / adapter_fisher_quantile: source-G samples G's Fisher is averaged over (computed once, stored in DIR/g_fisher.npz)
      fisher_batch=8,            # samples whose per-sample gradients are computed at once (memory: this many copies of G's params)
  ))

  # The images: built by gantl_jax.data.prepare into a tfds array_record dataset once, then read
  # by its pipeline. The resolution is model.resolution. Checked by gantl_jax.data.check_config.
  c.data = ml_collections.ConfigDict(dict(
      source="synthetic",        # 'synthetic' (built-in demo domain), 'folder' (your images) or 'idx' (Fashion-MNIST)
      domain="photo",            # synthetic domain: 'photo' (source-like) or 'anime' (target-like)
      num_images=2000,           # synthetic: number of images rendered into the dataset
      folder="",                 # folder: path to the images (recursive; png/jpg/jpeg/webp); required if source=='folder'
      # idx: MNIST-layout IDX files (train-/t10k-images-idx3-ubyte, -labels-idx1-ubyte, gzipped or
      # not): grayscale, 28 px resized with Lanczos to model.resolution; train and test are one pool.
      idx_dir="/usr/share/datasets/fashion-mnist",  # idx: their directory (Debian's dataset-fashion-mnist)
      classes="",                # idx: comma-separated class numbers, e.g. '0,1,2,3,4,5,6,7' (a source) or '9' (a target); '' = all
      n_shot=0,                  # folder, idx: keep only n images chosen by `seed` (0 = all); e.g. 10, 100, 1000
      seed=0,                    # data identity: synthetic images and the n-shot subset (not the shuffle order)
      mirror_dataset=False,      # double the dataset with x-flipped copies (at read time, no extra disk)
      xflip=True,                # random x-flip per example in the pipeline, by shuffle seed + stream position
      data_dir="~/tensorflow_datasets/gantl_jax",  # where tfds prepares array_record files
      prefetch=2,                # batches decoded ahead in a background thread (0 = decode on demand)
      num_workers=4,             # threads decoding PNGs within one batch
  ))

  c.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=1000,          # 0: only at the end (and on SIGTERM / Ctrl-C)
      max_to_keep=3,             # newest checkpoints kept (>= 1; None keeps every one)
      keep_best="",              # a metric of eval.metrics: also keep the best checkpoint by it in DIR/best
  ))

  # Evaluation during training: every eval.every_kimg, the metrics named in eval.metrics run on
  # eval.num_fake G-EMA samples (generated sharded over all devices) against up to eval.num_real
  # real images: held-out ones (eval.real_folder, eval.heldout) or else the training images; values
  # and which images they were measured against go to DIR/eval.jsonl.
  c.eval = ml_collections.ConfigDict(dict(
      every_kimg=0.0,            # 0: no evaluation during training
      metrics="",                # comma-separated: swd, kid, fid, diversity, copies, correspondence, class_share
      num_fake=1000,
      num_real=1000,
      batch_size=64,             # samples generated per call (rounded to a multiple of the devices)
      seed=123,                  # latents of the evaluation samples: z_i from (seed, i)
      # KID / FID need the FID Inception weights: pytorch-fid's pt_inception-2015-12-05-6726825d.pth
      # or NVIDIA's inception-2015-12-05.pt (read without torch, no code run). '' skips them.
      inception_weights="",
      # The real images compared with: False = the first num_real training images; True = num_real
      # held-out images, none of them in the training set, prepared once: synthetic data, images
      # 1,000,000 on of data.seed (gantl_jax/data/checks.py); idx data, images of data.classes outside
      # the n-shot set (needs data.n_shot > 0). A folder has none: use real_folder.
      heldout=False,
      # A folder of held-out images of the target domain (any source of data), prepared once like a
      # training folder; every image of it is a reference. Takes the place of eval.heldout.
      real_folder="",
      # diversity, copies, correspondence: samples they compare (pairwise, so kept at ~1000: CDC's
      # protocol), and an LPIPS-VGG weight file (read without torch, see docs/metrics.md) for their
      # perceptual distance beside the weight-free pyramid distance; '' skips LPIPS.
      num_diagnostic=1000,
      lpips_weights="",
      # class_share: a folder of labelled real images named <label>_<anything>.png (python -m
      # gantl_jax.data.idx writes them), and the label the samples should get from their nearest ones.
      label_folder="",
      target_label="",
  ))

  # Transfer source: an Orbax checkpoint of this project (a run's workdir, its checkpoints/ dir
  # or one step dir) or of the weight importer (python -m gantl_jax.cli.import_stylegan2).
  # Parameters are matched by path and shape and overlaid on the fresh initialisation; optimizer
  # state and step start fresh. Only used when the workdir holds no checkpoint to resume.
  c.transfer = ml_collections.ConfigDict(dict(
      source="",                 # '' = train from scratch
      g_from="g_ema",            # source item for G ('g', 'g_ema'; '' = keep G at init)
      g_ema_from="g_ema",        # source item for G-EMA
      d_from="d",                # source item for D ('' = keep D at init)
      on_mismatch="error",       # target leaves missing from the source or of another shape:
                                 # 'error' (list them) or 'init' (keep the fresh init for them)
  ))

  c.parallel = ml_collections.ConfigDict(dict(
      mode="jit",                # 'jit' on a device Mesh, or 'pmap'
      distributed=False,         # True: jax.distributed.initialize() with auto-detection (TPU pod, SLURM)
      coordinator_address="",    # 'host:port' of process 0 for an explicit multi-process job
      num_processes=0,
      process_id=-1,
      cpu_collectives="",        # '' = gloo on CPU; set for CPU multi-process jobs if needed
  ))
  return c
