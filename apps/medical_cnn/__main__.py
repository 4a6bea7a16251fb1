"""`python -m apps.medical_cnn ...` runs the `medical-cnn` command line."""

import sys

from apps.medical_cnn.cli import main

sys.exit(main())
