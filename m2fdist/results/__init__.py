"""What a finished run hands a reader: the report, its plots, the model card and the bundle."""
