"""The producer: loads images into PostgreSQL and submits them as jobs onto Redis."""
