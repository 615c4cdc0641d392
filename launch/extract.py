"""Entry for the deepspeed launcher (and accelerate launch): extraction of dialog feature shards, spread over ranks.

    deepspeed [--hostfile H] [--num_gpus N] launch/extract.py --config configs/meld/extract.yaml [key=value ...]

The import stays under the main guard: dataloader workers start from a forkserver that re-imports this
file, and it must stay cheap.
"""

if __name__ == "__main__":
    import sys

    from m2fdist.cli import main

    sys.exit(main(["extract", *sys.argv[1:]]))
