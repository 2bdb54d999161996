import flask_ampalibe as ampalibe
from conf import Configuration
from model import Database

req = Database(Configuration())

bot = ampalibe.init(Configuration())
chat = bot.chat

@ampalibe.command('/')
def main(sender_id, cmd, **extends):
    print(req.get_list_users())
