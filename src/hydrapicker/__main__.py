"""``python -m hydrapicker``: the command line (also what ``torchrun -m hydrapicker`` starts on each rank)."""

import sys

from hydrapicker.cli import main

if __name__ == "__main__":
    sys.exit(main())
