"""``python -m leap_export``: the ``leap-export`` command (for environments without the console script)."""

from leap_export.cli import main

if __name__ == "__main__":
    main()
