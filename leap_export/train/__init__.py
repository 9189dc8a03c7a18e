"""LEAP distillation training: the loss (``losses``), the cached teacher (``teacher``), the loop (``trainer``).

Importing this package is cheap; torch is imported by the submodules that need it.
"""

from leap_export.train.config import LeapConfig

__all__ = ["LeapConfig"]
