"""A demo bot: the spec's features working together.

- ``/`` (any message): a menu of quick replies whose payloads are ``Payload`` objects;
- ``/catalog``: 25 products in a generic template, 10 per page (``next=True``), each with a
  button whose payload carries the product's id and name;
- ``/product`` and ``/buy``: the payload arguments arrive as parameters; the cart is kept in
  temporary data (``set_temp`` / ``get_temp`` / ``del_temp``);
- ``/signup``: a conversation driven by actions (signup.py, another module calling ``init``);
- ``/logo``: a file from ``assets/public`` sent by URL (``AMP_URL/asset/logo.png``);
- ``/member``: the spec's payload example (a named argument and one in ``extends``);
- ``GET /stats``: a custom endpoint on ``ampalibe.webserver``, answered with SQL run through a
  ``Model`` subclass (model.py).

Serve it like any project: ``cd example_app && ampalibe run`` (see README.rst).
"""
import flask_ampalibe as ampalibe
from flask_ampalibe import Payload, webserver
from conf import Configuration
from model import Database

import signup  # noqa: F401  (registers the /signup command and its actions)

bot = ampalibe.init(Configuration())
chat = bot.chat
query = bot.query
database = Database(Configuration())

PRODUCTS = [
    {"id": i + 1, "name": name, "price": 2 + i % 5}
    for i, name in enumerate(
        f"{fruit} {size}"
        for fruit in ("Jackfruit", "Mango", "Lychee", "Papaya", "Banana")
        for size in ("S", "M", "L", "XL", "XXL")
    )
]


def public_url(path):
    """The URL Messenger fetches a file of assets/public from (AMP_URL must reach this server)."""
    base = (Configuration.APP_URL or f"http://localhost:{Configuration.APP_PORT}").rstrip("/")
    return f"{base}/asset/{path}"


@ampalibe.command("/")
def main(sender_id, cmd, **extends):
    """Every message nothing else claims: show the menu."""
    menu = [
        {"content_type": "text", "title": "Catalog", "payload": Payload("/catalog")},
        {"content_type": "text", "title": "My cart", "payload": Payload("/cart")},
        {"content_type": "text", "title": "Sign up", "payload": Payload("/signup")},
        {"content_type": "text", "title": "Our logo", "payload": Payload("/logo")},
        {"content_type": "text", "title": "Angela", "payload": Payload("/member", name="Angela", ref="2016-sac")},
    ]
    chat.send_quick_reply(sender_id, menu, "Hello! What would you like to do?")


@ampalibe.command("/catalog")
def catalog(sender_id, cmd, **extends):
    """25 products, shown 10 at a time: Messenger's limit, paged by ``next=True``."""
    cards = [
        {
            "title": product["name"],
            "subtitle": f"{product['price']} EUR",
            "image_url": public_url("logo.png"),
            "buttons": [
                {
                    "type": "postback",
                    "title": "Details",
                    "payload": Payload("/product", product_id=product["id"]),
                },
                {
                    "type": "postback",
                    "title": "Buy",
                    "payload": Payload("/buy", product_id=product["id"]),
                },
            ],
        }
        for product in PRODUCTS
    ]
    chat.send_template(sender_id, cards, next="Next products")


def find_product(product_id, cmd):
    """The product a payload (``product_id``, an int) or a typed command (``/product 3``) names."""
    if product_id is None and cmd.strip().isdigit():
        product_id = int(cmd)
    if isinstance(product_id, int) and 1 <= product_id <= len(PRODUCTS):
        return PRODUCTS[product_id - 1]
    return None


@ampalibe.command("/product")
def product(sender_id, cmd, product_id=None, **extends):
    """The payload argument ``product_id`` arrives as a parameter, still an int."""
    item = find_product(product_id, cmd)
    if item is None:
        chat.send_message(sender_id, "Which product? Open the catalog: /catalog")
        return
    buttons = [{"type": "postback", "title": "Buy", "payload": Payload("/buy", product_id=item["id"])}]
    chat.send_button(sender_id, buttons, f"{item['name']}: {item['price']} EUR")


@ampalibe.command("/buy")
def buy(sender_id, cmd, product_id=None, **extends):
    """Put the product in the cart, kept in the user's temporary data."""
    item = find_product(product_id, cmd)
    if item is None:
        chat.send_message(sender_id, "Which product? Open the catalog: /catalog")
        return
    cart = query.get_temp(sender_id, "cart") or []
    cart.append(item["id"])
    query.set_temp(sender_id, "cart", cart)
    checkout = [{"content_type": "text", "title": "Check out", "payload": Payload("/checkout")}]
    chat.send_quick_reply(sender_id, checkout, f"{item['name']} is in your cart ({len(cart)} item(s)).")


@ampalibe.command("/cart")
def cart(sender_id, cmd, **extends):
    items = query.get_temp(sender_id, "cart") or []
    if not items:
        chat.send_message(sender_id, "Your cart is empty.")
        return
    names = ", ".join(PRODUCTS[i - 1]["name"] for i in items)
    chat.send_message(sender_id, f"In your cart: {names}.")


@ampalibe.command("/checkout")
def checkout(sender_id, cmd, **extends):
    items = query.get_temp(sender_id, "cart") or []
    if not items:
        chat.send_message(sender_id, "Your cart is empty.")
        return
    total = sum(PRODUCTS[i - 1]["price"] for i in items)
    query.del_temp(sender_id, "cart")
    chat.send_message(sender_id, f"Thank you! {len(items)} item(s), {total} EUR.")


@ampalibe.command("/logo")
def logo(sender_id, cmd, **extends):
    """A file of assets/public, which the app serves at /asset/<file>."""
    chat.send_file_url(sender_id, public_url("logo.png"), filetype="image")


@ampalibe.command("/member")
def member(sender_id, cmd, name="stranger", **extends):
    """The spec's payload example: ``name`` is a parameter, ``ref`` lands in ``extends``."""
    chat.send_message(sender_id, "Hello " + name)
    if extends.get("ref"):
        chat.send_message(sender_id, "your ref is " + extends["ref"])


@webserver.get("/stats")
def stats():
    """A custom endpoint next to the webhook (spec §1.7)."""
    return {"users": database.count_users(), "products": len(PRODUCTS)}


# The WSGI application, for `gunicorn core:app` or any other WSGI server.
app = ampalibe.webserver
