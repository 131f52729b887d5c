"""Energy trading: order book and ledger, once a trading component registers them."""

from __future__ import annotations

import urwid

from gateway.console.screens.base import Screen, one_line
from gateway.console.widgets import Table


class TradingScreen(Screen):
    name = "trading"
    title = "Energy trading"
    caps = ("orders", "ledger")

    def build(self) -> urwid.Widget:
        self.orders = Table("Order book", empty="")
        self.ledger = Table("Ledger", empty="")
        self.banner = urwid.Text("")
        return urwid.Pile([("pack", self.banner), ("pack", self.orders.header_widget()),
                           ("weight", 1, self.orders), ("pack", urwid.Divider("─")),
                           ("pack", self.ledger.header_widget()), ("weight", 1, self.ledger)])

    def refresh(self) -> None:
        recs_o, why_o = self.answer("orders")
        recs_l, why_l = self.answer("ledger")
        if recs_o is None and recs_l is None:
            self.banner.set_text([
                ("title", "Energy trading is not part of this gateway yet.\n"),
                ("dim", "Peer-to-peer and market trading (order book, ledger) are not "
                        "built into AutoGrid yet; this screen fills in by itself once a "
                        "gateway offers them.")])
        else:
            self.banner.set_text("")
        for table, recs, why in ((self.orders, recs_o, why_o), (self.ledger, recs_l, why_l)):
            table.set_rows([(str(i), one_line(r)) for i, r in enumerate(recs or [])],
                           empty=why or "empty")
