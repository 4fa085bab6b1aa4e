"""The engine: losses, the threat model, attacks, training, evaluation, data and models.

It knows nothing of the paper's recipes (``uat_core.recipes``), of the products built on them (the CLI, the
zoo, the report) or of the app: ``lint-imports`` (contracts in pyproject.toml) keeps every import pointing down.
"""
