"""The benchmark's hello bot: read and write user state, send one reply (mid in the text).

BENCH_ASYNC=1 (system ``flask_ampalibe_async`` of the harness) makes the same handler an
``async def``: it awaits its sleep, runs the state read/write through ``ampalibe.offload`` and
sends through ``bot.chat.aio``.
"""
import asyncio
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


def main(sender_id, cmd, **extends):
    mid = incoming_mid(extends)
    if SLEEP and not mid.startswith("m_w"):  # warm-up events skip the sleep
        time.sleep(SLEEP)
    bot.query.set_temp(sender_id, "n", (bot.query.get_temp(sender_id, "n") or 0) + 1)
    bot.chat.send_message(sender_id, "Hello " + mid)


def count(sender_id):
    bot.query.set_temp(sender_id, "n", (bot.query.get_temp(sender_id, "n") or 0) + 1)


async def async_main(sender_id, cmd, **extends):
    mid = incoming_mid(extends)
    if SLEEP and not mid.startswith("m_w"):
        await asyncio.sleep(SLEEP)
    await ampalibe.offload(count, sender_id)
    await bot.chat.aio.send_message(sender_id, "Hello " + mid)


ampalibe.command("/")(async_main if os.environ.get("BENCH_ASYNC") else main)

if os.environ.get("BENCH_NOGOV"):  # system flask_ampalibe_nogov: no CPU governor
    bot.state.executor.govern = False


app = ampalibe.webserver
