"""gunicorn settings of this bot, used by `ampalibe run` and by `gunicorn core:app`.

gunicorn reads ./gunicorn.conf.py by itself.  The defaults come from flask_ampalibe:
gthread workers, AMP_WORKERS / AMP_HOST / AMP_PORT from the environment or .env, and a
graceful shutdown that lets running handlers finish.  Override any gunicorn setting below.
"""
from flask_ampalibe.gunicorn_conf import *  # noqa: F401,F403

# threads = 16          # threads per worker process
# graceful_timeout = 60 # seconds running handlers get to finish on SIGTERM
# accesslog = "-"       # log every request to stdout
