"""A realm's root filesystem over time: snapshots, restore, and rebase onto a newer appimg
version keeping the realm's state.

STUB (issue 15): the model is written here once the code exists.
"""
