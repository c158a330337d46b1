"""python -m cuflash.bench [options]"""
import sys

from .cli import main

sys.exit(main())
