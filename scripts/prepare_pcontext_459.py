"""Prepare the pcontext_459 benchmark: same as `san prepare-data pcontext_459 --raw RAW_DIR [--root ROOT]`."""

import sys

from san.apps.prepare_data import main

if __name__ == "__main__":
    sys.exit(main(["pcontext_459", *sys.argv[1:]]))
