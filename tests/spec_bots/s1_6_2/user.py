import flask_ampalibe as ampalibe
from conf import Configuration
bot = ampalibe.init(Configuration())
chat = bot.chat

class User:

    @ampalibe.action('/get_username')
    def username(sender_id, cmd, **extends):
        bot.chat.send_message(sender_id, 'OK ' + cmd)
        bot.query.set_action(sender_id, None)
