"""The audit: sample points, evaluate checks, run the chunk loop, gather statistics."""
