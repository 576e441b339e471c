"""The store's health: disk usage (``df``), garbage collection (``gc``) and its fsck
(``check``, ``check --repair``).

STUB (issue 15): the model is written here once the code exists.
"""
