"""What the server tells its operators: Prometheus metrics (`metrics.py`), the request
middleware that counts, times and logs every request (`requests.py`) and the log format
(`logs.py`). A leaf: it imports nothing else of Berth, so every layer may report through it."""
