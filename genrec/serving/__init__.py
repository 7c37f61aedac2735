"""Serving-side pieces: candidate indexes for the retrieval stage (faiss)."""
