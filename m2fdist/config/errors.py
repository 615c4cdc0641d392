"""The one error type of a configuration problem, in a module with no imports: the CLI's error policy and
every config check name it without loading the schemas (and torch behind them)."""


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the config."""
