"""`python -m sdlora ...` runs the command line."""

import sys

from sdlora.cli import main

sys.exit(main())
