"""Custom SQL on the bot's database through a ``Model`` subclass (spec §1.5)."""
from flask_ampalibe import Model


class Database(Model):
    @Model.verif_db
    def count_users(self):
        """How many people have written to the bot."""
        self.cursor.execute("SELECT COUNT(*) FROM amp_user")
        (count,) = self.cursor.fetchone()
        self.db.commit()
        return count
