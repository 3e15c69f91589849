"""Tests of benchmarks/official_transfer.py's way back to the official stylegan2-ada-pytorch (no
torch needed): our variables -> official state dict is the inverse of the importer's mapping, with
the official file's own names and layouts as the reference, and the constructor kwargs and FreezeD
count mean what ours do."""
import json
import os
import types

import numpy as np
import pytest

from benchmarks import official_transfer
from gantl_jax.cli import import_stylegan2 as imp
from test_import_stylegan2 import write_ada_pickle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "stylegan2_ada_pytorch_res16.npz")


@pytest.fixture(scope="module")
def official():
  """The fixture: official state dicts ('G.', 'D.' names) and constructor kwargs."""
  with np.load(FIXTURE) as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def imported(official, tmp_path_factory):
  path = write_ada_pickle(official, tmp_path_factory.mktemp("ada") / "network-snapshot.pkl")
  fmt, tree = imp.read_source(path)
  return imp.convert(tree, fmt)


def _official_sd(fix, net):
  # The FIR filters are not among our variables: the official modules construct them.
  return {k[len(net) + 1:]: v for k, v in fix.items()
          if k.startswith(net + ".") and not k.endswith("resample_filter")}


@pytest.mark.parametrize("net", ["G", "D"])
def test_to_official_gives_the_official_state_dict(official, imported, net):
  hp, _, g_ema, d, _ = imported
  ours = g_ema if net == "G" else d
  exported = official_transfer.to_official(ours)
  expected = _official_sd(official, net)
  assert sorted(exported) == sorted(expected)
  for name, value in expected.items():
    assert exported[name].shape == value.shape, name
    np.testing.assert_array_equal(exported[name], value, err_msg=name)
    assert exported[name].dtype == np.float32 and exported[name].flags.c_contiguous, name


def test_importer_reads_the_export_back_unchanged(imported):
  hp, _, g_ema, d, _ = imported
  for net, ours, rules in (("g", g_ema, imp._rules_ada_g()), ("d", d, imp._rules_ada_d())):
    report = imp._new_report("ada-pytorch")
    back = imp.map_tensors(official_transfer.to_official(ours), rules, imp._expected_shapes(hp, net), net, report)
    assert not (report["unmapped_source"] or report["unset_target"] or report["shape_mismatch"]), report
    flat_back, flat_ours = imp._flatten(back), imp._flatten(ours)
    assert sorted(flat_back) == sorted(flat_ours)
    for key in flat_ours:
      np.testing.assert_array_equal(flat_back[key], flat_ours[key], err_msg=key)


def test_official_kwargs_are_read_back_as_our_hparams(official, imported):
  hp = imported[0]
  g_kwargs, d_kwargs = official_transfer.official_kwargs(hp)
  # The fixture's constructor kwargs (what the official code was built with) say the same.
  fixture_g = json.loads(str(official["G_init_kwargs"]))
  for key in ("z_dim", "w_dim", "img_resolution", "img_channels", "c_dim"):
    assert g_kwargs[key] == fixture_g[key], key
  assert g_kwargs["synthesis_kwargs"]["channel_base"] == fixture_g["synthesis_kwargs"]["channel_base"]
  report = imp._new_report("ada-pytorch")
  as_source = lambda kw: types.SimpleNamespace(state={"_init_kwargs": kw})
  back = imp._hparams_ada(as_source(g_kwargs), as_source(d_kwargs), report)
  assert back == {k: v for k, v in hp.items() if k != "mbstd_grouping"}


@pytest.mark.parametrize("d_blocks", [1, 2])
def test_freezed_count_covers_our_frozen_d_blocks(official, d_blocks):
  # The official FreezeD counts D's layers from the image side; the layers are those with a weight
  # in the official state dict, block by block from the highest resolution.
  blocks = [16, 8]  # the fixture's D blocks above the b4 epilogue
  layers = [[k for k in _official_sd(official, "D") if k.startswith(f"b{r}.") and k.endswith(".weight")]
            for r in blocks]
  assert official_transfer.freezed_layers(d_blocks) == sum(len(ls) for ls in layers[:d_blocks])
  assert official_transfer.freezed_layers(2) == 7  # the demo: b32 (4 layers) and b16 (3)
