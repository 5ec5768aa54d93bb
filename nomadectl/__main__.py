"""`python -m nomadectl`, as the nomadectl script runs it."""

from . import main

main(prog_name="nomadectl")
