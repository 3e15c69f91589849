"""Data: built-in synthetic face domains, tfds builders, and the input pipeline.

    cfg = default_config()                      # the `data` section of a run config
    prepared = prepare(cfg, resolution=64)      # once; reused afterwards
    it = make_iterator(prepared, global_batch=32, process_index=jax.process_index(),
                       process_count=jax.process_count(), seed=0)
    batch = next(it)                            # float32 (32 // P, 64, 64, 3) in [-1, 1]
    state = it.get_state()                      # save with the checkpoint; make_iterator(..., state=state)
"""
from gantl_jax.data.builders import DataError
from gantl_jax.data.pipeline import DataIterator, PreparedData, default_config, make_iterator, prepare

__all__ = ["DataError", "DataIterator", "PreparedData", "default_config", "make_iterator", "prepare"]
