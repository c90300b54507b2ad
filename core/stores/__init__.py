"""Stores: where the service keeps bytes and records.

``objects`` holds the ``ObjectStore`` seam and ``make_object_store``; ``local`` and ``s3`` hold its two
backends. Nothing is imported here, so importing one store never drags in another's client library.
"""
