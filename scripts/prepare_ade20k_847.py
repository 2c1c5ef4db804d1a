"""Prepare the ade20k_847 benchmark: same as `san prepare-data ade20k_847 --raw RAW_DIR [--root ROOT]`."""

import sys

from san.apps.prepare_data import main

if __name__ == "__main__":
    sys.exit(main(["ade20k_847", *sys.argv[1:]]))
