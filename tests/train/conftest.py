import os
import sys

# train_helpers.py (tiny models, toy batches) lives next to this file.
sys.path.insert(0, os.path.dirname(__file__))
