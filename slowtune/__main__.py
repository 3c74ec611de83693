import sys

from slowtune.cli import main

sys.exit(main())
