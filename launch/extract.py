"""Entry for the deepspeed launcher: extraction of dialog feature shards, spread over ranks.

    deepspeed --num_gpus N launch/extract.py --config configs/meld/extract.yaml [key=value ...]
"""

import sys

from m2fdist.extract import main

if __name__ == "__main__":
    sys.exit(main())
