"""``python -m flask_ampalibe.cli``: the ``ampalibe`` command without its console script."""
from . import main

main()
