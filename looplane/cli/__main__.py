"""``python -m looplane.cli``, the same as the ``looplane`` command."""

from looplane.cli import main

if __name__ == "__main__":
    main()
