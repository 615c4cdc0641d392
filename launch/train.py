"""Entry for the deepspeed launcher (and accelerate launch): one script for every stage.

    deepspeed [--hostfile H] [--num_gpus N] launch/train.py --config configs/meld/text.yaml [key=value ...]
"""

import sys

from m2fdist.train import main

if __name__ == "__main__":
    sys.exit(main())
