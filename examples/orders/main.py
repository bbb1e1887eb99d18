"""Example handler: totals each order and logs what it did.

Written exactly as for Nuclio's Python runtime: ``init_context`` runs once per worker process,
``handler`` once per record. Raising an exception means "not done": the record is retried and its
offset is not committed.
"""

import json
import os


def init_context(context):
    context.user_data.greeting = os.environ.get("GREETING", "hello")
    context.user_data.handled = 0

    def on_termination():
        context.logger.info_with("worker stopping", handled=context.user_data.handled)

    context.platform.set_termination_callback(on_termination)


def handler(context, event):
    order = json.loads(event.body)
    total = round(sum(item["price"] * item["qty"] for item in order["items"]), 2)
    context.user_data.handled += 1
    context.logger.info_with(
        "order handled",
        order_id=order["id"],
        customer=event.key,
        total=total,
        reply=f"{context.user_data.greeting}, {order['customer']}",
    )
    return json.dumps({"order_id": order["id"], "total": total})
