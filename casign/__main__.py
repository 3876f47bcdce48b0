"""`python -m casign` is the `casign` command."""

from casign.safe_path import drop_working_directory

drop_working_directory()  # before any other import: see casign/safe_path.py

from casign.cli import main  # noqa: E402

main()
