"""`python -m twolayer_ops.train RECIPE [...]`: the CLI's train command, for torchrun."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
