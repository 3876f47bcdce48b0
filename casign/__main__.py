"""`python -m casign` is the `casign` command."""

from casign.cli import main

main()
