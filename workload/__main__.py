"""`python -m workload run|export` (docs/workload.md)."""

import sys

from .generator import main

sys.exit(main())
