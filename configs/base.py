"""Defaults for every knob of a run; other configs start from this one.

The defaults live in the package (``gantl_jax/defaults.py``, where every key is documented), so
that an installed gantl_jax can fill the keys an older run's ``config.json`` lacks
(``gantl_jax.config.upgrade``). A config file starts from them with
``from configs import base; c = base.get_config()``.
"""
from gantl_jax.defaults import get_config

__all__ = ["get_config"]
