"""The bot of tests/test_delivery.py and tests/test_operate_cli.py, served by real processes.

Written in the spec's style; the tests copy it into a temporary folder with the project
template's ``conf.py`` and configure it through the environment.

Every message is appended to the sender's ``seen`` list (temporary data: safe without a lock,
since one user's events are handled one at a time) and echoed through the Send API.  A text
``slow SECONDS TAG`` first sleeps; ``gate FILE TAG`` first waits until ``FILE`` exists in
the project folder (at most a minute); ``boom`` raises; ``gc`` is answered with the process's
garbage collector threshold (``gc 50000``), ``nice`` with the handler thread's nice value.  A text that starts with ``count``
first adds one to the sender's ``count`` (and notes ``counted``), then goes on with the rest.  Each run also appends a JSON line to
``markers.jsonl`` (short ``O_APPEND`` writes from several processes do not interleave).

With ``BOT_ASYNC=1`` in the environment the same handler is an ``async def`` (it awaits its
sleeps, the database through ``ampalibe.offload`` and the Send API through ``chat.aio``), so
the bot's events run on the worker's event loop.
"""
import asyncio
import gc
import json
import os
import threading
import time

import flask_ampalibe as ampalibe
from conf import Configuration

bot = ampalibe.init(Configuration())
chat = bot.chat
query = bot.query

HERE = os.path.dirname(os.path.abspath(__file__))
MARKERS = os.path.join(HERE, "markers.jsonl")


def mark(phase, sender_id, cmd, redelivered):
    """Note that a handler reached ``phase``, with the process that runs it."""
    line = json.dumps({"phase": phase, "user": sender_id, "cmd": cmd, "redelivered": redelivered,
                       "pid": os.getpid(), "time": time.time()})
    with open(MARKERS, "a", encoding="utf-8") as markers:
        markers.write(line + "\n")


def main(sender_id, cmd, redelivered, **extends):
    cmd = str(cmd)
    mark("started", sender_id, cmd, redelivered)
    words = cmd.split()
    if words[:1] == ["count"]:
        query.set_temp(sender_id, "count", (query.get_temp(sender_id, "count") or 0) + 1)
        mark("counted", sender_id, cmd, redelivered)
        words = words[1:]
    if words[:1] == ["slow"]:
        time.sleep(float(words[1]))
    if words[:1] == ["gate"]:
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(HERE, words[1])) and time.monotonic() < deadline:
            time.sleep(0.05)
    if cmd == "boom":
        raise RuntimeError("boom: the handler failed on purpose")
    if cmd == "gc":
        cmd = f"gc {gc.get_threshold()[0]}"
    if cmd == "nice":
        cmd = f"nice {os.getpriority(os.PRIO_PROCESS, threading.get_native_id())}"
    seen = query.get_temp(sender_id, "seen") or []
    seen.append(cmd)
    query.set_temp(sender_id, "seen", seen)
    chat.send_message(sender_id, cmd)
    mark("finished", sender_id, cmd, redelivered)


async def async_main(sender_id, cmd, redelivered, **extends):
    cmd = str(cmd)
    mark("started", sender_id, cmd, redelivered)
    words = cmd.split()
    if words[:1] == ["count"]:
        count = await ampalibe.offload(query.get_temp, sender_id, "count") or 0
        await ampalibe.offload(query.set_temp, sender_id, "count", count + 1)
        mark("counted", sender_id, cmd, redelivered)
        words = words[1:]
    if words[:1] == ["slow"]:
        await asyncio.sleep(float(words[1]))
    if words[:1] == ["gate"]:
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(HERE, words[1])) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    if cmd == "boom":
        raise RuntimeError("boom: the handler failed on purpose")
    if cmd == "gc":
        cmd = f"gc {gc.get_threshold()[0]}"
    if cmd == "nice":
        cmd = f"nice {os.getpriority(os.PRIO_PROCESS, threading.get_native_id())}"
    seen = await ampalibe.offload(query.get_temp, sender_id, "seen") or []
    seen.append(cmd)
    await ampalibe.offload(query.set_temp, sender_id, "seen", seen)
    await chat.aio.send_message(sender_id, cmd)
    mark("finished", sender_id, cmd, redelivered)


ampalibe.command("/")(async_main if os.environ.get("BOT_ASYNC") else main)

app = ampalibe.webserver
