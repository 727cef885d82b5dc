"""The demo as a Hugging Face Space (sdk: gradio, app_file: app.py); locally, use scripts/demo.py.

The runs offered are those under $IPL_RUNS (default runs/); the Space's
hardware decides the device (a CPU Space runs the tiny configs).
"""

import os

from ipl.demo.app import launch
from ipl.runtime import choose_device

if __name__ == "__main__":
    launch(os.environ.get("IPL_RUNS", "runs"), choose_device("auto"))
