"""``python -m trtflow``: the same command line as the ``trtflow`` script."""

from trtflow.cli import main

if __name__ == "__main__":
    main()
