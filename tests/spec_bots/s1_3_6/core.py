"""
Suppose that a logo file is in "assets/public/iTeamS.png" and that we must send it via
url
"""

import flask_ampalibe as ampalibe
from conf import Configuration

bot = ampalibe.init(Configuration())
chat = bot.chat

@ampalibe.command('/')
def main(sender_id, cmd, **extends):

    """
        to get a file in assets/public folder,
        the route is <adresse>/asset/<file>
    """

    chat.send_file_url(
        sender_id,
        Configuration.APP_URL + '/asset/iTeamS.png',
        filetype='image'
    )
