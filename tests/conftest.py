"""Test set-up: 8 simulated CPU devices and a shared compilation cache, set before jax is imported.

The environment variables are inherited by the subprocesses that some tests start (launch.py,
multi-process jobs), so they compile once per program for the whole test session.
"""
import os
import tempfile
import threading

import pytest

# Backend optimisation level 0 halves XLA's CPU compile time of a train step (measured 19 s -> 9 s
# at 16 px); the tiny test models run fast enough either way, and results are the same programs.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA's CPU compile of a GAN step takes tens of seconds; identical programs (same config in several
# modules and subprocesses) are compiled once and then read from this cache.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "gantl_jax_test_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")



class BackgroundJob:
  """One subprocess job of a test module, run on the session's background thread."""

  def __init__(self, run):
    self._run = run
    self._done = threading.Event()
    self._result = None
    self._error = None

  def run(self):
    try:
      self._result = self._run()
    except BaseException as e:  # re-raised in the test that waits for it
      self._error = e
    finally:
      self._done.set()

  def wait(self):
    """The job's result once it has finished; its exception (e.g. a failed assertion) if it failed."""
    self._done.wait()
    if self._error is not None:
      raise self._error
    return self._result


@pytest.fixture(scope="session", autouse=True)
def background(request, tmp_path_factory):
  """{(module name, job name): BackgroundJob} of the selected test modules that define
  ``background_jobs(tmp_path_factory) -> {name: function}``.

  Jobs that run their own processes (multi-process jobs, the GPU check script) spend most of their
  time compiling in those processes or waiting for each other, while this process compiles on one
  core: they start with the session, one after another on one thread, and their tests wait for
  their results. The module's function runs here, in the main thread, before the thread starts;
  the functions it returns only start and watch subprocesses."""
  modules = []
  for item in request.session.items:
    module = getattr(item, "module", None)
    if hasattr(module, "background_jobs") and module not in modules:
      modules.append(module)
  jobs = {(m.__name__, name): BackgroundJob(run)
          for m in modules for name, run in m.background_jobs(tmp_path_factory).items()}
  thread = threading.Thread(target=lambda: [job.run() for job in jobs.values()], daemon=True)
  thread.start()
  yield jobs
  thread.join()  # each job has its own timeout; no process of it outlives the session
