# importing another file contains ampalibe decorator
import user

import flask_ampalibe as ampalibe
from conf import Configuration
from flask_ampalibe import Payload

bot = ampalibe.init(Configuration())
chat = bot.chat

@ampalibe.command('/')
def main(sender_id, cmd, **extends):
    buttons = [
        {
            "type": "postback",
            "title": "Dashboard",
            "payload": '/login/admin'
        }
    ]
    chat.send_button(sender_id, buttons, 'What do you want to do?')

class Admin:

    @ampalibe.command('/login/admin')
    def login(sender_id, **extends):
        """
            function is always calling when payload or message start by /login/admin
        """
        bot.query.set_action(sender_id, '/get_username')
        bot.chat.send_message(sender_id, 'Enter your username')
