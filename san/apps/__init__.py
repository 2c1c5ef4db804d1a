"""Command-line and web applications built on :class:`san.SANPredictor`."""
