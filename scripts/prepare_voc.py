"""Prepare the voc benchmark: same as `san prepare-data voc --raw RAW_DIR [--root ROOT]`."""

import sys

from san.apps.prepare_data import main

if __name__ == "__main__":
    sys.exit(main(["voc", *sys.argv[1:]]))
