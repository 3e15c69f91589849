"""EWC and kernel-modulation adapters: the penalty's shape, G's Fisher against its definition,
adapters that start as the source bit for bit, merge/export, optimizer state only where it should
be, transfer without on_mismatch='init', and a run end to end (Fisher stored, not recomputed on
resume; only the allowed parameters move).

Everything runs at 8 px with one example per device (groups of one for minibatch stddev), and
without the lazy regularisers or style mixing, so each program is small and compiled once.
"""
import json
import os

import jax
import numpy as np
import pytest
from flax import traverse_util

from configs import tiny
from gantl_jax import config as config_lib
from gantl_jax import errors
from gantl_jax.cli import export
from gantl_jax.fewshot import adapters
from gantl_jax.fewshot import ewc as fisher
from gantl_jax.models import stylegan2
from gantl_jax.training import checkpoint
from gantl_jax.training import loop as train
from gantl_jax.training import runs
from gantl_jax.training import state as state_lib
from gantl_jax.training import steps
from gantl_jax.training import transfer

LAYERS = ["synthesis/b4/conv1", "synthesis/b8/conv0", "synthesis/b8/conv1"]  # G's convs at 8 px


def make_config(tmp_path=None, resolve=True, **fewshot):
  c = tiny.get_config()
  c.model.update(resolution=8, mbstd_group_size=1)
  c.train.update(r1_gamma=0.0, pl_weight=0.0, style_mixing_prob=0.0, total_kimg=0.016, log_every=1)
  c.checkpoint.update(every_steps=2)
  c.transfer.update(source="unused")
  if tmp_path is not None:
    c.data.update(data_dir=str(tmp_path.parent / "tfds"))
  c.fewshot.update(**fewshot)
  return config_lib.resolve(c) if resolve else c


def flat(tree):
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def random_like(tree, seed, scale=1.0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: (scale * rng.standard_normal(x.shape)).astype(x.dtype), tree)


def random_networks(config, seed):
  """Plain G and D variables of random numbers (as in test_transfer: cheaper than compiling the
  initialisers, and every leaf is distinct)."""
  nets = state_lib.build_networks(config)
  g = jax.eval_shape(lambda: stylegan2.init_generator(nets.generator, jax.random.key(0)))
  d = jax.eval_shape(lambda: stylegan2.init_discriminator(nets.discriminator, jax.random.key(0)))
  # Small weights keep the random networks' activations in a sane range.
  return nets, random_like(g, seed, 0.5), random_like(d, seed + 1, 0.5)


def opt_state_paths(opt_state):
  """Parameter paths holding arrays in a multi_transform optimizer state (keys after the label)."""
  out = set()
  for keypath, _ in jax.tree_util.tree_flatten_with_path(opt_state)[0]:
    keys = [k.key for k in keypath if isinstance(k, jax.tree_util.DictKey)]
    if len(keys) > 1:
      out.add("/".join(keys[1:]))
  return out


# ---------------------------------------------------------------------------
# EWC's penalty and G's Fisher.


def test_ewc_penalty_is_zero_at_the_source_and_quadratic_in_the_offset():
  rng = np.random.default_rng(0)
  shapes = {"a": (3, 4), "b": {"c": (5,), "d": ()}}
  tree = lambda f: jax.tree.map(f, shapes, is_leaf=lambda x: isinstance(x, tuple))
  source = tree(lambda s: rng.standard_normal(s).astype(np.float32))
  f = tree(lambda s: np.abs(rng.standard_normal(s)).astype(np.float32))
  offset = tree(lambda s: rng.standard_normal(s).astype(np.float32))
  at = lambda t: float(fisher.ewc_penalty(jax.tree.map(lambda s, o: s + t * o, source, offset), source, f))
  assert float(fisher.ewc_penalty(source, source, f)) == 0.0
  expected = sum(float(np.sum(np.float64(a) * np.float64(b) ** 2))
                 for a, b in zip(jax.tree.leaves(f), jax.tree.leaves(offset)))
  assert at(1.0) == pytest.approx(expected, rel=1e-5)
  for t in (0.5, 2.0, -3.0):
    assert at(t) == pytest.approx(t * t * at(1.0), rel=1e-5)


FISHER_SAMPLES = 12  # not a multiple of the batch (8): the last batch is partly masked


def fisher_key(config):
  return jax.random.fold_in(jax.random.key(config.seed), 1)  # the loop's key


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """A plain 8 px transfer source of random numbers, its variables and its Fisher (one device)."""
  config = make_config()
  directory = tmp_path_factory.mktemp("source")
  nets, g_vars, d_vars = random_networks(config, 20)
  checkpoint.save_networks(str(directory), g=g_vars, g_ema=g_vars, d=d_vars,
                           meta={"model": config_lib.model_hparams(config)})
  g_fisher = fisher.g_fisher(nets.generator, nets.discriminator, g_vars, d_vars["params"], fisher_key(config),
                             num_samples=FISHER_SAMPLES, batch=8)
  return str(directory), nets, g_vars, d_vars, flat(g_fisher)


def test_fisher_is_the_mean_squared_gradient_of_log_sigmoid_d_of_g(source):
  _, nets, g_vars, d_vars, got = source
  key = fisher_key(make_config())

  def log_likelihood(params, i):  # sample i, written out from the definition
    k = jax.random.fold_in(key, i)
    z = jax.random.normal(jax.random.fold_in(k, 0), (1, nets.generator.z_dim))
    image = nets.generator.apply({**g_vars, "params": params}, z, noise_mode="random",
                                 noise_keys=jax.random.fold_in(k, 1)[None])
    return jax.nn.log_sigmoid(nets.discriminator.apply(d_vars, image)[0])

  grad = jax.jit(jax.grad(log_likelihood))
  grads = [flat(grad(g_vars["params"], i)) for i in range(FISHER_SAMPLES)]
  assert set(got) == set(grads[0])
  for p in got:
    want = np.mean([g[p].astype(np.float64) ** 2 for g in grads], axis=0)
    np.testing.assert_allclose(got[p], want, rtol=2e-4, atol=1e-5 * want.max(), err_msg=p)
  assert max(v.max() for v in got.values()) > 0


def test_fisher_file_round_trip_and_a_file_that_does_not_fit(tmp_path):
  tree = {"a": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": np.ones((4,), np.float32)}
  path = str(tmp_path / fisher.FILE)
  fisher.save(path, tree)
  assert os.listdir(tmp_path) == [fisher.FILE]  # no temporary file left behind
  back = fisher.load(path, tree)
  np.testing.assert_array_equal(back["a"]["w"], tree["a"]["w"])
  with pytest.raises(errors.ConfigError, match=rf"{path} does not fit .* e.g. b\); delete it"):
    fisher.load(path, {**tree, "b": np.ones((5,), np.float32)})


# ---------------------------------------------------------------------------
# Adapters.


@pytest.fixture(scope="module")
def g8():
  """The 8 px networks, G's plain variables (random numbers) and a compiled generate."""
  config = make_config(adapter="kernel_modulation")
  nets, g_vars, _ = random_networks(config, 5)
  z = jax.random.normal(jax.random.key(6), (4, nets.generator.z_dim))
  generate = jax.jit(lambda v: steps.generate(nets, v, z))
  return nets, g_vars, generate


def test_at_init_the_adapted_g_is_the_source_bit_for_bit(g8):
  nets, g_vars, generate = g8
  adapted = adapters.init(g_vars["params"], jax.random.key(7))
  new = sorted(set(flat(adapted)) - set(flat(g_vars["params"])))
  assert new == sorted(f"{layer}/{leaf}" for layer in LAYERS for leaf in (adapters.U, adapters.V))
  merged = flat(adapters.merge(adapted))
  plain = flat(g_vars["params"])
  assert merged.keys() == plain.keys()
  for p in plain:
    np.testing.assert_array_equal(merged[p], plain[p], err_msg=p)
  np.testing.assert_array_equal(generate({**g_vars, "params": adapted}), generate(g_vars))


def test_merge_is_w_times_one_plus_v_u_and_the_export_is_a_plain_g_with_the_same_images(g8, tmp_path):
  nets, g_vars, generate = g8
  adapted = flat(adapters.init(g_vars["params"], jax.random.key(7)))
  rng = np.random.default_rng(8)
  for layer in LAYERS:  # a trained state: u moved away from 0
    u = adapted[f"{layer}/{adapters.U}"]
    adapted[f"{layer}/{adapters.U}"] = (0.3 * rng.standard_normal(u.shape)).astype(np.float32)
  adapted_vars = {**g_vars, "params": traverse_util.unflatten_dict(adapted, sep="/")}
  exported = adapters.merge_variables(adapted_vars)
  merged = flat(exported["params"])
  assert not any(adapters.is_adapter_path(p) for p in merged)
  for layer in LAYERS:
    w, u, v = (adapted[f"{layer}/{x}"].astype(np.float64) for x in ("weight", adapters.U, adapters.V))
    np.testing.assert_allclose(merged[f"{layer}/weight"], w * (1 + np.outer(v, u)), rtol=1e-6, atol=1e-7)
    assert not np.allclose(merged[f"{layer}/weight"], w)
  # The export, written as a plain checkpoint and read back as a plain G (no adapter leaves, so
  # generate merges nothing), gives the adapted G's images.
  checkpoint.save_networks(str(tmp_path / "export"), g=exported, g_ema=exported, d=None, meta={})
  back = checkpoint.read_network(str(tmp_path / "export"), 0, "g_ema", jax.tree.map(np.asarray, g_vars))
  # (The kernels are merged eagerly here and inside the program there: equal up to rounding.)
  np.testing.assert_allclose(generate(back), generate(adapted_vars), rtol=0, atol=1e-6)


def test_only_adapter_parameters_get_optimizer_state():
  everything_else = "^mapping/,/torgb/,/affine/,/bias$,/noise_strength$,/const$"
  config = make_config(adapter="kernel_modulation")
  config.freeze.g = everything_else
  nets = state_lib.build_networks(config)
  params = jax.eval_shape(lambda: state_lib.init_state(nets, 0)).g.params
  opt = jax.eval_shape(nets.g_tx.init, params)
  want = {f"{layer}/{leaf}" for layer in LAYERS for leaf in (adapters.U, adapters.V)}
  assert opt_state_paths(opt) == want

  # Chosen by the Fisher: the layer above the median keeps its kernel and is modulated, the two
  # others are fine-tuned (their kernels trained, their adapters frozen at the identity).
  config = make_config(adapter="kernel_modulation", adapter_fisher_quantile=0.5)
  shapes = jax.eval_shape(lambda: stylegan2.init_generator(nets.generator, jax.random.key(0)))["params"]
  importance = {"synthesis/b4/conv1": 1.0, "synthesis/b8/conv0": 3.0, "synthesis/b8/conv1": 2.0}
  g_fisher = traverse_util.unflatten_dict(
      {p: np.full(x.shape, importance.get(p.rsplit("/", 1)[0], 0.0), np.float32)
       for p, x in traverse_util.flatten_dict(shapes, sep="/").items()}, sep="/")
  nets = state_lib.build_networks(config, g_fisher=g_fisher)
  params = jax.eval_shape(lambda: state_lib.init_state(nets, 0)).g.params
  trained = opt_state_paths(jax.eval_shape(nets.g_tx.init, params))
  frozen = set(flat(params)) - trained
  assert frozen == {"synthesis/b8/conv0/weight", "synthesis/b4/conv1/adapter_u",
                    "synthesis/b4/conv1/adapter_v", "synthesis/b8/conv1/adapter_u",
                    "synthesis/b8/conv1/adapter_v"}


# ---------------------------------------------------------------------------
# Transfer.


def test_transfer_keeps_the_new_adapters_at_init_without_on_mismatch_init(source, tmp_path):
  source_dir, _, src_g, _, _ = source
  config = make_config(adapter="kernel_modulation")
  config.transfer.update(source=source_dir, on_mismatch="error")
  nets = state_lib.build_networks(config)
  fresh = jax.jit(lambda: state_lib.init_state(nets, 0))()
  state, report = transfer.transfer_state(config, fresh)
  got, before = flat(state.g.params), flat(fresh.g.params)
  for p, v in got.items():
    np.testing.assert_array_equal(v, before[p] if adapters.is_adapter_path(p) else flat(src_g["params"])[p])
  r = report["networks"]["g"]
  new = sorted(f"params/{layer}/{leaf}" for layer in LAYERS for leaf in (adapters.U, adapters.V))
  assert r["new"] == r["kept_at_init"] == new and r["mismatched"] == []
  a = report["adapters"]
  assert a["modulated"] == LAYERS and a["fine_tuned"] == []
  adapter_values = sum(got[f"{layer}/{leaf}"].size for layer in LAYERS for leaf in (adapters.U, adapters.V))
  assert a["trainable_adapter_count"] == adapter_values
  assert set(report["freeze"]["g"]["frozen"]) == {f"{layer}/weight" for layer in LAYERS}
  trainable = report["freeze"]["g"]["trainable_count"]
  assert trainable == sum(v.size for v in got.values()) - sum(got[f"{l}/weight"].size for l in LAYERS)
  out = transfer.summary(report)
  assert f"adapters kernel_modulation: 3 conv layers modulated (source kernels frozen), 0 fine-tuned; " \
         f"{adapter_values:,} trainable adapter values" in out
  assert f"trainable {len(report['freeze']['g']['trainable'])} ({trainable:,} values)" in out
  assert "new: params/synthesis/b8/conv0/adapter_u" in out
  assert json.loads(json.dumps(report)) == report

  # A source trained with adapters is refused: its kernels alone are not what it learned.
  checkpoint.save_networks(str(tmp_path / "adapted"), g=state.g.variables, g_ema=state.g_ema.variables,
                           d=state.d.variables, meta={"model": config_lib.model_hparams(config)})
  config.transfer.source = str(tmp_path / "adapted")
  with pytest.raises(errors.TransferError, match="trained with kernel-modulation adapters; export it"):
    transfer.transfer_state(config, fresh)


def test_config_errors_name_the_key():
  for kw, match in ((dict(adapter="lora"), "fewshot.adapter must be one of 'none', 'kernel_modulation'"),
                    (dict(adapter_fisher_quantile=0.5), "set fewshot.adapter='kernel_modulation' too"),
                    (dict(adapter="kernel_modulation", adapter_fisher_quantile=1.0), r"in \[0, 1\)"),
                    (dict(ewc_weight=-1.0), "fewshot.ewc_weight must be >= 0"),
                    (dict(ewc_weight=1.0, fisher_batch=0), "fewshot.fisher_batch must be >= 1")):
    with pytest.raises(errors.ConfigError, match=match):
      make_config(**kw)
  c = make_config(resolve=False, ewc_weight=1.0)
  c.transfer.source = ""
  with pytest.raises(errors.ConfigError, match="fewshot.ewc_weight adapts a pretrained generator"):
    config_lib.resolve(c)
  c.transfer.update(source="x", g_from="g")
  with pytest.raises(errors.ConfigError, match="set --config.transfer.g_from=g_ema"):
    config_lib.resolve(c)


# ---------------------------------------------------------------------------
# A run end to end on the 8 simulated devices.


@pytest.mark.slow
def test_run_with_adapters_and_ewc(tmp_path, source, monkeypatch):
  """Adapters on the layer of highest Fisher, the two others fine-tuned, EWC on: the Fisher is
  computed once and stored, the penalty starts at exactly 0, only the allowed parameters move,
  and a resume reads the Fisher back instead of recomputing it."""
  source_dir, nets, src_g, _, src_fisher = source
  config = make_config(tmp_path, adapter="kernel_modulation", adapter_fisher_quantile=0.5, ewc_weight=10.0,
                       fisher_samples=FISHER_SAMPLES, fisher_batch=8)
  config.transfer.source = source_dir
  config.train.total_kimg = 0.008  # one step, then a resume for the second
  workdir = tmp_path / "run"
  calls = []
  real_g_fisher = fisher.g_fisher
  monkeypatch.setattr(fisher, "g_fisher", lambda *a, **k: calls.append(1) or real_g_fisher(*a, **k))
  train.train_and_evaluate(config, str(workdir))
  assert len(calls) == 1

  # The stored Fisher (sharded over the 8 devices) is the source's, as computed on one device.
  stored = flat(fisher.load(str(workdir / fisher.FILE), src_g["params"]))
  for p in src_fisher:
    np.testing.assert_allclose(stored[p], src_fisher[p], rtol=1e-4, atol=1e-6 * src_fisher[p].max(),
                               err_msg=p)
  report = json.loads((workdir / "transfer_report.json").read_text())
  importance = adapters.layer_importance(traverse_util.unflatten_dict(stored, sep="/"), LAYERS)
  top = max(importance, key=importance.get)
  assert report["adapters"]["modulated"] == [top]
  assert report["adapters"]["importance"] == pytest.approx(importance, rel=1e-6)

  # Resume for one more step: the Fisher comes from the run, not from the source.
  before = (workdir / fisher.FILE).read_bytes()
  config.train.total_kimg = 0.016
  train.train_and_evaluate(config, str(workdir))
  assert len(calls) == 1 and (workdir / fisher.FILE).read_bytes() == before
  assert checkpoint.committed_steps(str(workdir / "checkpoints")) == [1, 2]
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert records[0]["ewc_penalty"] == 0.0 and records[1]["ewc_penalty"] > 0  # at theta_source, then not

  # After two steps: the modulated layer's kernel is the source's and its u moved; the fine-tuned
  # layers' kernels moved and their adapters stayed at the identity; all finite.
  template = jax.eval_shape(lambda: adapters.init_g_variables(nets.generator, jax.random.key(0), True))
  g = flat(checkpoint.read_network(str(workdir / "checkpoints"), 2, "g", template)["params"])
  assert all(np.all(np.isfinite(v)) for v in g.values())
  plain = flat(src_g["params"])
  for layer in LAYERS:
    kernel_same = np.array_equal(g[f"{layer}/weight"], plain[f"{layer}/weight"])
    u_zero = not np.any(g[f"{layer}/{adapters.U}"])
    assert (kernel_same, u_zero) == ((True, False) if layer == top else (False, True)), layer
  assert not np.array_equal(g["mapping/fc0/weight"], plain["mapping/fc0/weight"])

  # The run's G-EMA read back for sampling, and its export (launch.py --mode export) read back as
  # a network checkpoint, are plain Gs with the adapted G's images.
  g_ema = checkpoint.read_network(str(workdir / "checkpoints"), 2, "g_ema", template)
  run = runs.load_g_ema(str(workdir))
  exported = runs.load_network(export.export(str(workdir), str(tmp_path / "exported"))).variables
  z = jax.random.normal(jax.random.key(1), (4, nets.generator.z_dim))
  generate = jax.jit(lambda v: steps.generate(nets, v, z))
  adapted_images = generate(g_ema)
  for plain in (run.g_ema, exported):
    assert not any(adapters.is_adapter_path(p) for p in flat(plain["params"]))
    np.testing.assert_allclose(generate(plain), adapted_images, rtol=0, atol=1e-6)
