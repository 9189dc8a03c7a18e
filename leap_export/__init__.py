"""leap-export: the build half (train, diagnose, export, verify, bench). Heavy stacks import lazily."""

__version__ = "0.1.0"
