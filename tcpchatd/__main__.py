"""`python -m tcpchatd`: the daemon."""

import sys

from .daemon import main

sys.exit(main())
