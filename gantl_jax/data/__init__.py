"""Data: built-in synthetic face domains, tfds builders, and the input pipeline.

    cfg = base.get_config().data                # gantl_jax/defaults.py: every key, documented
    prepared = prepare(cfg, resolution=64)      # once; reused afterwards
    it = make_iterator(prepared, global_batch=32, process_index=jax.process_index(),
                       process_count=jax.process_count(), seed=0)
    batch = next(it)                            # float32 (32 // P, 64, 64, 3) in [-1, 1]
    state = it.get_state()                      # save with the checkpoint; make_iterator(..., state=state)
"""
import importlib

# Imported lazily: `python -m gantl_jax.data.synthetic` must not pre-import its own
# module (runpy warns), and the renderer alone needs neither tfds nor PIL's plugins.
_EXPORTS = {
    "DataIterator": "pipeline",
    "PreparedData": "pipeline",
    "check_config": "checks",
    "make_iterator": "pipeline",
    "prepare": "pipeline",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f"gantl_jax.data.{_EXPORTS[name]}"), name)
  raise AttributeError(f"module 'gantl_jax.data' has no attribute {name!r}")
