"""An interactive demo in the browser: translate photos, sample seeds side by side, train a run.

    pip install -e ".[demo]"
    python scripts/demo.py                       # http://127.0.0.1:7860, the runs under runs/
    python scripts/demo.py --runs runs/table1 --host 0.0.0.0 --port 8080

Host and port default to Gradio's GRADIO_SERVER_NAME / GRADIO_SERVER_PORT,
then 127.0.0.1:7860. The models offered are the finished runs under --runs;
the Train tab writes new ones there (scripts/adapt.py in a background process).
"""

import argparse

from ipl import cli
from ipl.runtime import choose_device


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs", help="folder of runs to offer and to train into (default runs/)")
    p.add_argument("--host", help="address to serve on (default $GRADIO_SERVER_NAME, else 127.0.0.1)")
    p.add_argument("--port", type=cli.int_at_least(1), help="port (default $GRADIO_SERVER_PORT, else 7860)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="for translating and sampling")
    args = p.parse_args()
    cli.check_output_folder(p, args.runs, "--runs")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise cli.InputError('the demo needs gradio: pip install -e ".[demo]"') from None
    from ipl.demo.app import launch, server_address

    try:
        server_address(args.host, args.port)
    except ValueError as e:
        p.error(str(e))
    launch(args.runs, choose_device(args.device), args.host, args.port)


if __name__ == "__main__":
    cli.run(main)
