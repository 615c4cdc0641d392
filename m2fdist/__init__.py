"""m2fdist: M2FNet emotion recognition in conversation, trained at cluster scale."""

__version__ = "0.1.0"
