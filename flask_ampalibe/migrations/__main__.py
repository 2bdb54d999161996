"""``python -m flask_ampalibe.migrations revision "add a column to amp_inbox" [--autogenerate]``:
write the next revision file of flask_ampalibe's own schema (for flask_ampalibe's developers)."""
from __future__ import annotations

import sys

from ..schema import main

sys.exit(main())
