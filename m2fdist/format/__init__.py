"""The formats both sides of the data flow share: shard locations and their read policy, ``index.json``, tar
members, dialog feature shards and model exports. Writers (pack, extract, export) and readers (data, config
checks, inference) import these; none of them imports the other."""
