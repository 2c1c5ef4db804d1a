"""``python -m san <command>`` (also ``torchrun ... -m san train ...``): the ``san`` command."""

import sys

from san.apps.cli import main

sys.exit(main())
