"""`python -m harness` is `lstmbench`."""
import sys

from .cli import main

sys.exit(main())
