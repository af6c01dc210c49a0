"""`python -m xai_core ...`"""

import sys

from xai_core.cli import main

sys.exit(main())
