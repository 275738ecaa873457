"""Entry point: ``python bench.py run|plan|report|list ...`` (see ``python bench.py --help``)."""
import sys

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
