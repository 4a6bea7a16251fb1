"""`python -m apps.demo`: the demo page (see `apps.demo.cli`)."""

import sys

from apps.demo.cli import main

sys.exit(main())
