"""``python -m luser_cli`` runs the same CLI as the ``luser`` console script."""

from luser_cli.cli.app import main

if __name__ == "__main__":
    main()
