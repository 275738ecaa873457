"""Built-in pruning methods: importing this package registers every one of them."""
from methods import greg, l1, orthoreg, orthp, random, rni, scratch, slimming, tpp  # noqa: F401
