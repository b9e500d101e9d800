import sys

from fsagent.cli.main import main

sys.exit(main())
