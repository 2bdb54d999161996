import flask_ampalibe as ampalibe
from flask_ampalibe import webserver
from conf import Configuration

bot = ampalibe.init(Configuration())

@webserver.get('/test')
def test():
    return 'Hello, test'

@ampalibe.command('/')
def main(sender_id, cmd, **extends):
    bot.chat.send_message(sender_id, "Hello, Ampalibe")
