"""`python -m altclip_train ...` is the same as the `altclip-train` console script."""

from altclip_train.cli import main

main()
