"""`python -m tcpchatd`: the daemon."""

import sys

from .service.main import main

sys.exit(main())
