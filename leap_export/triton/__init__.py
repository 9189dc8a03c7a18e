"""Triton Inference Server deployment: a model repository from an artifact folder, and a server to run it.

- :mod:`leap_export.triton.repository`: ``leap_encoder``, the Python-backend model (text in; embedding and
  exit layer out; one early-exit batch per dynamic batch), its ``config.pbtxt`` derived from the manifest;
- :mod:`leap_export.triton.env`: the Python environment the backend's stub runs the model in (numpy < 2),
  made once;
- :mod:`leap_export.triton.server`: tritonserver started on free or given ports, stopped with its whole
  process group.

Nothing here imports torch or a Triton package: generating a repository needs only the runtime.
"""
