"""A demo page of both apps: an X-ray with its Grad-CAM, a sentence with its attention.

`python -m apps.demo --medical RUN --translator RUN` (or `apps-demo`) serves a
Gradio page (`page.py`) over the apps' own prediction, Grad-CAM, translation
and attention code (`backends.py`). Gradio is the optional extra `demo`
(`pip install -e ".[demo]"`): nothing here imports it until the page is built.
"""
