"""python -m wsimil"""
import sys

from wsimil.cli import main

sys.exit(main())
