import flask_ampalibe as ampalibe
from conf import Configuration

bot = ampalibe.init(Configuration())

@ampalibe.command('/')
def main(sender_id, cmd, **extends):
    bot.chat.send_message(sender_id, "Hello, Ampalibe")

"""
    if the message received start with '/eat'
    the code enter here, not in main
    ex: /eat 1 jackfruit

    in cmd value, /eat is removed
"""

@ampalibe.command('/eat')
def spec(sender_id, cmd, **extends):
    print(sender_id)  # 1555554455
    print(cmd)  # '1 jackfruit'

"""
    ex: /drink_a_jackfruit_juice
"""

@ampalibe.command('/drink_a_jackfruit_juice')
def spec(sender_id, cmd, **extends):
    print(sender_id)  # 1555554455
    print(cmd)  # a empty value cause the key is removed
