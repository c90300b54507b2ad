"""``python -m tessera_shapes.training``: trains the shapes preset (``--help`` lists the options)."""

from tessera_shapes.training.pipeline import main

if __name__ == "__main__":
    main(prog="python -m tessera_shapes.training")
