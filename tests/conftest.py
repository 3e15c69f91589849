"""Test set-up: 8 simulated CPU devices and a shared compilation cache, set before jax is imported.

The environment variables are inherited by the subprocesses that some tests start (launch.py,
multi-process jobs), so they compile once per program for the whole test session.
"""
import os
import queue
import tempfile
import threading

import pytest

# Compiling is most of the suite's time, so XLA:CPU is told to compile fast rather than run fast:
# backend optimisation level 0 halves the compile time of a train step (measured 19 s -> 9 s at
# 16 px), and the elemental fusion emitters in place of the newer fusion emitters halve it again
# (configs/tiny.py's step: 8.9 -> 4.0 CPU seconds; its steps run 86 -> 106 ms, and agree to float
# rounding). Every test and subprocess compiles with the same options, so runs compared bit for
# bit see the same programs.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
    + " --xla_cpu_use_fusion_emitters=false"
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


class BackgroundJobs(dict):
  """{(module name, job name): BackgroundJob}, run one after another on one daemon thread."""

  def __init__(self):
    super().__init__()
    self._queue = queue.Queue()
    threading.Thread(target=self._work, daemon=True).start()

  def _work(self):
    while True:
      self._queue.get().run()
      self._queue.task_done()

  def submit(self, module, tmp_path_factory):
    """Queues the jobs of ``module`` (its ``background_jobs(tmp_path_factory)``, called here)."""
    for name, run in module.background_jobs(tmp_path_factory).items():
      self[(module.__name__, name)] = job = BackgroundJob(run)
      self._queue.put(job)

  def join(self):
    self._queue.join()  # each job has its own timeout; no process of it outlives the session


@pytest.fixture(scope="session")
def background():
  """The subprocess jobs of the modules run so far (`BackgroundJobs`); their tests wait for them."""
  jobs = BackgroundJobs()
  yield jobs
  jobs.join()


@pytest.fixture(scope="module", autouse=True)
def _start_background_jobs(request, tmp_path_factory):
  """A module that defines ``background_jobs(tmp_path_factory) -> {name: function}`` has its jobs
  started when its first test starts, in the process (xdist worker) that runs the module.

  The jobs run their own processes (launch.py, multi-process jobs, the GPU check script), which
  spend most of their time compiling in those processes or waiting for each other: they run on a
  background thread while the module's other tests run here, and the tests that need a job's
  result wait for it. The module's function runs here, in the main thread; the functions it
  returns only start and watch subprocesses."""
  if hasattr(request.module, "background_jobs"):
    request.getfixturevalue("background").submit(request.module, tmp_path_factory)


def pytest_collection_modifyitems(config, items):
  """Modules with background jobs first, then modules with ``slow`` tests, then the rest, each
  group in collection order: with pytest-xdist handing out whole files (``--dist loadfile
  --no-loadscope-reorder``), the long subprocess jobs overlap the in-process tests and the last
  files to run are short ones, so neither worker waits alone at the end."""
  def rank(item):
    module = getattr(item, "module", None)
    if hasattr(module, "background_jobs"):
      return 0
    return 1 if module in slow_modules else 2
  slow_modules = {getattr(item, "module", None) for item in items if item.get_closest_marker("slow")}
  items[:] = sorted(items, key=rank)  # stable: the order within a module is kept
