"""The interactive demo: run discovery, photo translation and sampling side by side, background training.

Everything here but :mod:`ipl.demo.app` is plain library code (no Gradio),
so the tests and other front ends call it directly; ``app`` lays it out as
a Gradio page (``pip install -e ".[demo]"``), started by ``scripts/demo.py``
or, on a Hugging Face Space, by ``app.py``.
"""
