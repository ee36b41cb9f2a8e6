"""The stepstream ASGI app (``create_app``) and its static files."""
