"""Run configuration: the schemas (``schema``), the one merge of YAML and overrides (``load``), the checks against
the data (``checks``) and the key descriptions for ``--help`` and the docs (``help``)."""
