import sys

from data_stage.cli import main

if __name__ == "__main__":
    sys.exit(main())
