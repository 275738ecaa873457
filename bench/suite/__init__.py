"""A suite becomes runs: grid expansion and run identity (``grid``), budgets and costs (``cost``), the results
manifest (``manifest``) and loading a suite with its plugins for a command (``session``)."""
