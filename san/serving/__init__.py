"""``san serve``: SAN over HTTP (LitServe), its protocol, metrics and a Python client (extra ``[serve]``)."""
