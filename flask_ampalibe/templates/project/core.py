"""The bot.  Every message your Page receives arrives in a function of this file.

Serve it with ``ampalibe run`` (gunicorn) or ``ampalibe run --dev`` (reloads when you save).
"""
import flask_ampalibe as ampalibe
from conf import Configuration

bot = ampalibe.init(Configuration())
chat = bot.chat
query = bot.query


@ampalibe.command("/")
def main(sender_id, cmd, **extends):
    """Receives every message that no other command or pending action claims.

    :param sender_id: the Page-scoped id of the person who wrote.
    :param cmd: the text of the message, or the payload of the button they tapped.
    :param extends: everything else: the raw ``message``, payload arguments, ...
    """
    chat.send_message(sender_id, "Hello, Ampalibe")


# The WSGI application, for `gunicorn core:app` or any other WSGI server.
app = ampalibe.webserver
