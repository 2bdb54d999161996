import flask_ampalibe as ampalibe
# import the Payload class
from flask_ampalibe import Payload
from conf import Configuration

bot = ampalibe.init(Configuration())
chat = bot.chat

@ampalibe.command('/')
def main(sender_id, cmd, **extends):
    quick_rep = [
        {
            "content_type": "text",
            "title": 'Angela',
            # Customise your payload
            "payload": Payload('/member', name='Angela', ref='2016-sac')
        },
        {
            "content_type": "text",
            "title": 'Rivo',
            # Customise your payload
            "payload": Payload('/member', name='Rivo')
        }
    ]
    chat.send_quick_reply(sender_id, quick_rep, 'Who?')

@ampalibe.command('/member')
def get_membre(sender_id, cmd, name, **extends):
    """
        You can receive the arguments payload in extends or
        specifying the name of the argument in the parameters
    """
    chat.send_message(sender_id, "Hello " + name)

    # if the arg is not defined in the list of parameters,
    # it is put in the extends variable
    if extends.get('ref'):
        chat.send_message(sender_id, 'your ref is ' + extends.get('ref'))
