import sys

from fedsec.cli.main import main

sys.exit(main())
