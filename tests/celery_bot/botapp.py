"""A Flask-native bot with an app factory, for the ``celery -A celery_worker worker`` way.

Configured from the environment (``BOT_*``) by tests/test_celery.py.  Each message is echoed
as ``"<pid> <text>"`` so the test sees which process handled it; ``slow SECONDS`` first sleeps.
"""
import os
import time

from flask import Flask

import flask_ampalibe

bot = flask_ampalibe.Ampalibe(router=flask_ampalibe.Router())


@bot.command("/")
def echo(sender_id, cmd, redelivered, **extends):
    words = str(cmd).split()
    if words[:1] == ["slow"]:
        time.sleep(float(words[1]))
    bot.chat.send_text(sender_id, f"{os.getpid()} {redelivered} {cmd}")


def create_app():
    app = Flask(__name__, instance_path=os.environ["BOT_INSTANCE"])
    app.config.update(
        AMPALIBE_ACCESS_TOKEN="test-page-token",
        AMPALIBE_VERIF_TOKEN="test-verify-token",
        AMPALIBE_APP_SECRET="test-app-secret",
        AMPALIBE_GRAPH_URL=os.environ["BOT_GRAPH_URL"],
        AMPALIBE_DATABASE_URL=os.environ["BOT_DATABASE_URL"],
        AMPALIBE_EXECUTOR="celery",
        AMPALIBE_CELERY_BROKER_URL=os.environ["BOT_BROKER_URL"],
        AMPALIBE_LEASE_SECONDS=2,
        AMPALIBE_POLL_SECONDS=0.3,
    )
    bot.init_app(app)
    return app
