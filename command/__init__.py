"""The `dragnext` command: the top of the house. It composes the library's commands
(`dragnext.cli`), the batch runs (`flows.cli`), the benchmark and demo (`bench`) and the
studio (`studio.cli`); nothing below imports it."""
