import os
import sys

# Helpers shared by tests (hf_reference) live next to this file.
sys.path.insert(0, os.path.dirname(__file__))
