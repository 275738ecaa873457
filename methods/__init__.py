"""Built-in pruning methods: importing this package registers every one of them."""
from methods import l1, random  # noqa: F401
