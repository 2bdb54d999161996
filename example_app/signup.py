"""Sign-up: a conversation driven by actions, with temporary data between the steps.

A second module of the project calling ``ampalibe.init``: it gets the same bot (spec §1.6.2).
"""
import flask_ampalibe as ampalibe
from conf import Configuration

bot = ampalibe.init(Configuration())
chat = bot.chat
query = bot.query


@ampalibe.command("/signup")
def signup(sender_id, cmd, **extends):
    chat.send_message(sender_id, "What is your name?")
    query.set_action(sender_id, "/signup/name")


@ampalibe.action("/signup/name")
def get_name(sender_id, cmd, **extends):
    query.set_temp(sender_id, "name", cmd)
    chat.send_message(sender_id, f"Nice to meet you, {cmd}. Your e-mail address?")
    query.set_action(sender_id, "/signup/email")


@ampalibe.action("/signup/email")
def get_email(sender_id, cmd, **extends):
    if "@" not in cmd:
        # the action stays set: the next message comes back here
        chat.send_message(sender_id, f"{cmd} is not an e-mail address; try again.")
        return
    query.set_action(sender_id, None)  # clear it, or every message would come back here
    name = query.get_temp(sender_id, "name")
    query.del_temp(sender_id, "name")
    chat.send_message(sender_id, f"Welcome {name}! We will write to {cmd}.")
