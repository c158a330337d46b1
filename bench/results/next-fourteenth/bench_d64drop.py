import sys
sys.path.insert(0, "bench/results/next-fourteenth")
import patch_d64drop  # noqa: F401
from cuflash.cli import main
sys.exit(main(sys.argv[1:]))
