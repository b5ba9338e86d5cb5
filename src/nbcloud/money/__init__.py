"""Money, in one place: what a machine costs and has cost.

- :mod:`.pricing`: the price table (the shipped snapshot, the user's refreshed copy) and the parsers that fill it;
- :mod:`.cost`: pure arithmetic over running periods, disks and budgets;
- :mod:`.quotes`: the price a period bills at (table, then the provider's live price, spot in force).

Nothing here imports a concrete provider: the AWS Price List edge is ``providers/aws/pricing.py``, reached through
the provider interface (``spot_price``, ``on_demand_price``, ``refresh_prices``). The store's side (priced events
per record) is ``ops/costs.py``.
"""
