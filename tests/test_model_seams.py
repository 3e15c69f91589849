"""Seams between the models and the rest: block features, the compute dtype, and minibatch-stddev
shares under jit (how the steps pass the device count to D)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from gantl_jax import config as config_lib
from gantl_jax.cli import bench
from gantl_jax.data import synthetic
from gantl_jax.models import stylegan2 as sg
from gantl_jax.training import parallel
from gantl_jax.training import state as state_lib
from gantl_jax.training import steps

RES, BATCH = 16, 4
CB, CM = 256, 32  # channels 32 at 4 and 8 px, 16 at 16 px: the schedule is not flat
# bfloat16 against float32 on the same parameters, measured at init on 16 px: images differ by
# at most 1.25% of their largest magnitude, D logits by 0.67% of theirs. The bands are ~3x that:
# bf16 where float32 is promised (styles, demodulation, the RGB sum, D's epilogue) goes past them.
BF16_IMAGE_BAND = 0.04
BF16_LOGIT_BAND = 0.02


def model_config(**model):
  c = tiny.get_config()
  c.model.update(resolution=RES, z_dim=16, w_dim=16, channel_base=CB, channel_max=CM, **model)
  return c.model


@pytest.fixture(scope="module")
def f32():
  """float32 G and D, their variables, latents and images."""
  g = sg.generator_from_config(model_config())
  d = sg.discriminator_from_config(model_config())
  g_vars = sg.init_generator(g, jax.random.key(0))
  d_vars = sg.init_discriminator(d, jax.random.key(1))
  z = jax.random.normal(jax.random.key(2), (BATCH, g.z_dim))
  img = jax.random.uniform(jax.random.key(3), (BATCH, RES, RES, 3), jnp.float32, -1, 1)
  return g, d, g_vars, d_vars, z, img


def ch(res):
  return sg.channels_at(res, CB, CM)


# --- apply_with_features -------------------------------------------------------------------------

def test_generator_features(f32):
  g, _, g_vars, _, z, _ = f32
  plain = jax.jit(lambda v, z: g.apply(v, z, noise_mode="const"))(g_vars, z)
  out, feats = jax.jit(lambda v, z: sg.apply_with_features(g, v, z, noise_mode="const"))(g_vars, z)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(plain))
  blocks = sg.block_resolutions(RES)
  assert set(feats) == {f"synthesis/b{r}" for r in blocks}
  for r in blocks:
    assert feats[f"synthesis/b{r}"].shape == (BATCH, r, r, ch(r)), r


def test_discriminator_features(f32):
  _, d, _, d_vars, _, img = f32
  plain = jax.jit(d.apply)(d_vars, img)
  out, feats = jax.jit(lambda v, x: sg.apply_with_features(d, v, x))(d_vars, img)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(plain))
  # One map per residual block (b16, b8); the 4x4 epilogue is not a block.
  blocks = sg.block_resolutions(RES)[1:]
  assert set(feats) == {f"b{r}" for r in blocks}
  for r in blocks:
    assert feats[f"b{r}"].shape == (BATCH, r // 2, r // 2, ch(r // 2)), r


def test_plain_apply_collects_nothing(f32):
  """Without apply_with_features the sow is dropped: apply returns the output alone."""
  g, d, g_vars, d_vars, z, img = f32
  assert isinstance(d.apply(d_vars, img), jax.Array)
  assert isinstance(g.apply(g_vars, z, noise_mode="const"), jax.Array)


# --- compute dtype -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bf16(f32):
  g = sg.generator_from_config(model_config(compute_dtype="bfloat16"))
  d = sg.discriminator_from_config(model_config(compute_dtype="bfloat16"))
  return g, d


def test_bf16_models_take_float32_params(f32, bf16):
  g, d, g_vars, d_vars, *_ = f32
  g16, d16 = bf16
  assert g16.dtype == jnp.bfloat16 and d16.dtype == jnp.bfloat16
  # Initialising the bf16 modules gives the same float32 tree: checkpoints do not depend on it.
  for module, init, ref in ((g16, sg.init_generator, g_vars), (d16, sg.init_discriminator, d_vars)):
    shapes = jax.eval_shape(lambda k: init(module, k), jax.random.key(0))
    assert jax.tree.structure(shapes) == jax.tree.structure(ref)
    assert {x.dtype for x in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
    assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(lambda a: a.shape, ref)


def test_bf16_outputs_close_to_float32(f32, bf16):
  g, d, g_vars, d_vars, z, img = f32
  g16, d16 = bf16
  ref_img = jax.jit(lambda v, z: g.apply(v, z, noise_mode="const"))(g_vars, z)
  out_img = jax.jit(lambda v, z: g16.apply(v, z, noise_mode="const"))(g_vars, z)
  ref_logits = jax.jit(d.apply)(d_vars, img)
  out_logits = jax.jit(d16.apply)(d_vars, img)
  for name, out, ref, band in (("image", out_img, ref_img, BF16_IMAGE_BAND),
                               ("logits", out_logits, ref_logits, BF16_LOGIT_BAND)):
    out, ref = np.asarray(out), np.asarray(ref)
    assert out.dtype == np.float32 and out.shape == ref.shape, name
    assert np.isfinite(out).all(), name
    rel = np.abs(out - ref).max() / np.abs(ref).max()
    print(f"bf16 vs float32 {name}: max |diff| / max |float32| = {rel:.2e}")
    assert 0 < rel < band, (name, rel)  # 0 would mean bf16 never happened


def test_bf16_gradients_are_float32_and_finite(f32, bf16):
  _, _, g_vars, d_vars, z, img = f32
  g16, d16 = bf16

  def loss(g_params, d_params):
    fake = g16.apply({**g_vars, "params": g_params}, z, noise_mode="const")
    logits = d16.apply({"params": d_params}, jnp.concatenate([fake, img]))
    return jnp.mean(jax.nn.softplus(-logits))

  value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(g_vars["params"], d_vars["params"])
  assert value.dtype == jnp.float32 and np.isfinite(float(value))
  for (path, x), ref in zip(jax.tree_util.tree_leaves_with_path(grads),
                            jax.tree.leaves((g_vars["params"], d_vars["params"]))):
    assert x.dtype == jnp.float32 and x.shape == ref.shape, jax.tree_util.keystr(path)
    assert np.isfinite(np.asarray(x)).all(), jax.tree_util.keystr(path)
  # The gradient reaches every layer (a stop in a cast would leave zeros): at least one
  # non-zero entry per leaf, noise strengths aside (const noise of strength 0 at init).
  zero = [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_leaves_with_path(grads)
          if not np.any(np.asarray(x)) and "noise_strength" not in jax.tree_util.keystr(p)]
  assert not zero, zero


@pytest.mark.parametrize("resolution,num,expected", [
    (256, 4, [32, 64, 128, 256]),  # the official num_fp16_res=4 at 256 px
    (256, 1, [256]),
    (256, 0, [4, 8, 16, 32, 64, 128, 256]),  # 0: every block
    (32, 9, [8, 16, 32]),  # as many as there are: never the 4x4 block (official: at least 8 px)
])
def test_low_precision_blocks(resolution, num, expected):
  assert sg.low_precision_blocks(resolution, num) == expected


@pytest.mark.parametrize("num", [0, 1, 2])
def test_num_low_precision_res_selects_block_dtypes(f32, num):
  """The blocks' activations are bf16 exactly in the blocks that num_low_precision_res picks, in G
  and in D; outputs, and every block of a float32 model, stay float32."""
  _, _, g_vars, d_vars, z, img = f32
  low = {0: {4, 8, 16}, 1: {16}, 2: {8, 16}}[num]
  for dtype in ("bfloat16", "float32"):
    g = sg.generator_from_config(model_config(compute_dtype=dtype, num_low_precision_res=num))
    d = sg.discriminator_from_config(model_config(compute_dtype=dtype, num_low_precision_res=num))
    out, g_feats = jax.eval_shape(lambda v, z: sg.apply_with_features(g, v, z, noise_mode="const"), g_vars, z)
    logits, d_feats = jax.eval_shape(lambda v, x: sg.apply_with_features(d, v, x), d_vars, img)
    assert out.dtype == jnp.float32 and logits.dtype == jnp.float32
    want = lambda r: jnp.bfloat16 if dtype == "bfloat16" and r in low else jnp.float32
    # G's block b{r} works at r px; D's block b{r} takes r px in and gives r/2 px out.
    assert {k: v.dtype for k, v in g_feats.items()} == {f"synthesis/b{r}": want(r) for r in (4, 8, 16)}
    assert {k: v.dtype for k, v in d_feats.items()} == {f"b{r}": want(r) for r in (8, 16)}


def test_conv_clamp_in_float32_and_bf16_blocks(f32):
  """conv_clamp bounds every G block's output, whatever the block's dtype (as the official code,
  which clamps every layer once conv_clamp is set, not only its fp16 ones)."""
  _, _, g_vars, _, z, _ = f32
  clamp = 0.25
  g = sg.generator_from_config(model_config(compute_dtype="bfloat16", num_low_precision_res=1, conv_clamp=clamp))
  free = sg.generator_from_config(model_config(compute_dtype="bfloat16", num_low_precision_res=1))
  _, feats = jax.jit(lambda v, z: sg.apply_with_features(g, v, z, noise_mode="const"))(g_vars, z)
  _, free_feats = jax.jit(lambda v, z: sg.apply_with_features(free, v, z, noise_mode="const"))(g_vars, z)
  assert feats["synthesis/b16"].dtype == jnp.bfloat16 and feats["synthesis/b8"].dtype == jnp.float32
  for name, x in feats.items():
    assert float(jnp.max(jnp.abs(x.astype(jnp.float32)))) <= clamp, name
    # Not vacuous: without the clamp the activations go past it.
    assert float(jnp.max(jnp.abs(free_feats[name].astype(jnp.float32)))) > clamp, name


# bfloat16 against float32 training: the same 8 px run (seed, latents, noise, fixed synthetic
# images) for 32 steps (8 with both regularisers). Measured over 64 steps of this run: per-step
# |bf16 - float32| at most 0.016 (g_loss), 0.005 (d_loss), 11% of the penalty (pl_penalty) and
# 3% (r1_penalty). The bands are ~3x that; a float32 step would match to ~1e-6.
TRACK_STEPS = 32
TRACK_ABS_BAND = {"g_loss": 0.05, "d_loss": 0.02}
TRACK_REL_BAND = {"pl_penalty": 0.3, "r1_penalty": 0.1}


def track_config(dtype, variant_programs="auto"):
  c = tiny.get_config()
  c.model.update(resolution=8, z_dim=16, w_dim=16, channel_base=64, channel_max=16, compute_dtype=dtype)
  c.train.update(batch_size=4, r1_interval=4, pl_interval=4, variant_programs=variant_programs)
  return config_lib.resolve(c)


def track_images():
  return synthetic.render("anime", range(16), resolution=8).astype(np.float32) / 127.5 - 1


@pytest.fixture(scope="module")
def training_runs():
  """{dtype: (losses, final state)} of the same short run in float32 and in bfloat16 (on CPU in
  one merged program: train.variant_programs 'auto')."""
  return {dtype: bench.train_losses(track_config(dtype), track_images(), TRACK_STEPS)
          for dtype in ("float32", "bfloat16")}


def test_bf16_train_steps_stay_finite(training_runs):
  """bf16 needs no loss scaling (float32's exponent range): every loss, gradient update and
  parameter of a short run stays finite, and the parameters stay float32."""
  curves, state = training_runs["bfloat16"]
  ran = {name for name in bench.LOSSES if np.isfinite(curves[name]).any()}
  assert ran == set(bench.LOSSES)
  for name in bench.LOSSES:
    ran_at = np.isfinite(training_runs["float32"][0][name])
    assert np.isfinite(curves[name][ran_at]).all(), name
  assert (curves["finite_params"] == 1).all()
  for net in state_lib.NETWORKS:
    for path, x in jax.tree_util.tree_leaves_with_path(state_lib.network(state, net).params):
      assert x.dtype == jnp.float32 and np.isfinite(np.asarray(x)).all(), (net, jax.tree_util.keystr(path))
  assert np.isfinite(float(state.extras["pl_mean"])) and float(state.extras["pl_mean"]) > 0


def test_bf16_losses_track_float32(training_runs):
  ref, bf16 = training_runs["float32"][0], training_runs["bfloat16"][0]
  for name in bench.LOSSES:
    ran = np.isfinite(ref[name])
    diff = np.abs(bf16[name][ran] - ref[name][ran])
    band = TRACK_ABS_BAND.get(name) or TRACK_REL_BAND[name] * np.abs(ref[name][ran])
    print(f"{name}: max |bf16 - float32| {diff.max():.4f}, mean {diff.mean():.4f}, "
          f"float32 mean {ref[name][ran].mean():.4f}")
    assert (diff <= band).all(), (name, diff, band)
    assert diff.mean() > 0, name  # bf16 did happen


def test_merged_program_trains_as_separate_programs(training_runs):
  """One program for every step (the lazy phases behind lax.cond) gives the losses of one program
  per variant: the same computation, fused differently (measured: equal to ~1e-6 over 8 steps)."""
  assert steps.merged_variants(track_config("float32").train)  # 'auto' on CPU
  steps_run = 8  # both variants, twice
  separate, _ = bench.train_losses(track_config("float32", "separate"), track_images(), steps_run)
  merged = training_runs["float32"][0]
  for name in bench.LOSSES:
    np.testing.assert_allclose(merged[name][:steps_run], separate[name], rtol=1e-4, atol=1e-5, err_msg=name)


# --- strided minibatch stddev in shares ---------------------------------------------------------

def strided_config(num_devices):
  """8 px, batch 8 over ``num_devices`` devices, mbstd groups of 2 inside each share of 4, so the
  strided groups (i, i + 2) of a share differ from those of the whole batch (i, i + 4)."""
  c = tiny.get_config()
  c.model.update(resolution=8, z_dim=16, w_dim=16, channel_base=64, channel_max=16,
                 mbstd_group_size=2, mbstd_grouping="strided")
  # No lazy regularisers: every step index is the same program.
  c.train.update(batch_size=8, r1_gamma=0.0, pl_weight=0.0)
  return config_lib.resolve(c, num_devices=num_devices)


@pytest.fixture(scope="module")
def strided():
  config = strided_config(2)
  nets = state_lib.build_networks(config)
  d = nets.discriminator
  d_vars = sg.init_discriminator(d, jax.random.key(0))
  x = jax.random.uniform(jax.random.key(1), (8, 8, 8, 3), jnp.float32, -1, 1)
  logits = jax.jit(lambda v, x, n: d.apply(v, x, mbstd_num_shards=n), static_argnums=2)
  return config, nets, d_vars, x, logits


def test_strided_shares_equal_separate_calls(strided):
  _, nets, d_vars, x, logits = strided
  assert nets.discriminator.mbstd_grouping == "strided"
  two_shares = np.asarray(logits(d_vars, x, 2))
  separately = np.concatenate([np.asarray(logits(d_vars, x[:4], 1)), np.asarray(logits(d_vars, x[4:], 1))])
  whole = np.asarray(logits(d_vars, x, 1))
  print("strided: 2 shares vs separate calls, max |diff|", np.abs(two_shares - separately).max(),
        "; vs one share of 8", np.abs(whole - separately).max())
  np.testing.assert_allclose(two_shares, separately, rtol=1e-6, atol=1e-6)
  # Not vacuous: one share of 8 groups (i, i + 4), which changes the logits.
  assert np.abs(whole - separately).max() > 1e-3


def test_jit_step_passes_device_count_as_shares(strided):
  """The ``jit`` driver on a 2-device mesh feeds D the global batch as 2 shares: the step's mean
  real logit is that of the shares evaluated one by one."""
  config, nets, _, x, logits = strided
  mesh = parallel.make_mesh(jax.devices()[:2])
  state = parallel.create_state(nets, config.seed, "jit", mesh)
  d_vars = {"params": parallel.first_replica(state.d.params, "jit")}
  step = parallel.make_step(config, nets, "jit", mesh)
  _, metrics = step(state, parallel.place_batch(np.asarray(x), "jit", mesh), 0)
  got = float(metrics["real_logits"])
  separately = np.mean([np.asarray(logits(d_vars, x[:4], 1)), np.asarray(logits(d_vars, x[4:], 1))])
  whole = float(np.mean(np.asarray(logits(d_vars, x, 1))))
  print(f"mean real logit: step {got:.7g}, shares one by one {separately:.7g}, one share of 8 {whole:.7g}")
  np.testing.assert_allclose(got, separately, rtol=1e-5, atol=1e-6)
  assert abs(whole - separately) > 1e-4
