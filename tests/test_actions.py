"""The training loop's periodic actions (gantl_jax/actions.py): on which steps each acts, and the
stop signals. The actions' files and messages are pinned by test_loop.py and test_exit_paths.py."""
import os
import signal

import numpy as np
import pytest

from gantl_jax.training import actions


class Counting(actions.PeriodicAction):
  def __init__(self, every):
    super().__init__(every)
    self.steps = []

  def run(self, step, state):
    self.steps.append(step)


def log_metrics(every, last_step):
  return actions.LogMetrics(every, last_step, start_step=0, batch=8, mode="jit", path="", write=False,
                            monitor=None, manager=None)


@pytest.mark.parametrize("every, expected", [(0, []), (1, list(range(1, 11))), (4, [4, 8])])
def test_an_action_acts_on_the_steps_its_interval_divides(every, expected):
  action = Counting(every)
  for step in range(1, 11):
    action(step, None)
  assert action.steps == expected


def test_the_log_also_syncs_at_the_last_step():
  log = log_metrics(4, 10)
  assert [s for s in range(1, 11) if log.due(s)] == [4, 8, 10]


def test_a_stop_signal_is_a_request_checked_between_steps_and_the_handlers_are_restored():
  previous = signal.getsignal(signal.SIGTERM)
  stop = actions.StopSignals(log_metrics(4, 10))
  with stop:
    assert all(stop.due(s) for s in range(1, 11))  # a single process checks every step
    assert not stop(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop(2)
  assert signal.getsignal(signal.SIGTERM) is previous


def test_a_diverged_loss_is_named_by_step_and_phase():
  finite = {"g_loss": 1.0, "pl_penalty": np.nan, "d_loss": 1.0, "r1_penalty": np.nan}
  assert actions.first_non_finite([finite, finite], 10) is None
  fetched = [finite, {**finite, "d_loss": np.nan}, {**finite, "r1_penalty": np.inf}]
  assert actions.first_non_finite(fetched, 10) == "step 12, phase D main (d_loss=nan)"
  assert actions.summarise(fetched) == {"g_loss": 1.0, "pl_penalty": None, "d_loss": 1.0, "r1_penalty": None}
