"""Tests of the StyleGAN2 importer: each published format, written by our own pickle writer
from the committed .npz fixtures, imports completely and reproduces the reference outputs.

The fixtures (tests/fixtures/README.md) hold seeded weights of tiny networks and the
outputs the original implementations computed from them.
"""
import json
import os
import pickle
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from gantl_jax.cli import import_stylegan2 as imp
from gantl_jax.models import stylegan2 as sg2
from test_safe_pickle import (Call, Global, NewObj, TorchZipWriter, dumps, ordered_dict,
                              persistent_module_node, tf_network_node)
from gantl_jax import errors

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
# Max abs differences from the original implementations, measured on CPU (jax 0.10.2):
# G images 1.9e-6 .. 5.0e-6 (ada/tf psi 0.7 1.9e-6, psi 1 3.0e-6; rosinality 2.6e-6, 5.0e-6),
# D logits 1.2e-7 .. 2.7e-7. The tolerances leave a 2-4x margin, and are far below what a
# wrong layout, gain or grouping gives (D: 4e-4 .. 2e-3 for the wrong mbstd grouping).
G_TOL = 1e-5
D_TOL = 1e-6
# A fixed offset between the G and G_ema weights written into the test files, so a swap shows.
G_OFFSET = 0.25


def _fixture(name):
  with np.load(os.path.join(FIXTURES, name)) as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def ada():
  return _fixture("stylegan2_ada_pytorch_res16.npz")


@pytest.fixture(scope="module")
def tf():
  return _fixture("stylegan2_tf_res16.npz")


@pytest.fixture(scope="module")
def ada_mbstd():
  # Official D logits on a batch of 8, larger than the mbstd group (tests/fixtures/README.md).
  return _fixture("stylegan2_ada_pytorch_res16_mbstd.npz")


@pytest.fixture(scope="module")
def ros():
  return _fixture("stylegan2_rosinality_res16.npz")


def _prefixed(fix, prefix):
  return {k[len(prefix):]: v for k, v in fix.items() if k.startswith(prefix)}


def _offset(sd):
  # FIR filters are constants the importer checks, so they stay as they are.
  return {k: v if k.endswith(("resample_filter", "kernel")) else v + np.float32(G_OFFSET)
          for k, v in sd.items()}


# ---------------------------------------------------------------------------
# Building files in each format from the fixtures.


def _module_tree(class_name, sd, init_kwargs=None):
  """Nest a flat torch state dict into persistent-module nodes (params vs buffers as torch)."""
  children, params, buffers = {}, {}, {}
  for name, value in sd.items():
    head, _, rest = name.partition(".")
    if rest:
      children.setdefault(head, {})[rest] = value
    elif head in ("w_avg", "noise_const", "resample_filter"):
      buffers[head] = value
    else:
      params[head] = value
  modules = {k: _module_tree(k, v) for k, v in children.items()}
  return persistent_module_node(class_name, params, buffers, modules, init_kwargs)


def write_ada_pickle(fix, path, g_sd=None, mutate=None):
  g_ema_sd = _prefixed(fix, "G.")
  g_sd = _offset(g_ema_sd) if g_sd is None else g_sd
  d_sd = _prefixed(fix, "D.")
  gk = json.loads(str(fix["G_init_kwargs"]))
  dk = json.loads(str(fix["D_init_kwargs"]))
  if mutate:
    mutate(g_ema_sd, g_sd, d_sd, gk, dk)
  tree = {
      "G": _module_tree("Generator", g_sd, gk),
      "D": _module_tree("Discriminator", d_sd, dk),
      "G_ema": _module_tree("Generator", g_ema_sd, gk),
      "training_set_kwargs": NewObj(Global("dnnlib.util", "EasyDict"), (), items=[("resolution", 16)], state={}),
      "augment_pipe": None,
  }
  path.write_bytes(dumps(tree, protocol=4))
  return str(path)


def _tf_nets(fix, prefix, offset=0.0):
  sd = {k: v + np.float32(offset) for k, v in _prefixed(fix, prefix).items()}
  return sd


def write_tf_pickle(fix, path):
  g_static = json.loads(str(fix["G_static_kwargs"]))
  d_static = json.loads(str(fix["D_static_kwargs"]))

  def generator(name, sd):
    # StyleGAN2's TF G_main also stores its progressive-growing 'lod' (0).
    top = {**{k: v for k, v in sd.items() if "/" not in k}, "lod": np.array(0.0, np.float32)}
    mapping = {k[len("mapping/"):]: v for k, v in sd.items() if k.startswith("mapping/")}
    synthesis = {k[len("synthesis/"):]: v for k, v in sd.items() if k.startswith("synthesis/")}
    return tf_network_node(name, g_static, top, {
        "mapping": tf_network_node(name + "_mapping", {}, mapping),
        "synthesis": tf_network_node(name + "_synthesis", {}, synthesis)})

  tree = (generator("G", _tf_nets(fix, "G/", G_OFFSET)),
          tf_network_node("D", d_static, _prefixed(fix, "D/")),
          generator("Gs", _tf_nets(fix, "G/")))
  path.write_bytes(dumps(tree, protocol=3))
  return str(path)


def write_rosinality_pt(fix, path, with_latent_avg=True, with_g=True):
  zw = TorchZipWriter()
  g_ema = _prefixed(fix, "g_ema.")
  tree = {"g_ema": ordered_dict((k, zw.tensor(v)) for k, v in g_ema.items()),
          "d": ordered_dict((k, zw.tensor(v)) for k, v in _prefixed(fix, "d.").items()),
          "args": NewObj(Global("argparse", "Namespace"), (), state=json.loads(str(fix["args"])))}
  if with_g:
    tree["g"] = ordered_dict((k, zw.tensor(v)) for k, v in _offset(g_ema).items())
  if with_latent_avg:
    tree["latent_avg"] = zw.tensor(fix["latent_avg"])
  path.write_bytes(zw.write(tree))
  return str(path)


# ---------------------------------------------------------------------------
# Running our model on imported weights.


def generate(hp, g_vars, z, psi):
  g = sg2.generator_from_config(imp.model_config(hp))
  img = g.apply(g_vars, jnp.asarray(z), truncation_psi=psi, noise_mode="const")
  return np.asarray(img).transpose(0, 3, 1, 2)  # NHWC -> the references' NCHW


def discriminate(hp, d_vars, images_nchw, num_shards=1):
  d = sg2.discriminator_from_config(imp.model_config(hp))
  x = jnp.asarray(images_nchw.transpose(0, 2, 3, 1))
  return np.asarray(d.apply(d_vars, x, mbstd_num_shards=num_shards))


def _max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a).reshape(-1) - np.asarray(b).reshape(-1))))


def check_equivalence(fmt, fix, hp, g, g_ema, d, w_avg):
  np.testing.assert_array_equal(g_ema["buffers"]["mapping"]["w_avg"], w_avg)
  out = _prefixed(fix, "out.")
  diffs = {
      "G_ema psi=0.7": _max_diff(generate(hp, g_ema, out["z"], float(out["psi"])), out["img_psi07"]),
      "G_ema psi=1": _max_diff(generate(hp, g_ema, out["z"], 1.0), out["img_psi1"]),
      "D logits": _max_diff(discriminate(hp, d, out["d_images"]), out["d_logits"]),
  }
  print(f"\n{fmt}: max abs diff vs reference: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
  assert diffs["G_ema psi=0.7"] <= G_TOL and diffs["G_ema psi=1"] <= G_TOL, diffs
  # G is G_ema shifted by G_OFFSET everywhere in the written file: no swap, nothing shared.
  np.testing.assert_allclose(g["params"]["synthesis"]["b4"]["conv1"]["bias"],
                             g_ema["params"]["synthesis"]["b4"]["conv1"]["bias"] + G_OFFSET, rtol=1e-6)
  assert diffs["D logits"] <= D_TOL, diffs


# ---------------------------------------------------------------------------
# One test per format.


def test_ada_pytorch_pickle(ada, tmp_path):
  path = write_ada_pickle(ada, tmp_path / "network-snapshot.pkl")
  fmt, tree = imp.read_source(path)
  assert fmt == "ada-pytorch"
  hp, g, g_ema, d, report = imp.convert(tree, fmt)
  assert hp == dict(resolution=16, img_channels=3, z_dim=24, w_dim=32, mapping_layers=2, mapping_lr_mul=0.01,
                    channel_base=256, channel_max=32, conv_clamp=1.0, mbstd_group_size=4, mbstd_num_channels=1,
                    mbstd_grouping="strided")
  # Every resample_filter of G, G_ema and D was checked and dropped.
  n_fir = sum(k.endswith("resample_filter") for k in ada)
  assert len(report["dropped"]) == n_fir + sum(k.startswith("G.") and k.endswith("resample_filter") for k in ada)
  assert any("training_set_kwargs" in n for n in report["notes"])
  check_equivalence("ada-pytorch", ada, hp, g, g_ema, d, ada["G.mapping.w_avg"])


def test_tf_pickle(tf, tmp_path):
  path = write_tf_pickle(tf, tmp_path / "stylegan2-tf.pkl")
  fmt, tree = imp.read_source(path)
  assert fmt == "tf"
  hp, g, g_ema, d, report = imp.convert(tree, fmt)
  assert hp["channel_base"] == 256 and hp["conv_clamp"] == 1.0 and hp["z_dim"] == 24
  # TF pickles store no FIR filters; only G's and Gs's 'lod' are checked and dropped.
  assert report["dropped"] == ["G:lod (progressive-growing lod 0)", "G_ema:lod (progressive-growing lod 0)"]
  assert hp["mbstd_grouping"] == "strided"
  check_equivalence("tf", tf, hp, g, g_ema, d, tf["G/dlatent_avg"])


def test_rosinality_pt(ros, tmp_path):
  path = write_rosinality_pt(ros, tmp_path / "550000.pt")
  fmt, tree = imp.read_source(path)
  assert fmt == "rosinality"
  hp, g, g_ema, d, report = imp.convert(tree, fmt)
  assert hp == dict(resolution=16, img_channels=3, z_dim=32, w_dim=32, mapping_layers=2, mapping_lr_mul=0.01,
                    channel_base=256, channel_max=16, conv_clamp=None, mbstd_group_size=4, mbstd_num_channels=1,
                    mbstd_grouping="strided")
  # g_ema's and d's FIR kernels, and g's (a copy of g_ema's in the written file).
  n_fir = sum(k.endswith("kernel") for k in ros) + sum(k.startswith("g_ema.") and k.endswith("kernel") for k in ros)
  assert len(report["dropped"]) == n_fir
  check_equivalence("rosinality", ros, hp, g, g_ema, d, ros["latent_avg"].reshape(-1))


def test_tf_and_ada_fixtures_are_the_same_network(ada, tf, tmp_path):
  # The TF fixture was made from the ada one by inverting the official converter: both
  # imports must give identical variables (this pins the TF flips and +1s exactly).
  _, _, ge_ada, d_ada, _ = imp.convert(imp.read_source(write_ada_pickle(ada, tmp_path / "a.pkl"))[1], "ada-pytorch")
  _, _, ge_tf, d_tf, _ = imp.convert(imp.read_source(write_tf_pickle(tf, tmp_path / "t.pkl"))[1], "tf")
  flat_a, flat_t = imp._flatten(ge_ada), imp._flatten(ge_tf)
  assert flat_a.keys() == flat_t.keys()
  for k in flat_a:
    np.testing.assert_allclose(flat_t[k], flat_a[k], rtol=0, atol=1e-6, err_msg=k)
  for k, v in imp._flatten(d_ada).items():
    np.testing.assert_array_equal(imp._flatten(d_tf)[k], v)


def test_rosinality_without_latent_avg(ros, tmp_path):
  path = write_rosinality_pt(ros, tmp_path / "no_avg.pt", with_latent_avg=False, with_g=False)
  fmt, tree = imp.read_source(path)
  with pytest.raises(imp.ConversionError, match="latent_avg"):
    imp.convert(tree, fmt)
  hp, g, g_ema, d, report = imp.convert(tree, fmt, w_avg_samples=2000)
  # The numpy estimate equals the mean of our Flax mapping network over the same latents
  # (mapping_w_avg draws them from default_rng(seed=0)).
  z = np.random.default_rng(0).standard_normal((2000, hp["z_dim"])).astype(np.float32)
  ws = sg2.generator_from_config(imp.model_config(hp)).apply(g_ema, jnp.asarray(z), method="map")
  np.testing.assert_allclose(g_ema["buffers"]["mapping"]["w_avg"], np.asarray(ws[:, 0]).mean(0), rtol=0, atol=1e-5)
  assert g_ema["buffers"]["mapping"]["w_avg"].shape == (32,)
  assert any("estimated" in n for n in report["notes"]) and any("copy of G_ema" in n for n in report["notes"])
  np.testing.assert_array_equal(g["params"]["mapping"]["fc0"]["weight"], g_ema["params"]["mapping"]["fc0"]["weight"])


# ---------------------------------------------------------------------------
# Minibatch-stddev grouping: official (strided) logits on batches larger than the group.

# (fixture key, group size, images, shards): stylegan2-ada-pytorch's D run on the batch, or on
# each of `shards` contiguous shares of it (one per GPU) for the sharded case.
MBSTD_CASES = [("d_logits_b8_g4", 4, 8, 1), ("d_logits_b8_g2", 2, 8, 1), ("d_logits_b4_g2", 2, 4, 1),
               ("d_logits_b8_g2_shards2", 2, 8, 2)]


@pytest.mark.parametrize("fmt", ["ada-pytorch", "tf"])
def test_imported_d_matches_official_logits_on_batches_larger_than_the_group(fmt, ada, tf, ada_mbstd, tmp_path):
  # The TF fixture is the same network as the ada one, so the same official logits apply.
  write = {"ada-pytorch": lambda: write_ada_pickle(ada, tmp_path / "a.pkl"),
           "tf": lambda: write_tf_pickle(tf, tmp_path / "t.pkl")}[fmt]
  hp, _, _, d, report = imp.convert(imp.read_source(write())[1], fmt)
  assert hp["mbstd_grouping"] == "strided" and any("mbstd_grouping='strided'" in n for n in report["notes"])
  images = ada_mbstd["out.d_images_b8"]
  diffs = {}
  for key, group, batch, shards in MBSTD_CASES:
    case = dict(hp, mbstd_group_size=group)
    official = ada_mbstd["out." + key].reshape(-1)
    diffs[key] = _max_diff(discriminate(case, d, images[:batch], shards), official)
    # The test can tell the groupings apart: consecutive groups give other logits here.
    contiguous = discriminate(dict(case, mbstd_grouping="contiguous"), d, images[:batch], shards)
    assert _max_diff(contiguous, official) > 100 * D_TOL, key
  print(f"\n{fmt}: strided D vs official, max abs diff: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
  assert max(diffs.values()) <= D_TOL, diffs


def _numpy_mbstd(x, group_size, num_channels, grouping, num_shards):
  """Independent reference: per share, stylegan2-ada-pytorch's reshape (strided) or runs of
  consecutive samples (contiguous), in float64 and NCHW as the original."""
  x = x.astype(np.float64).transpose(0, 3, 1, 2)
  outs = []
  for share in np.split(x, num_shards):
    n, c, h, w = share.shape
    g, f = min(group_size, n), num_channels
    if grouping == "strided":
      y = share.reshape(g, -1, f, c // f, h, w)  # the official reshape: sample i in group i % (n/g)
    else:
      y = share.reshape(-1, g, f, c // f, h, w).transpose(1, 0, 2, 3, 4, 5)
    y = np.sqrt(np.mean(np.square(y - y.mean(0)), axis=0) + 1e-8).mean(axis=(2, 3, 4))  # [n/g, f]
    stat = np.tile(y, (g, 1)) if grouping == "strided" else np.repeat(y, g, axis=0)
    outs.append(np.concatenate([share, np.broadcast_to(stat[:, :, None, None], (n, f, h, w))], axis=1))
  return np.concatenate(outs).transpose(0, 2, 3, 1)


@pytest.mark.parametrize("grouping", ["strided", "contiguous"])
@pytest.mark.parametrize("n,group,channels,shards", [(8, 4, 1, 1), (8, 2, 2, 1), (8, 2, 1, 2), (12, 2, 2, 3),
                                                     (4, 8, 1, 1)])
def test_minibatch_stddev_matches_a_numpy_reference(grouping, n, group, channels, shards):
  # Per-sample scales make every grouping give a different statistic.
  rng = np.random.default_rng(n * 100 + group * 10 + shards)
  x = (rng.standard_normal((n, 3, 3, 4)) * np.linspace(0.5, 3.0, n)[:, None, None, None]).astype(np.float32)
  got = sg2.minibatch_stddev(jnp.asarray(x), group, channels, grouping, shards)
  np.testing.assert_allclose(np.asarray(got), _numpy_mbstd(x, group, channels, grouping, shards), rtol=1e-5, atol=1e-6)


def test_contiguous_grouping_does_not_depend_on_the_shards():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 2, 2, 4)) * np.arange(1, 9)[:, None, None, None])
  one = sg2.minibatch_stddev(x, 2, 1, "contiguous", 1)
  np.testing.assert_array_equal(sg2.minibatch_stddev(x, 2, 1, "contiguous", 4), one)
  assert not np.allclose(sg2.minibatch_stddev(x, 2, 1, "strided", 1), sg2.minibatch_stddev(x, 2, 1, "strided", 2))
  with pytest.raises(ValueError, match="grouping"):
    sg2.minibatch_stddev(x, 2, 1, "random")
  with pytest.raises(ValueError, match="3 shards do not divide the batch 8"):
    sg2.minibatch_stddev(x, 2, 1, "strided", 3)


# ---------------------------------------------------------------------------
# Failures with clear messages.


def test_unmapped_and_unset_tensors_fail_with_a_report(ada, tmp_path):
  def mutate(g_ema_sd, g_sd, d_sd, gk, dk):
    g_ema_sd["synthesis.b8.extra.weight"] = np.zeros(3, np.float32)
    del g_ema_sd["synthesis.b16.conv1.noise_const"]
  _, tree = imp.read_source(write_ada_pickle(ada, tmp_path / "x.pkl", mutate=mutate))
  with pytest.raises(imp.ConversionError) as e:
    imp.convert(tree, "ada-pytorch")
  msg = str(e.value)
  assert "unmapped_source (1)" in msg and "G_ema:synthesis.b8.extra.weight" in msg
  assert "unset_target (1)" in msg and "G_ema:buffers/synthesis/b16/conv1/noise_const" in msg


def test_wrong_fir_filter_fails(ada, tmp_path):
  def mutate(g_ema_sd, g_sd, d_sd, gk, dk):
    d_sd["b8.resample_filter"] = np.full((4, 4), 1 / 16, np.float32)  # a box filter
  _, tree = imp.read_source(write_ada_pickle(ada, tmp_path / "x.pkl", mutate=mutate))
  with pytest.raises(imp.ConversionError, match="D:b8.resample_filter is not the FIR"):
    imp.convert(tree, "ada-pytorch")


def test_unsupported_architecture_is_named(ada, tmp_path):
  def mutate(g_ema_sd, g_sd, d_sd, gk, dk):
    gk["synthesis_kwargs"]["architecture"] = "resnet"
  _, tree = imp.read_source(write_ada_pickle(ada, tmp_path / "x.pkl", mutate=mutate))
  with pytest.raises(imp.ConversionError, match="architecture is 'resnet'"):
    imp.convert(tree, "ada-pytorch")


def test_stylegan3_network_is_named(tmp_path):
  w = np.zeros((4, 4), np.float32)
  g = persistent_module_node("Generator", modules={
      "synthesis": persistent_module_node("SynthesisNetwork", modules={
          "input": persistent_module_node("SynthesisInput", params={"weight": w}),
          "L0_36_512": persistent_module_node("SynthesisLayer", params={"weight": w})})},
      init_kwargs={"z_dim": 4, "c_dim": 0, "w_dim": 4, "img_resolution": 16, "img_channels": 3})
  d = persistent_module_node("Discriminator", init_kwargs={"c_dim": 0, "img_resolution": 16, "img_channels": 3})
  path = tmp_path / "stylegan3-t.pkl"
  path.write_bytes(dumps({"G": g, "D": d, "G_ema": g}, protocol=4))
  fmt, tree = imp.read_source(str(path))
  with pytest.raises(imp.ConversionError, match="StyleGAN3 generator"):
    imp.convert(tree, fmt)


def test_pickle_of_something_else_names_what_it_found(tmp_path):
  path = tmp_path / "other.pkl"
  path.write_bytes(dumps({"weights": [1, 2, 3], "epoch": 7}))
  with pytest.raises(imp.ConversionError, match=r"found dict with keys \['weights', 'epoch'\]"):
    imp.read_source(str(path))


def test_truncated_file_is_a_clear_error(ada, tmp_path):
  path = tmp_path / "t.pkl"
  raw = open(write_ada_pickle(ada, tmp_path / "full.pkl"), "rb").read()
  path.write_bytes(raw[: len(raw) * 2 // 3])
  with pytest.raises(imp.ConversionError, match="truncated or corrupt"):
    imp.read_source(str(path))


def test_cli_refuses_hostile_pickle_without_side_effects(tmp_path, capsys):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pkl"
  path.write_bytes(dumps({"G_ema": Call(Global("os", "system"), (f"touch {marker}",))}))
  assert imp.main([str(path), str(tmp_path / "out")]) == 1
  assert "refusing to load global 'os.system'" in capsys.readouterr().err
  assert not marker.exists() and not (tmp_path / "out").exists()


def test_cli_refusal_of_an_object_array_names_the_file(tmp_path, capsys):
  path = tmp_path / "objects.pkl"
  # numpy's own pickle of an object array; its elements would be unpickled as arbitrary objects.
  path.write_bytes(pickle.dumps({"G_ema": np.array([None, 1], dtype=object)}, protocol=3))
  assert imp.main([str(path), str(tmp_path / "out")]) == 1
  assert capsys.readouterr().err.splitlines() == [
      f"error: cannot import {path}: refusing numpy dtype dtype('O'): only bool, integer and "
      f"floating-point arrays are read"]
  assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------
# Layout helpers and the CLI end to end.


def test_index_mappings():
  assert [imp._tf_noise_target(i) for i in range(5)] == [
      "synthesis/b4/conv1/noise_const", "synthesis/b8/conv0/noise_const", "synthesis/b8/conv1/noise_const",
      "synthesis/b16/conv0/noise_const", "synthesis/b16/conv1/noise_const"]
  assert [imp._ros_noise_target(i) for i in range(5)] == [imp._tf_noise_target(i) for i in range(5)]
  assert imp._infer_channels({4: 512, 8: 512, 64: 512, 128: 256, 256: 128}) == (32768, 512)
  assert imp._infer_channels({4: 16, 8: 16, 16: 16}) == (256, 16)
  with pytest.raises(imp.ConversionError):
    imp._infer_channels({4: 16, 8: 3, 16: 16})


def test_model_hparams_are_config_model_keys(ada, tmp_path):
  _, tree = imp.read_source(write_ada_pickle(ada, tmp_path / "a.pkl"))
  hp = imp.convert(tree, "ada-pytorch")[0]
  from configs import base
  model_keys = set(base.get_config().model.keys())
  assert set(hp) <= model_keys, set(hp) - model_keys


def test_config_validates_mbstd_grouping():
  from configs import base
  from gantl_jax import config as config_lib
  c = base.get_config()
  assert c.model.mbstd_grouping == "contiguous"
  c.model.mbstd_grouping = "strided"
  assert config_lib.model_hparams(config_lib.resolve(c))["mbstd_grouping"] == "strided"
  c.model.mbstd_grouping = "random"
  with pytest.raises(errors.ConfigError, match="model.mbstd_grouping must be 'contiguous' or 'strided'"):
    config_lib.resolve(c)


def test_cli_writes_orbax_checkpoint(ros, tmp_path, capsys):
  import orbax.checkpoint as ocp
  src = write_rosinality_pt(ros, tmp_path / "r.pt")
  out = tmp_path / "ckpt"
  assert imp.main([src, str(out), "--report", str(tmp_path / "report.json")]) == 0
  assert "format: rosinality" in capsys.readouterr().out
  hp, g, g_ema, d, _ = imp.convert(imp.read_source(src)[1], "rosinality")
  with ocp.CheckpointManager(str(out), item_names=("g", "g_ema", "d", "meta")) as mngr:
    assert mngr.all_steps() == [0]
    restored = mngr.restore(0, args=ocp.args.Composite(
        g_ema=ocp.args.StandardRestore(), d=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
  assert restored["meta"]["model"] == hp
  assert restored["meta"]["model"]["mbstd_grouping"] == "strided"
  assert any("mbstd_grouping='strided'" in n for n in restored["meta"]["source"]["notes"])
  for net, restored_net in ((g_ema, restored["g_ema"]), (d, restored["d"])):
    flat, got = imp._flatten(net), imp._flatten(restored_net)
    assert flat.keys() == got.keys()
    for k, v in flat.items():
      np.testing.assert_array_equal(np.asarray(got[k]), v, err_msg=k)
  assert json.load(open(tmp_path / "report.json"))["format"] == "rosinality"


def _restored_meta_and_g_ema(out):
  import orbax.checkpoint as ocp
  with ocp.CheckpointManager(str(out), item_names=("g_ema", "meta")) as mngr:
    assert mngr.all_steps() == [0]
    r = mngr.restore(0, args=ocp.args.Composite(g_ema=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
  return r["meta"], r["g_ema"]


def test_cli_refuses_to_import_over_a_checkpoint_unless_overwrite(ada, ros, tmp_path, capsys):
  a, b = write_ada_pickle(ada, tmp_path / "A.pkl"), write_rosinality_pt(ros, tmp_path / "B.pt")
  out = tmp_path / "X"
  assert imp.main([a, str(out)]) == 0
  capsys.readouterr()
  # Orbax skipped the save of an existing step and the CLI still said "wrote X": now refused.
  assert imp.main([b, str(out)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and f"OUT_DIR {out} is not empty" in err and "--overwrite" in err
  assert _restored_meta_and_g_ema(out)[0]["source"]["format"] == "ada-pytorch"
  # A failed replacement leaves the old checkpoint as it was.
  (tmp_path / "bad.pt").write_bytes(open(b, "rb").read()[:1000])
  assert imp.main([str(tmp_path / "bad.pt"), str(out), "--overwrite"]) == 1
  assert _restored_meta_and_g_ema(out)[0]["source"]["format"] == "ada-pytorch"
  assert imp.main([b, str(out), "--overwrite"]) == 0
  meta, g_ema = _restored_meta_and_g_ema(out)
  assert meta["source"]["format"] == "rosinality"
  np.testing.assert_array_equal(np.asarray(g_ema["params"]["mapping"]["fc0"]["weight"]), ros["g_ema.style.1.weight"].T)
  assert sorted(os.listdir(tmp_path)) == ["A.pkl", "B.pt", "X", "bad.pt"]  # no temporary left


def test_a_save_that_writes_nothing_fails_and_keeps_the_old_checkpoint(ada, ros, tmp_path, monkeypatch, capsys):
  from gantl_jax.training import checkpoint
  out = tmp_path / "X"
  assert imp.main([write_ada_pickle(ada, tmp_path / "A.pkl"), str(out)]) == 0
  # What Orbax does when the step exists: returns False without writing.
  monkeypatch.setattr(checkpoint.ocp.CheckpointManager, "save", lambda self, step, **kw: False)
  capsys.readouterr()
  assert imp.main([write_rosinality_pt(ros, tmp_path / "B.pt"), str(out), "--overwrite"]) == 1
  assert "already holds step 0; nothing was written" in capsys.readouterr().err
  assert _restored_meta_and_g_ema(out)[0]["source"]["format"] == "ada-pytorch"
  assert sorted(os.listdir(tmp_path)) == ["A.pkl", "B.pt", "X"]


@pytest.mark.parametrize("case", ["missing source", "source is a directory", "out_dir is a file",
                                  "overwrite of a non-checkpoint directory"])
def test_cli_path_errors_are_one_line_with_exit_code_2(case, tmp_path, capsys):
  src = tmp_path / "net.pkl"
  src.write_bytes(dumps({"G_ema": None}))
  other = tmp_path / "notes"
  other.mkdir()
  (other / "todo.txt").write_text("keep me")
  argv, expected = {
      "missing source": ([str(tmp_path / "nope.pkl"), str(tmp_path / "out")],
                         f"SOURCE {tmp_path / 'nope.pkl'} does not exist: give the path of a network file"),
      "source is a directory": ([str(tmp_path), str(tmp_path / "out")],
                                f"SOURCE {tmp_path} is a directory: give the network file in it"),
      "out_dir is a file": ([str(src), str(src)], f"OUT_DIR {src} exists and is not a directory"),
      "overwrite of a non-checkpoint directory": (
          [str(src), str(other), "--overwrite"], f"OUT_DIR {other} holds 'todo.txt', which is not a checkpoint step"),
  }[case]
  assert imp.main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: " + expected) and err.count("\n") == 1, err
  assert (other / "todo.txt").read_text() == "keep me" and not (tmp_path / "out").exists()


def test_cli_error_as_a_command(tmp_path):
  # The module run as the README shows it: no traceback, exit code 2.
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(imp.__file__))))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
  r = subprocess.run([sys.executable, "-m", "gantl_jax.cli.import_stylegan2", str(tmp_path / "nope.pkl"),
                      str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=120)
  assert r.returncode == 2 and r.stdout == ""
  assert r.stderr == f"error: SOURCE {tmp_path / 'nope.pkl'} does not exist: give the path of a network file (.pkl or .pt)\n"
