import flask_ampalibe as ampalibe
from conf import Configuration

bot = ampalibe.init(Configuration())
chat = bot.chat
query = bot.query

@ampalibe.command('/')
def main(sender_id, cmd, **extends):
    chat.send_message(sender_id, 'Enter a number')
    query.set_action(sender_id, '/get_number')

@ampalibe.action('/get_number')
def get_number(sender_id, cmd, **extends):
    query.set_action(sender_id, None) # clear current action
    if cmd.isdigit():
        if int(cmd) % 2 == 0:
            chat.send_message(sender_id, 'even number')
        else:
            chat.send_message(sender_id, 'odd number')
    else:
        chat.send_message(sender_id, f'{cmd} is not a number')
