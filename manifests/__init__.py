"""The data contract (SPEC §5): manifest and results schemas, validation, storage, importers."""
