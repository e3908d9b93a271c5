"""``python -m otcfm``: the command line (also the entry point of ``torchrun -m otcfm``)."""

import sys

from otcfm.cli import main

if __name__ == "__main__":
    sys.exit(main())
