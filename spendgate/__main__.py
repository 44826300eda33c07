import sys

from spendgate.cli import main

sys.exit(main())
