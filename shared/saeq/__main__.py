"""`python -m saeq ...`: the `saeq` command, for when the script is not on PATH."""

from saeq.client.cli import main

if __name__ == "__main__":
    main(prog_name="saeq")
