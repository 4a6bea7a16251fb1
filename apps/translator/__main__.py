"""`python -m apps.translator ...` runs the `translator` command."""

import sys

from apps.translator.cli import main

sys.exit(main())
