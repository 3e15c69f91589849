"""Transfer from Orbax checkpoints: cross-resolution matching, exact restore, report, errors.

States here are filled with random numbers instead of the model's initialiser: transfer only
overlays leaves on whatever fresh state it is given, and compiling the real initialiser would
cost tens of seconds per model on CPU. Source and target use different numbers, so every leaf
says where it came from.
"""
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import tiny
from gantl_jax import config as config_lib
from gantl_jax import errors
from gantl_jax.cli import import_stylegan2
from gantl_jax.models import stylegan2
from gantl_jax.training import checkpoint
from gantl_jax.training import parallel
from gantl_jax.training import state as state_lib
from gantl_jax.training import transfer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_config(resolution=16, **transfer_kw):
  c = tiny.get_config()
  c.model.resolution = resolution
  c.transfer.update(**transfer_kw)
  return config_lib.resolve(c)


def random_state(nets, seed, mesh):
  """A state of ``nets``' structure: random weights, fresh optimizer, replicated on ``mesh``."""
  rng = np.random.default_rng(seed)
  fill = lambda x: rng.standard_normal(x.shape).astype(x.dtype)
  g = jax.tree.map(fill, jax.eval_shape(lambda: stylegan2.init_generator(nets.generator, jax.random.key(0))))
  g_ema = jax.tree.map(fill, g)
  d = jax.tree.map(fill, jax.eval_shape(lambda: stylegan2.init_discriminator(nets.discriminator, jax.random.key(0))))
  state = state_lib.state_from_variables(nets, {"g": g, "g_ema": g_ema, "d": d}, np.zeros((2,), np.uint32))
  return jax.device_put(state, NamedSharding(mesh, P()))


def flat(tree):
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def networks(state):
  return {name: flat(state_lib.network(state, name).variables) for name in state_lib.NETWORKS}


def save_run_checkpoint(config, state, directory, step=7):
  """Writes ``state`` as a training run's checkpoint (all items) at ``step``.

  Host copies are saved: Orbax compiles a small program per new shape of a sharded array, tens of
  seconds for a model on this CPU, and the files are the same either way."""
  state = jax.tree.map(np.asarray, state).replace(step=np.int32(step))
  meta = {"model": config_lib.model_hparams(config), "config": json.loads(config_lib.to_json(config))}
  with checkpoint.make_manager(directory, async_save=False) as mngr:
    checkpoint.save(mngr, state, data_state={"step": step}, meta=meta, force=True)
    mngr.wait_until_finished()


@pytest.fixture(scope="module")
def mesh():
  return parallel.make_mesh()


@pytest.fixture(scope="module")
def sources(tmp_path_factory, mesh):
  """Run checkpoints at 16 and 32 px, with their states."""
  root = tmp_path_factory.mktemp("sources")
  out = {}
  for res, seed in ((16, 1), (32, 2)):
    config = make_config(res)
    state = random_state(state_lib.build_networks(config), seed, mesh)
    save_run_checkpoint(config, state, str(root / f"run{res}" / "checkpoints"))
    out[res] = (str(root / f"run{res}"), networks(state))
  return out


def check_overlay(target_config, source_dir, source_nets, mesh, workdir):
  """Transfers, then checks every leaf against the source or the fresh init, and the report."""
  nets = state_lib.build_networks(target_config)
  fresh = random_state(nets, 3, mesh)
  fresh_nets = networks(fresh)
  fresh_opt = jax.tree.map(np.asarray, (fresh.g.opt_state, fresh.d.opt_state))
  state, report = transfer.transfer_state(target_config, fresh)
  got = networks(state)
  for net, item in (("g", "g_ema"), ("g_ema", "g_ema"), ("d", "d")):
    src = source_nets[item]
    r = report["networks"][net]
    restored = sorted(p for p in fresh_nets[net] if p in src and src[p].shape == fresh_nets[net][p].shape)
    assert r["restored"] == restored
    assert r["kept_at_init"] == sorted(set(fresh_nets[net]) - set(restored))
    assert r["source_only"] == sorted(set(src) - set(fresh_nets[net]))
    for p, v in got[net].items():
      np.testing.assert_array_equal(v, src[p] if p in restored else fresh_nets[net][p], err_msg=f"{net} {p}")
  # G and G-EMA are separate buffers (the train step donates the state).
  assert state.g.params["mapping"]["fc0"]["weight"] is not state.g_ema.params["mapping"]["fc0"]["weight"]
  # Fresh optimizer and counters: nothing of the source's step 7 comes along.
  assert int(state.step) == 0
  for a, b in zip(jax.tree.leaves(fresh_opt), jax.tree.leaves((state.g.opt_state, state.d.opt_state))):
    np.testing.assert_array_equal(a, np.asarray(b))
  assert json.loads(json.dumps(report)) == report  # the loop writes it as transfer_report.json
  return report


def test_16_to_32_restores_shared_blocks_and_keeps_new_ones_at_init(sources, mesh, tmp_path, capsys):
  source_dir, source_nets = sources[16]
  config = make_config(32, source=source_dir + "/checkpoints", on_mismatch="init")
  report = check_overlay(config, source_dir, source_nets, mesh, tmp_path)
  g = report["networks"]["g"]
  assert g["kept_at_init"] and all("/synthesis/b32/" in p for p in g["kept_at_init"])
  assert "buffers/synthesis/b32/conv0/noise_const" in g["kept_at_init"]
  assert "buffers/mapping/w_avg" in g["restored"] and "buffers/synthesis/b16/conv1/noise_const" in g["restored"]
  d = report["networks"]["d"]
  assert sorted({p.split("/")[1] for p in d["kept_at_init"]}) == ["b32"]
  assert d["source_only"] == ["params/b16/fromrgb/bias", "params/b16/fromrgb/weight"]
  assert report["source"]["step"] == 7 and report["notes"] == ["model.resolution: source 16, target 32"]
  out = transfer.summary(report)
  assert "g_ema <- g_ema  restored" in out and "init: params/b32/fromrgb/weight" in out


def test_32_to_16_drops_source_blocks(sources, mesh, tmp_path):
  source_dir, source_nets = sources[32]
  config = make_config(16, source=source_dir, on_mismatch="init")  # a run's workdir works too
  report = check_overlay(config, source_dir, source_nets, mesh, tmp_path)
  assert report["networks"]["g"]["kept_at_init"] == []
  assert all("/synthesis/b32/" in p for p in report["networks"]["g"]["source_only"])
  assert report["networks"]["d"]["kept_at_init"] == ["params/b16/fromrgb/bias", "params/b16/fromrgb/weight"]


def test_step_dir_and_item_choice(sources, mesh, tmp_path):
  """A specific step directory as the source, G from the source's G (not G-EMA), D left at init."""
  source_dir, source_nets = sources[16]
  config = make_config(16, source=os.path.join(source_dir, "checkpoints", "7"), g_from="g", d_from="")
  nets = state_lib.build_networks(config)
  fresh = random_state(nets, 3, mesh)
  state, report = transfer.transfer_state(config, fresh)
  got, before = networks(state), networks(fresh)
  for p, v in got["g"].items():
    np.testing.assert_array_equal(v, source_nets["g"][p])
  for p, v in got["d"].items():
    np.testing.assert_array_equal(v, before["d"][p])
  assert report["networks"]["d"]["source_item"] is None and report["networks"]["g"]["source_item"] == "g"


def test_on_mismatch_error_lists_every_path(sources, mesh):
  config = make_config(32, source=sources[16][0])
  nets = state_lib.build_networks(config)
  with pytest.raises(errors.TransferError) as e:
    transfer.transfer_state(config, random_state(nets, 3, mesh))
  msg = str(e.value)
  fresh = networks(random_state(nets, 3, mesh))
  missing = [(net, p) for net, item in (("g", "g_ema"), ("g_ema", "g_ema"), ("d", "d"))
             for p in fresh[net] if p not in sources[16][1][item]]
  assert f"{len(missing)} target parameters/buffers" in msg
  for net, p in missing:
    assert f"{net} <- " in msg and p in msg
  assert "params/b32/fromrgb/weight  target (1, 1, 3, 8), source missing" in msg
  assert "--config.transfer.on_mismatch=init" in msg


def test_shape_mismatch_shows_both_shapes(tmp_path, mesh):
  """A network-only source (the importer's layout) with one leaf of another shape."""
  config = make_config(16)
  nets = state_lib.build_networks(config)
  src = networks(random_state(nets, 1, mesh))
  src["d"]["params/b4/out/weight"] = np.zeros((5, 1), np.float32)
  unflat = lambda d: traverse_util.unflatten_dict(d, sep="/")
  checkpoint.save_networks(str(tmp_path / "src"), g=unflat(src["g"]), g_ema=unflat(src["g_ema"]),
                           d=unflat(src["d"]), meta={"model": config_lib.model_hparams(config)})
  config = make_config(16, source=str(tmp_path / "src"))
  with pytest.raises(errors.TransferError, match=r"params/b4/out/weight  target \(32, 1\), source \(5, 1\)"):
    transfer.transfer_state(config, random_state(nets, 3, mesh))


def test_importer_output_is_a_source(tmp_path, mesh):
  """The weight importer writes through checkpoint.save_networks; its output transfers as is."""
  config = make_config(16)
  nets = state_lib.build_networks(config)
  src = random_state(nets, 5, mesh)
  to_np = lambda t: jax.tree.map(np.asarray, t)
  g = to_np(src.g.variables)
  d = to_np(src.d.variables)
  hp = dict(config_lib.model_hparams(config), mbstd_group_size=4)
  report = dict(format="ada-pytorch", source_hparams={}, notes=[], dropped=[])
  import_stylegan2.save_checkpoint(str(tmp_path / "imported"), hp, g, g, d, report)
  state, rep = transfer.transfer_state(make_config(16, source=str(tmp_path / "imported")),
                                       random_state(nets, 3, mesh))
  np.testing.assert_array_equal(np.asarray(state.d.params["b4"]["out"]["weight"]), d["params"]["b4"]["out"]["weight"])
  assert all(not r["kept_at_init"] for r in rep["networks"].values())


def test_mismatched_hparams_name_the_flag(sources, tmp_path):
  c = tiny.get_config()
  c.model.update(w_dim=64, mapping_layers=3)
  c.transfer.source = sources[16][0]
  with pytest.raises(errors.TransferError) as e:
    transfer.preflight(config_lib.resolve(c), str(tmp_path))
  msg = str(e.value)
  assert "w_dim: source 32, target 64" in msg and "mapping_layers: source 2, target 3" in msg
  assert "--config.model.w_dim=32" in msg and "--config.model.mapping_layers=2" in msg


def test_missing_source_and_missing_item(sources, tmp_path):
  with pytest.raises(errors.TransferError, match="does not exist.*demo_photo.*import_stylegan2"):
    transfer.preflight(make_config(16, source=str(tmp_path / "nowhere")), str(tmp_path / "w"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(errors.TransferError, match="holds no Orbax checkpoint"):
    transfer.preflight(make_config(16, source=str(tmp_path / "empty")), str(tmp_path / "w"))
  with pytest.raises(errors.TransferError, match="transfer.g_from='ema': .* has no item 'ema'.*or to '' to keep g at its initialisation"):
    transfer.preflight(make_config(16, source=sources[16][0], g_from="ema"), str(tmp_path / "w"))
  # A workdir that will resume is not checked: the source is not needed any more.
  (tmp_path / "w" / "checkpoints" / "3").mkdir(parents=True)
  transfer.preflight(make_config(16, source=str(tmp_path / "nowhere")), str(tmp_path / "w"))


def _launch(args, tmp_path):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  t0 = time.time()
  proc = subprocess.run([sys.executable, os.path.join(REPO, "launch.py"), *args,
                         "--workdir", str(tmp_path / "run")], env=env, capture_output=True, text=True,
                        timeout=300)
  return proc, time.time() - t0


def test_ffhq_to_anime_fails_at_once_without_paths(tmp_path):
  proc, _ = _launch(["--config", os.path.join(REPO, "configs/ffhq_to_anime.py")], tmp_path)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "this config needs a transfer source" in proc.stderr and "import_stylegan2" in proc.stderr
  proc, seconds = _launch(["--config", os.path.join(REPO, "configs/ffhq_to_anime.py"),
                           f"--config.transfer.source={tmp_path}/ffhq", f"--config.data.folder={tmp_path}"], tmp_path)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "does not exist" in proc.stderr and "import_stylegan2" in proc.stderr
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def _damaged_copy(tmp_path, damage):
  """A copy of the shipped source (never the shipped one) with its g_ema item damaged."""
  import shutil
  copy = tmp_path / "photo32"
  shutil.copytree(os.path.join(REPO, "pretrained/photo32"), copy)
  item = copy / "4000" / "g_ema"
  if damage == "metadata":
    (item / "_METADATA").unlink()
  elif damage == "garbage_metadata":
    (item / "_METADATA").write_text("garbage{")
  else:  # the item's largest data file, cut in half
    data = max((item / "ocdbt.process_0" / "d").iterdir(), key=lambda f: f.stat().st_size)
    os.truncate(data, data.stat().st_size // 2)
  return str(copy)


@pytest.mark.parametrize("damage,cause", [
    ("metadata", "{source}/4000/g_ema/_METADATA is missing or unreadable"),
    ("garbage_metadata", "JSONDecodeError: Expecting value"),
    ("truncated", 'ValueError: OUT_OF_RANGE: Error reading "'),
])
def test_damaged_source_fails_the_preflight_in_one_line(tmp_path, damage, cause):
  from configs import demo_anime
  c = demo_anime.get_config()
  c.transfer.source = os.path.join(REPO, "pretrained/photo32")
  transfer.preflight(config_lib.resolve(c), str(tmp_path / "w"))  # the intact source passes
  c.transfer.source = source = _damaged_copy(tmp_path, damage)
  with pytest.raises(errors.TransferError) as e:
    transfer.preflight(config_lib.resolve(c), str(tmp_path / "w"))
  msg = str(e.value)
  assert "\n" not in msg, msg
  assert msg.startswith(f"transfer.source {source}/4000: its item 'g_ema' cannot be read ("
                        f"{cause.format(source=source)}"), msg
  assert msg.endswith("the checkpoint is damaged or incomplete: copy it again, or point "
                      "--config.transfer.source at another checkpoint"), msg


def test_launch_from_a_truncated_source_writes_nothing(tmp_path):
  source = _damaged_copy(tmp_path, "truncated")
  proc, _ = _launch(["--config", os.path.join(REPO, "configs/demo_anime.py"),
                     f"--config.transfer.source={source}"], tmp_path)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: transfer.source {source}/4000: its item 'g_ema' "
                                                 f"cannot be read (ValueError: OUT_OF_RANGE"), proc.stderr[-3000:]
  assert not (tmp_path / "run").exists()
