"""Exports of a built artifact to other serving systems (``trtflow export triton``)."""
