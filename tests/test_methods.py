"""The method interface of the train step (gantl_jax/methods.py): what the registry declares, and a
new method entering the step through its hooks alone."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from configs import tiny
from gantl_jax.fewshot import augment
from gantl_jax import config as config_lib
from gantl_jax.fewshot import registry as methods
from gantl_jax.training import state as state_lib
from gantl_jax.training import steps


def make_config(**sections):
  c = tiny.get_config()
  c.model.update(resolution=8, z_dim=16, w_dim=16, channel_base=64, channel_max=16, mbstd_group_size=1)
  c.train.update(batch_size=4, pl_weight=0.0)
  for name, values in sections.items():
    c[name].update(values)
  return config_lib.resolve(c)


def names(config):
  return [m.name for m in methods.active(config)]


def test_the_registry_declares_the_flags_frozen_networks_and_extras_of_the_enabled_methods():
  assert steps.StepFlags._fields == ("g_reg", "d_reg", "anchor")
  plain = make_config()
  assert names(plain) == [] and steps.frozen_networks(plain) == {} and methods.initial_extras(plain) == {}
  both = make_config(transfer=dict(source="unused"),
                     fewshot=dict(cdc_weight=1.0, cdc_anchor_interval=3, ewc_weight=1.0,
                                  adapter="kernel_modulation"),
                     augment=dict(kind="ada", p=0.25))
  assert names(both) == ["cdc", "cdc_anchors", "ewc", "ada", "adapters"]
  assert steps.frozen_networks(both) == {"g": "g_ema"}
  assert methods.initial_extras(both) == augment.initial_extras(both.augment)
  assert [i for i in range(7) if steps.schedule(i, both).anchor] == [0, 3, 6]
  assert names(make_config(augment=dict(kind="diffaug"))) == ["diffaug"]
  assert names(make_config(augment=dict(kind="fixed", p=0.5))) == ["ada"]


def test_a_flag_of_a_method_the_config_leaves_off_is_refused():
  config = make_config()
  nets = state_lib.build_networks(config)
  state = jax.eval_shape(lambda: state_lib.init_state(nets, 0))
  reals = jax.ShapeDtypeStruct((4, 8, 8, 3), jnp.float32)
  train_step = steps.make_train_step(config, nets)
  with pytest.raises(ValueError, match="flag of method 'cdc_anchors', which this config leaves off"):
    jax.eval_shape(lambda s, x: train_step(s, x, flags=steps.StepFlags(anchor=True)), state, reals)


TOY_WEIGHT = 0.25
TOY_LEAF = "synthesis/b8/torgb/bias"


def toy_terms(ctx, g_vars):
  """A term linear in one leaf: its gradient adds TOY_WEIGHT to that leaf's, nothing elsewhere."""
  leaf = traverse_util.flatten_dict(g_vars["params"], sep="/")[TOY_LEAF]
  return {"toy_term": (TOY_WEIGHT * jnp.sum(leaf), jnp.float32(7.0))}


def toy_after_step(ctx, extras, metrics):
  return {**extras, "toy_steps": ctx.state.step + 1}, {"toy_saw_d_loss": metrics["d_loss"]}


def test_a_new_method_enters_the_step_through_its_hooks_alone(monkeypatch):
  """A method registered with a G term and an after-step hook: with SGD of rate 1, G's update
  moves by exactly the term's gradient (TOY_WEIGHT on its leaf, 0 elsewhere), and its metrics and
  extras come out of the step."""
  config = make_config()
  nets = state_lib.build_networks(config)._replace(g_tx=optax.sgd(1.0), d_tx=optax.sgd(1.0))
  state = jax.jit(lambda: state_lib.init_state(nets, 0))()
  reals = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 3)), jnp.float32)
  base, base_metrics = jax.jit(steps.make_train_step(config, nets))(state, reals)

  toy = methods.Method("toy", lambda config: True, g_terms=toy_terms, after_step=toy_after_step)
  monkeypatch.setattr(methods, "REGISTRY", methods.REGISTRY + (toy,))
  new, metrics = jax.jit(steps.make_train_step(config, nets))(state, reals)

  assert float(metrics["toy_term"]) == 7.0
  assert float(metrics["toy_saw_d_loss"]) == float(metrics["d_loss"])
  assert int(new.extras["toy_steps"]) == 1
  assert float(metrics["g_loss"]) == pytest.approx(float(base_metrics["g_loss"]), rel=1e-6)
  before = traverse_util.flatten_dict(base.g.params, sep="/")
  after = traverse_util.flatten_dict(new.g.params, sep="/")
  for path, x in before.items():
    shift = TOY_WEIGHT if path == TOY_LEAF else 0.0
    # Measured: equal to the last bit; the tolerance allows a rounding of the subtraction.
    np.testing.assert_allclose(np.asarray(x) - np.asarray(after[path]), shift, atol=1e-6, err_msg=path)
