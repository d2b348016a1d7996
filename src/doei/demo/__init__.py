"""The demo behind ``doei demo`` (orchestration): :func:`run_demo` with :class:`DemoOptions`; ``MODELS``
lists the classifiers it can show (display name, config per mode, CAM refinement default)."""
from doei.demo.catalog import MODELS, RUNS
from doei.demo.runner import DemoOptions, run_demo

__all__ = ["run_demo", "DemoOptions", "MODELS", "RUNS"]
