"""`python -m resnet_edge.cli` (torchrun starts training this way)."""

import sys

from . import main

sys.exit(main())
