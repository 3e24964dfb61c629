"""Control plane: the CLI, the config, the study storage and the coordinator.

``from sweeps import run_sweep, resume_sweep, load_sweep`` is the Python API
(``sweeps/api.py``); it is imported on first use, so ``import sweeps`` (and
``sweeps --help``) stays light.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["run_sweep", "resume_sweep", "load_sweep", "Sweep", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("run_sweep", "resume_sweep", "load_sweep", "Sweep"):
        from sweeps import api

        return getattr(api, name)
    raise AttributeError(f"module 'sweeps' has no attribute {name!r}")
