"""CDC (cross-domain correspondence, Ojha et al. 2021) in the step: the distance-consistency loss
against a numpy transcription of the official form, zero at the source and positive away from it,
equal on 1 and 8 devices; the anchor schedule and which of D's outputs each step trains; a
transfer from a tiny source checkpoint that lacks the patch head; D's parameters without CDC.

One 8 px config with R1 every step and anchor steps every other step: the transferred run
compiles two programs (anchor, patch) under pmap on the 8 simulated devices, and the device
comparison repeats one of its patch steps on one device (a third program). Source weights are
random numbers instead of the model's initialiser (whose compile costs tens of seconds here):
transfer only overlays leaves.
"""
import json

import jax
import ml_collections
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import fewshot_cdc, tiny
from gantl_jax import config as config_lib
from gantl_jax import errors
from gantl_jax.fewshot import cdc as fewshot
from gantl_jax.models import stylegan2
from gantl_jax.training import checkpoint
from gantl_jax.training import parallel
from gantl_jax.training import state as state_lib
from gantl_jax.training import steps
from gantl_jax.training import transfer

RES, BATCH, STEPS = 8, 8, 4
PATCH_HEAD = ["patch_head/bias", "patch_head/weight"]


def make_config(source="", **fewshot_kw):
  """8 px, batch 8 (one image per device: mbstd groups of 1), no path length, R1 every step. With
  a ``source``, CDC at the paper's weight with anchor steps every other step; without, no CDC."""
  c = tiny.get_config()
  c.model.update(resolution=RES, z_dim=16, w_dim=16, channel_base=64, channel_max=16,
                 mbstd_group_size=1)
  c.train.update(batch_size=BATCH, pl_weight=0.0, r1_interval=1)
  if source:
    c.fewshot.update(cdc_weight=1000.0, cdc_anchor_interval=2, **fewshot_kw)
  c.transfer.update(source=source)
  return config_lib.resolve(c, num_devices=jax.device_count())


def random_variables(nets, seed):
  """Random numbers in the shapes of G's and D's variables (scaled down: random biases of 1 would
  saturate the tiny networks)."""
  rng = np.random.default_rng(seed)
  fill = lambda x: (0.5 * rng.standard_normal(x.shape)).astype(x.dtype)
  shapes = lambda init, module: jax.eval_shape(lambda: init(module, jax.random.key(0)))
  g = jax.tree.map(fill, shapes(stylegan2.init_generator, nets.generator))
  d = jax.tree.map(fill, shapes(stylegan2.init_discriminator, nets.discriminator))
  return {"g": g, "g_ema": g, "d": d}


def host(tree):
  return jax.tree.map(np.array, tree)


def flat(tree):
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory):
  """A tiny run's networks without CDC (so its D has no patch head), as a transfer source."""
  config = make_config()
  variables = random_variables(state_lib.build_networks(config), 1)
  directory = str(tmp_path_factory.mktemp("cdc_source") / "checkpoints")
  checkpoint.save_networks(directory, **variables, meta={"model": config_lib.model_hparams(config)})
  return directory


@pytest.fixture(scope="module")
def transferred(source_dir):
  """The CDC target after transfer (host copy, jit layout), its report, config, networks and the
  frozen source G."""
  config = make_config(source_dir)
  nets = state_lib.build_networks(config)
  mesh = parallel.make_mesh()
  fresh = state_lib.state_from_variables(nets, random_variables(nets, 2), np.zeros((2,), np.uint32))
  state, report = transfer.transfer_state(config, jax.device_put(fresh, NamedSharding(mesh, P())))
  frozen = transfer.read_frozen(config, state, steps.frozen_networks(config))
  return dict(config=config, nets=nets, state=host(state), report=report, frozen=host(frozen),
              fresh_head=flat(fresh.d.params))


@pytest.fixture(scope="module")
def trained(transferred):
  """STEPS steps of the transferred run under pmap on the 8 devices (each device its own share of
  the batch and its own random streams): metrics, D's parameters after each step, and the state
  after each step (host copies)."""
  config, nets = transferred["config"], transferred["nets"]
  mesh = parallel.make_mesh()
  step = parallel.make_step(config, nets, "pmap", mesh)
  state = parallel.from_global(parallel.replicate(transferred["state"], mesh), "pmap")
  frozen = parallel.replicate(transferred["frozen"], mesh)
  batches = np.random.default_rng(0).uniform(-1, 1, (STEPS, BATCH, RES, RES, 3)).astype(np.float32)
  metrics, states = [], [transferred["state"]]
  for i in range(STEPS):
    state, m = step(state, parallel.place_batch(batches[i], "pmap", mesh), i, frozen)
    metrics.append(parallel.first_replica(m, "pmap"))
    states.append(host(parallel.first_replica(state, "pmap")))
  return dict(metrics=metrics, states=states, batches=batches,
              d_params=[flat(s.d.params) for s in states])


# --- the loss ------------------------------------------------------------------------------------

def official_kl(source_feats, target_feats):
  """The official train.py's distance-consistency term at one level, for every row: cosine
  similarities of each image with the others (pairs in order, itself left out), softmax per row,
  then KLDivLoss() (reduction 'mean') of log(target) against source."""
  def dist(feats):
    n = feats.shape[0]
    f = feats.reshape(n, -1).astype(np.float64)
    rows = []
    for a in range(n):
      sims = [f[a] @ f[b] / max(np.linalg.norm(f[a]) * np.linalg.norm(f[b]), 1e-8)
              for b in range(n) if b != a]
      e = np.exp(np.asarray(sims) - max(sims))
      rows.append(e / e.sum())
    return np.asarray(rows)
  p, q = dist(source_feats), dist(target_feats)
  return float(np.mean(p * (np.log(p) - np.log(q))))


def test_distance_consistency_is_the_official_kl_averaged_over_levels():
  rng = np.random.default_rng(0)
  # Few dimensions, so that the images' similarities spread over (-1, 1).
  source = {f"synthesis/b{r}": rng.standard_normal((5, r, r, 1)).astype(np.float32) for r in (2, 4)}
  adapted = {k: v + rng.standard_normal(v.shape).astype(np.float32) for k, v in source.items()}
  got = float(fewshot.distance_consistency(source, adapted))
  want = np.mean([official_kl(source[k], adapted[k]) for k in source])
  assert want > 1e-3 and got == pytest.approx(want, rel=1e-4)
  assert float(fewshot.distance_consistency(source, source)) == pytest.approx(0.0, abs=1e-7)


def test_loss_is_zero_at_the_source_and_positive_after_perturbing_g(transferred):
  nets, frozen = transferred["nets"], transferred["frozen"]["g"]
  z, noise_keys = fewshot.cdc_inputs(jax.random.key(3), 4, nets.generator.z_dim)
  loss = jax.jit(lambda adapted: fewshot.cdc_loss(nets.generator, adapted, frozen, z, noise_keys))
  rng = np.random.default_rng(4)
  perturbed = {**frozen, "params": jax.tree.map(
      lambda x: x + 0.1 * rng.standard_normal(x.shape).astype(x.dtype), frozen["params"])}
  at_source, away = float(loss(frozen)), float(loss(perturbed))
  print(f"CDC KL at the source {at_source:.3g}, after perturbing G by 0.1 {away:.3g}")
  assert abs(at_source) < 1e-7 and away > 1e-5  # measured 6e-9 and 4e-5


# --- the schedule and the patch discriminator ----------------------------------------------------

def test_anchor_flag_alternates_as_scheduled():
  config = config_lib.resolve(fewshot_cdc.get_config())
  assert config.fewshot.cdc_anchor_interval == 4 and config.fewshot.cdc_weight == 1000
  flags = [steps.schedule(i, config) for i in range(17)]
  assert [i for i, f in enumerate(flags) if f.anchor] == [0, 4, 8, 12, 16]
  # R1 (every 16) and path length (every 4) keep their own schedules.
  assert [i for i, f in enumerate(flags) if f.d_reg] == [0, 16]
  assert [i for i, f in enumerate(flags) if f.g_reg] == [0, 4, 8, 12, 16]
  # Interval 0: no anchor step, so the same programs as without CDC (also for a run's config
  # written without the fewshot section, once upgraded).
  config.fewshot.cdc_anchor_interval = 0
  assert not any(steps.schedule(i, config).anchor for i in range(17))
  old = config.to_dict()
  del old["fewshot"]
  upgraded = ml_collections.ConfigDict(config_lib.upgrade(old))
  assert steps.schedule(0, upgraded) == steps.StepFlags(g_reg=True, d_reg=True)


def test_discriminator_without_cdc_has_exactly_the_stylegan2_paths():
  def d_shapes(config):
    nets = state_lib.build_networks(config_lib.resolve(config))
    tree = jax.eval_shape(lambda: stylegan2.init_discriminator(nets.discriminator, jax.random.key(0)))
    return {k: v.shape for k, v in traverse_util.flatten_dict(tree["params"], sep="/").items()}

  c = tiny.get_config()  # 16 px
  plain = d_shapes(c)
  assert sorted(plain) == [
      "b16/conv0/bias", "b16/conv0/weight", "b16/conv1/bias", "b16/conv1/weight", "b16/fromrgb/bias",
      "b16/fromrgb/weight", "b16/skip/weight", "b4/conv/bias", "b4/conv/weight", "b4/fc/bias",
      "b4/fc/weight", "b4/out/bias", "b4/out/weight", "b8/conv0/bias", "b8/conv0/weight",
      "b8/conv1/bias", "b8/conv1/weight", "b8/skip/weight"]
  c.transfer.source = "somewhere"
  c.fewshot.cdc_weight = 1000.0  # the distance term alone adds no D parameter
  assert d_shapes(c) == plain
  c.fewshot.cdc_anchor_interval = 4
  with_head = d_shapes(c)
  # A 3x3 conv to one channel on b8's output (16 / 8 = 2, at least 4: the 4x4 map of 32 channels).
  assert with_head == {**plain, "patch_head/weight": (3, 3, 32, 1), "patch_head/bias": (1,)}
  c.fewshot.cdc_patch_resolution = 8
  assert d_shapes(c)["patch_head/weight"] == (3, 3, 32, 1)
  c.fewshot.cdc_patch_resolution = 16
  with pytest.raises(errors.ConfigError, match=r"fewshot.cdc_patch_resolution=16: .* \[4, 8\]"):
    config_lib.resolve(c)


@pytest.mark.parametrize("key,value,words", [
    ("cdc_weight", -1.0, ">= 0"),
    ("cdc_batch", 1, ">= 2"),
    ("cdc_anchor_interval", -1, ">= 0"),
    ("cdc_anchors", 0, ">= 1"),
    ("cdc_anchor_std", -0.1, ">= 0"),
    ("cdc_patch_resolution", 3, "choose one of those"),
])
def test_bad_values_fail_with_one_line_naming_the_key(key, value, words):
  c = tiny.get_config()
  c.transfer.source = "somewhere"
  c.fewshot.update(cdc_weight=1000.0, cdc_anchor_interval=4)
  c.fewshot[key] = value
  with pytest.raises(errors.ConfigError) as e:
    config_lib.resolve(c)
  message = str(e.value)
  assert f"fewshot.{key}" in message and words in message and "\n" not in message, message


def test_distance_consistency_needs_a_transfer_source():
  c = tiny.get_config()
  c.fewshot.cdc_weight = 1000.0
  with pytest.raises(errors.ConfigError, match="fewshot.cdc_weight=1000.0 compares G with the "
                     "transfer source, but transfer.source is empty; set --config.transfer.source"):
    config_lib.resolve(c)


# --- transfer and training -----------------------------------------------------------------------

def test_transfer_initialises_the_patch_head_and_reports_it(transferred, capsys):
  """The source has no patch head; with on_mismatch='error' the transfer still starts, keeps the
  head's fresh values and lists it as new; everything else comes from the source."""
  report = transferred["report"]
  assert report["on_mismatch"] == "error"
  d = report["networks"]["d"]
  assert d["new"] == ["params/" + p for p in PATCH_HEAD] == d["kept_at_init"]
  assert d["mismatched"] == [] and len(d["restored"]) == 13
  assert report["networks"]["g"]["new"] == [] and report["networks"]["g"]["kept_at_init"] == []
  got = flat(transferred["state"].d.params)
  for p in PATCH_HEAD:
    np.testing.assert_array_equal(got[p], transferred["fresh_head"][p])
  assert json.loads(json.dumps(report)) == report
  print(transfer.summary(report))
  assert "        new: params/patch_head/weight" in capsys.readouterr().out


@pytest.mark.slow
def test_transferred_run_trains_with_finite_losses_and_cdc_from_zero(trained):
  metrics = trained["metrics"]
  for i, m in enumerate(metrics):
    for name in ("g_loss", "d_loss", "r1_penalty", "cdc_loss"):
      assert np.isfinite(m[name]), (i, name, m[name])
  cdc = [float(m["cdc_loss"]) for m in metrics]
  print("cdc_loss (weighted) per step:", cdc)
  # Step 0: G is the source (both from its g_ema), so the KL is zero up to rounding between
  # the two forward passes of the program.
  assert abs(cdc[0]) / 1000 < 1e-7
  assert all(c > abs(cdc[0]) for c in cdc[1:])


def test_anchor_steps_train_the_image_logit_and_patch_steps_the_patch_head(trained):
  """Adam with beta1 = 0 gives a zero update to a parameter without gradient: the epilogue b4/*
  moves only on anchor steps (image-level D), the patch head only on the others."""
  d = trained["d_params"]
  for i in range(STEPS):
    moved = {k for k in d[i] if not np.array_equal(d[i][k], d[i + 1][k])}
    epilogue = {k for k in d[i] if k.startswith("b4/")}
    if i % 2 == 0:  # anchor step
      assert epilogue <= moved and not moved & set(PATCH_HEAD), (i, sorted(moved))
    else:
      assert set(PATCH_HEAD) <= moved and not moved & epilogue, (i, sorted(moved))


def test_same_step_on_one_device_and_under_pmap_on_eight(transferred, trained):
  """Step 1 of the pmap run (a patch step; G has moved from the source, so the CDC term is not
  zero), again on one device (jit): the same losses and parameters."""
  mesh = parallel.make_mesh(jax.devices()[:1])
  step = parallel.make_step(transferred["config"], transferred["nets"], "jit", mesh)
  state, m1 = step(parallel.replicate(trained["states"][1], mesh),
                   parallel.place_batch(trained["batches"][1], "jit", mesh), 1,
                   parallel.replicate(transferred["frozen"], mesh))
  m1, m8 = parallel.first_replica(m1, "jit"), trained["metrics"][1]
  print({k: (float(m1[k]), float(m8[k])) for k in ("cdc_loss", "g_loss", "d_loss", "r1_penalty")})
  assert float(m1["cdc_loss"]) > 1e-4
  for k in ("cdc_loss", "g_loss", "d_loss", "r1_penalty"):
    assert float(m8[k]) == pytest.approx(float(m1[k]), rel=1e-5), k
  one = parallel.first_replica(state, "jit")
  for net in ("g", "d"):
    got, want = flat(getattr(one, net).params), flat(getattr(trained["states"][2], net).params)
    for k in want:
      np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=f"{net} {k}")
