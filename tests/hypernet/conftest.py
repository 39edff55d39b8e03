import os
import sys

# hypernet_helpers (shared with the 8-device check script) lives next to this file.
sys.path.insert(0, os.path.dirname(__file__))
