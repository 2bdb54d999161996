"""The benchmark's hello bot: read and write user state, send one reply (mid in the text)."""
import os
import time

import flask_ampalibe as ampalibe
from conf import Configuration

bot = ampalibe.init(Configuration())
SLEEP = float(os.environ.get("BENCH_SLEEP", "0"))


def incoming_mid(extends) -> str:
    message = extends.get("message")
    if isinstance(message, dict):
        inner = message.get("message")
        return str((inner if isinstance(inner, dict) else message).get("mid", ""))
    return str(getattr(message, "mid", "") or "")


@ampalibe.command("/")
def main(sender_id, cmd, **extends):
    mid = incoming_mid(extends)
    if SLEEP and not mid.startswith("m_w"):  # warm-up events skip the sleep
        time.sleep(SLEEP)
    bot.query.set_temp(sender_id, "n", (bot.query.get_temp(sender_id, "n") or 0) + 1)
    bot.chat.send_message(sender_id, "Hello " + mid)


app = ampalibe.webserver
