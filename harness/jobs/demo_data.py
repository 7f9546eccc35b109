"""Deterministic demo data: customer messages in, orders as JSON out.

``generate_orders(n, seed)`` draws orders and phrases each one with one of many templates (greetings,
politeness, numbers as digits or words, sizes and shipping named in several ways), so a model has to
read the message rather than copy a fixed pattern. The demo trains on ``seed=1``; the held-out
``order-task`` suite was generated with ``seed=2`` minus any message seed 1 also produces
(``suites/order-task/make_data.py``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ORDER_KEYS = ("item", "quantity", "size", "colour", "shipping")
TASK_INSTRUCTION = "Extract the order from this customer message as JSON with keys item, quantity, size, colour, shipping."

ITEMS = {  # canonical item -> (singular, plural) as customers write them
    "t-shirt": ("t-shirt", "t-shirts"), "hoodie": ("hoodie", "hoodies"), "jeans": ("pair of jeans", "pairs of jeans"),
    "sneakers": ("pair of sneakers", "pairs of sneakers"), "jacket": ("jacket", "jackets"), "scarf": ("scarf", "scarves"),
    "socks": ("pair of socks", "pairs of socks"), "cap": ("cap", "caps"), "dress": ("dress", "dresses"),
    "backpack": ("backpack", "backpacks"), "sweater": ("sweater", "sweaters"), "raincoat": ("raincoat", "raincoats"),
}
COLOURS = ["red", "blue", "black", "white", "green", "grey", "navy", "yellow", "pink", "brown"]
SIZES = {  # canonical size -> ways to say it
    "XS": ["XS", "extra small"], "S": ["S", "small"], "M": ["M", "medium"],
    "L": ["L", "large"], "XL": ["XL", "extra large"], "XXL": ["XXL", "2XL"],
}
SHIPPING = {
    "standard": ["standard shipping", "regular delivery", "normal shipping"],
    "express": ["express shipping", "express delivery", "fast shipping"],
    "overnight": ["overnight shipping", "next-day delivery", "overnight delivery"],
    "pickup": ["in-store pickup", "I'll pick it up in store", "store pickup"],
}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
GREETINGS = ["", "Hi! ", "Hello, ", "Hey there. ", "Good morning! ", "Hi team, "]
CLOSINGS = ["", " Thanks!", " Thank you.", " Cheers.", " Thanks a lot!"]
TEMPLATES = [
    "{g}I'd like {q} {c} {i} in {s}, {sh} please.{e}",
    "{g}Please send me {q} {i} in {c}, size {s}. {Sh}.{e}",
    "{g}Can I order {q} {c} {i}? Size {s}, with {sh}.{e}",
    "{g}I want to buy {q} {i}. Colour: {c}. Size: {s}. Delivery: {sh}.{e}",
    "{g}Ordering {q} {c} {i} ({s}). {Sh} would be great.{e}",
    "{g}Could you ship {q} {i} in {c}? I need {s}. {Sh}, please.{e}",
    "{g}{Sh} please: {q} {c} {i}, size {s}.{e}",
    "{g}My order: {q} x {c} {i}, size {s}, {sh}.{e}",
    "{g}I need {q} {i} for my trip, {c}, size {s}. Use {sh}.{e}",
    "{g}Size {s}, colour {c}: {q} {i} please. {Sh}.{e}",
    "{g}Would love {q} {c} {i} in {s}. Could it come by {sh}?{e}",
    "{g}Add {q} {i} ({c}, {s}) to my order and send with {sh}.{e}",
]


@dataclass(frozen=True)
class OrderExample:
    id: str
    message: str
    order: Mapping[str, Any]


def order_to_json(order: Mapping[str, Any]) -> str:
    """Compact canonical JSON with the keys in ORDER_KEYS order (the completion the adapter learns)."""
    return json.dumps({k: order[k] for k in ORDER_KEYS})


def _quantity_text(rnd: random.Random, q: int, item: str) -> str:
    singular, plural = ITEMS[item]
    noun = singular if q == 1 else plural
    if q == 1:
        return rnd.choice([f"one {noun}", f"a {noun}", f"1 {noun}"])
    if q == 2 and rnd.random() < 0.2 and singular.startswith("pair of"):
        return f"two {plural}"
    return f"{rnd.choice([str(q), NUMBER_WORDS[q]])} {noun}"


def generate_orders(n: int, seed: int) -> list[OrderExample]:
    """``n`` orders with varied phrasing; the same seed always gives the same list."""
    rnd = random.Random(seed)
    out = []
    for k in range(n):
        order: dict[str, Any] = {
            "item": rnd.choice(sorted(ITEMS)),
            "quantity": rnd.choices(range(1, 7), weights=[5, 4, 3, 2, 1, 1])[0],
            "size": rnd.choice(sorted(SIZES)),
            "colour": rnd.choice(COLOURS),
            "shipping": rnd.choice(sorted(SHIPPING)),
        }
        qi = _quantity_text(rnd, order["quantity"], order["item"])
        q, _, i = qi.partition(" ")
        sh = rnd.choice(SHIPPING[order["shipping"]])
        message = rnd.choice(TEMPLATES).format(
            g=rnd.choice(GREETINGS), e=rnd.choice(CLOSINGS), q=q, i=i, c=order["colour"],
            s=rnd.choice(SIZES[order["size"]]), sh=sh, Sh=sh[0].upper() + sh[1:],
        )
        out.append(OrderExample(f"order-s{seed}-{k:05d}", " ".join(message.split()), order))
    return out


def write_jsonl(examples: Iterable[OrderExample], path: Path) -> None:
    """Rows ``{"id", "message", "target"}`` with the target as canonical JSON."""
    with open(path, "w", encoding="utf-8") as f:
        for e in examples:
            f.write(json.dumps({"id": e.id, "message": e.message, "target": order_to_json(e.order)}) + "\n")
