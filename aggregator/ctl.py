"""`nomadectl` lives in the nomadectl package; this name stays for `python -m aggregator.ctl`."""

from nomadectl import main  # noqa: F401

if __name__ == "__main__":
    main(prog_name="nomadectl")
