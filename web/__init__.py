"""The web service: upload and draw digits, follow jobs, look at mistakes. See web/app.py."""
