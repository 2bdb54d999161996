import ampalibe
from ampalibe import Messenger, Model, Payload, translate, download_file
from ampalibe import Action, Logger
from ampalibe import webserver
from ampalibe.ui import QuickReply

chat = Messenger()
query = Model()


@ampalibe.before_receive()
def before_process(sender_id, cmd, **ext):
    chat.send_action(sender_id, Action.mark_seen)
    if cmd == "blocked":
        return False
    return True


@ampalibe.after_receive()
def after_process(sender_id, cmd, res, **ext):
    query.set_temp(sender_id, "last", f"{cmd}|{res}")


@ampalibe.command('/')
def main(sender_id, cmd, lang, **ext):
    if cmd.webhook == "attachments":
        size = len(open(download_file(cmd, f"assets/private/{sender_id}.bin"), "rb").read())
        chat.send_text(sender_id, f"attachment of {size} bytes")
        return "attachment"
    if lang is None:
        chat.send_quick_reply(
            sender_id,
            [QuickReply(title="Francais", payload=Payload("/lang", value="fr")),
             QuickReply(title="English", payload=Payload("/lang", value="en"))],
            "Choose your language",
        )
        return "asked"
    chat.send_text(sender_id, translate("hello_world", lang))
    return "greeted"


@ampalibe.command('/lang')
def set_lang(sender_id, value, **ext):
    query.set_lang(sender_id, value)
    chat.send_text(sender_id, translate("hello_world", value))
    return "lang " + value


@ampalibe.command('/kind')
def kind(sender_id, cmd, **ext):
    chat.send_text(sender_id, f"webhook {cmd.webhook}")
    return cmd.webhook


@ampalibe.command('/notify')
def notify(sender_id, cmd, **ext):
    chat.send_text(sender_id, f"token {cmd.token} from {cmd.webhook}")
    return "notified"


@ampalibe.event('reaction')
def on_reaction(sender_id, watermark, message, **ext):
    Logger.info("reaction %s", watermark)
    chat.send_text(sender_id, f"reaction {watermark}")


@webserver.get('/items/{item_id}')
def read_item(item_id: int):
    return {"item_id": item_id, "type": type(item_id).__name__}


@webserver.get('/state/{user_id}')
def state(user_id: str):
    return {"last": query.get_temp(user_id, "last"), "action_lang": query.get(user_id, "action", "lang")}
