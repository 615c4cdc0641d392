"""Entry for the deepspeed launcher (and accelerate launch): one script for every stage.

    deepspeed [--hostfile H] [--num_gpus N] launch/train.py --config configs/meld/text.yaml [key=value ...]

The import stays under the main guard: dataloader workers start from a forkserver that re-imports this
file, and it must stay cheap.
"""

if __name__ == "__main__":
    import sys

    from m2fdist.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
