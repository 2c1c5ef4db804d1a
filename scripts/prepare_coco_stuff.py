"""Prepare the coco_stuff benchmark: same as `san prepare-data coco_stuff --raw RAW_DIR [--root ROOT]`."""

import sys

from san.apps.prepare_data import main

if __name__ == "__main__":
    sys.exit(main(["coco_stuff", *sys.argv[1:]]))
