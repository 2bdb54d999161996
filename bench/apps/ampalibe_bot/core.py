"""The same hello bot in Ampalibe 1.1.9's own style (send_text: send_message is deprecated there).

BENCH_STATE=none (system ``ampalibe_nostate`` of the harness) leaves out the handler's state read
and write: Ampalibe's temp store (TinyDB, one JSON file) corrupts as soon as two handler threads
write at once, and its SQL user table (one connection shared by all threads) ends in "database
is locked", so this variant is the only way to see what its server and client path can do.
"""
import os
import time

import ampalibe
from conf import Configuration

bot = ampalibe.init(Configuration())
SLEEP = float(os.environ.get("BENCH_SLEEP", "0"))
STATE = os.environ.get("BENCH_STATE", "temp")


@ampalibe.command("/")
def main(sender_id, cmd, **extends):
    mid = (extends.get("message") or {}).get("message", {}).get("mid", "")
    if SLEEP and not mid.startswith("m_w"):  # warm-up events skip the sleep
        time.sleep(SLEEP)
    if STATE != "none":
        bot.query.set_temp(sender_id, "n", (bot.query.get_temp(sender_id, "n") or 0) + 1)
    bot.chat.send_text(sender_id, "Hello " + mid)
