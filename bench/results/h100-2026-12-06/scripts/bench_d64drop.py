import sys
sys.path.insert(0, "bench/results/h100-2026-12-06/scripts")
import patch_d64drop  # noqa: F401
from cuflash.cli import main
sys.exit(main(sys.argv[1:]))
