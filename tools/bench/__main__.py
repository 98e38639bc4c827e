"""``python -m tools.bench [OPTIONS]``: run the side-by-side benchmark."""
import sys

from tools.bench.runner import main

if __name__ == "__main__":
    sys.exit(main())
