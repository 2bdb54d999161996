"""The bot of tests/test_dashboard_served.py, served by real gunicorn processes.

Written in the spec's style; the tests copy it into a temporary folder with the project
template's ``conf.py`` and configure it through the environment (``AMP_DASHBOARD_PASSWORD``,
``AMP_METRICS_TOKEN``).  A text starting with ``flaky`` fails until a file named ``fixed``
exists in the project folder; every other text is kept as the temporary value ``last`` and
echoed through the Send API.
"""
import os

import flask_ampalibe as ampalibe
from conf import Configuration

bot = ampalibe.init(Configuration())
HERE = os.path.dirname(os.path.abspath(__file__))


@ampalibe.command("/")
def main(sender_id, cmd, **extends):
    text = str(cmd)
    if text.startswith("flaky") and not os.path.exists(os.path.join(HERE, "fixed")):
        raise RuntimeError("flaky: this handler fails until the file 'fixed' exists")
    bot.query.set_temp(sender_id, "last", text)
    bot.chat.send_text(sender_id, "ok: " + text)


app = ampalibe.webserver
