"""``python -m latentds.cli`` (same as ``latentds``)."""

import sys

from .entry import main

sys.exit(main())
