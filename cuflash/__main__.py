"""python -m cuflash: the same as the `cuflash` command."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
