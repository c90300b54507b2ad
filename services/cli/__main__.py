"""``python -m services.cli``: the ``tessera`` command, as the embedded stack starts its parts."""

from services.cli import main

main()
