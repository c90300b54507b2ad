"""Stores: where the service keeps bytes and records.

``objects`` holds the ``ObjectStore`` seam, ``local`` and ``s3`` its two backends and ``object_factory``
``make_object_store``, which picks one. Nothing is imported here, so importing one store never drags in another's
client library.
"""
