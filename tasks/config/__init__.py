"""params.yaml as typed configs: the machinery (typed.py: load with ``-S key=value``
overrides, build dataclasses key by key), the schema (schema.py: one dataclass per
section) and the one validation of the whole file (params.py: ``validate``)."""
