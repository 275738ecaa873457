"""The floor everything stands on: errors, registries, the schema and suite config, storage, the environment
record, fault injection, progress and the data-parallel helpers. Nothing here imports another wing."""
