"""The SQLite backend of NØMADE's store (the embedded default): the only code that speaks
SQLite's dialect.  See aggregator/store/__init__.py for what a backend provides."""
