"""flask_ampalibe's Alembic migrations (run them with ``ampalibe db upgrade``; see
:mod:`flask_ampalibe.schema`).  ``python -m flask_ampalibe.migrations revision "what changes"``
writes a new revision file in ``versions/``."""
